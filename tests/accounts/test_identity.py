"""A shop's customers on a real server: the token on HTTP (Bearer) and on the socket (its
first message), an account on several devices, refusals, token expiry on an open socket,
CORS for the shop's storefront."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import anyio
import httpx
import jwt
import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

from percolert.core.settings import Settings
from percolert.web.socket_auth import SocketAuthFailed
from tests.accounts.shop_keys import ShopKey
from tests.accounts.tokens import SHOP_SECRET, bearer, shop_token
from tests.servers import free_port, run_server
from tests.shoppers import Shopper, Socket, default_watch

pytestmark = pytest.mark.anyio

STOREFRONT = "http://storefront.test:8080"


@pytest.fixture(scope="module")
def server(catalog_settings: Settings) -> Iterator[str]:
    settings = msgspec.structs.replace(
        catalog_settings,
        jwt_secret=SHOP_SECRET,
        jwt_leeway_seconds=0,
        socket_auth_timeout_seconds=1,
        token_refresh_ahead_seconds=2,
        allowed_origins=(STOREFRONT,),
    )
    with run_server(settings) as url:
        yield url


async def test_an_account_follows_its_customer_across_devices(server: str) -> None:
    # Customers of this test alone: the catalog's indices serve the whole suite.
    alice, bob_id = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    async with (
        Shopper(server, token=shop_token(alice)) as laptop,
        Shopper(server, token=shop_token(alice)) as phone,
        Shopper(server, token=shop_token(bob_id)) as bob,
        Shopper(server) as stranger,
    ):
        laptop_socket = await laptop.connect()
        phone_socket = await phone.connect()
        bob_socket = await bob.connect()
        watch = await phone.watch("kindle")
        # The other device hears of it, and lists it.
        changed = await laptop_socket.receive()
        assert changed is not None
        assert changed["type"] == "watches_changed"
        assert [w["id"] for w in changed["watches"] if not w["is_default"]] == [watch["id"]]
        listed = (await laptop.http.get("/api/watches")).json()["watches"]
        assert watch["id"] in [w["id"] for w in listed]
        # A new device greets with it.
        tablet = await Shopper(server, token=shop_token(alice)).__aenter__()
        try:
            greeted = await tablet.connect()
            assert watch["id"] in [w["id"] for w in greeted.hello["watches"]]
        finally:
            await tablet.__aexit__(None, None, None)
        # Another customer and an anonymous shopper see nothing of it.
        for other in (bob, stranger):
            theirs = (await other.http.get("/api/watches")).json()["watches"]
            assert watch["id"] not in [w["id"] for w in theirs]
        # Someone else's search alerts each of the account's sockets once, and nobody else.
        await stranger.search("kindle paperwhite")
        for socket in (laptop_socket, phone_socket):
            alert = await socket.next_alert()
            assert alert is not None
            assert alert["watch"]["id"] == watch["id"]
        before = await bob.alerts_before_marker(bob_socket, stranger)
        assert [a for a in before if a["watch"]["id"] == watch["id"]] == []
        twice = await laptop.alerts_before_markers([laptop_socket, phone_socket], stranger)
        assert twice == [[], []]


async def test_a_bad_token_is_a_401_never_an_anonymous_request(server: str) -> None:
    async with Shopper(server) as anonymous:
        cookies = anonymous.http.cookies
        for token in (
            shop_token("c", expires_in=-5),
            shop_token("c", expires_in=None),
            shop_token("c", secret="not-the-shop-secret-0123456789abcdef"),
            "garbage",
        ):
            for method, path in (("GET", "/api/watches"), ("GET", "/api/search?q=kindle")):
                response = await anonymous.http.request(method, path, headers=bearer(token))
                assert response.status_code == 401, response.text
                assert response.json()["error"]["code"] == "invalid_token"
                challenge = response.headers["www-authenticate"]
                assert challenge.startswith('Bearer realm="percolert", error="invalid_token"')
                assert "set-cookie" not in response.headers
        response = await anonymous.http.post(
            "/api/watches", json={"terms": "kindle"}, headers={"Authorization": "Bearer"}
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_request"
        # A header value that is not Latin-1, or would break the header, is not echoed.
        for alg in ("é€", "HS256\r\nSet-Cookie: evil=1"):
            forged = handmade_token({"alg": alg, "typ": "JWT"})
            response = await anonymous.http.get("/api/watches", headers=bearer(forged))
            assert response.status_code == 401, response.text
            assert "evil" not in response.headers["www-authenticate"]
        # Nothing was written for the cookie's session meanwhile.
        assert anonymous.http.cookies == cookies
        own = (await anonymous.http.get("/api/watches")).json()["watches"]
        assert [w for w in own if not w["is_default"]] == []
        # Another scheme (a proxy's basic auth, say) is not ours: the session goes on.
        basic = await anonymous.http.get("/api/watches", headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 200


def handmade_token(header: dict[str, str]) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part(header)}.{part({'sub': 'c', 'exp': int(time.time()) + 60})}.c2ln"


async def test_a_token_gets_no_session_cookie(server: str) -> None:
    async with Shopper(server, token=shop_token("carol")) as carol:
        response = await carol.http.get("/api/watches")
        assert response.status_code == 200
        assert "set-cookie" not in response.headers


def test_a_server_without_accounts_refuses_tokens(catalog_settings: Settings) -> None:
    with run_server(catalog_settings) as url:
        response = httpx.get(f"{url}/api/watches", headers=bearer(shop_token("c")))
        assert response.status_code == 401
        assert "takes no shop tokens" in response.json()["error"]["message"]
        assert "www-authenticate" in response.headers


async def open_raw(server: str, query: str = "auth=token") -> Socket:
    connection = await connect(
        server.replace("http://", "ws://") + f"/ws?{query}", origin=Origin(server), open_timeout=10
    )
    return Socket(connection)


async def test_socket_refusals_have_documented_codes(server: str) -> None:
    # Nothing sent in time.
    silent = await open_raw(server)
    assert (await silent.closed_by_server())[0] == 4408
    cases = [
        json.dumps({"type": "auth", "token": shop_token("c", expires_in=-5)}),
        json.dumps({"type": "auth", "token": "garbage"}),
        json.dumps({"type": "ping"}),  # anything before the token
        "not json",
    ]
    for first in cases:
        socket = await open_raw(server)
        await socket.connection.send(first)
        code, reason = await socket.closed_by_server()
        assert code == 4401, (first, reason)
    # A socket without a token nor a cookie is refused at the handshake, as before.
    with pytest.raises(Exception, match="403"):
        await open_raw(server, query="")


async def test_a_foreign_page_cannot_open_an_account_socket(server: str) -> None:
    with pytest.raises(Exception, match="403"):
        await connect(
            server.replace("http://", "ws://") + "/ws?auth=token",
            origin=Origin("http://evil.test"),
            open_timeout=10,
        )
    # The shop's storefront may.
    connection = await connect(
        server.replace("http://", "ws://") + "/ws?auth=token",
        origin=Origin(STOREFRONT),
        open_timeout=10,
    )
    socket = Socket(connection)
    await connection.send(json.dumps({"type": "auth", "token": shop_token("dave")}))
    hello = await socket.receive()
    assert hello is not None
    assert hello["type"] == "hello"
    await socket.close()


async def test_an_expiring_token_is_refreshed_on_the_open_socket(server: str) -> None:
    first = shop_token("erin", expires_in=4)
    expires_at = jwt.decode(first, options={"verify_signature": False})["exp"]
    async with Shopper(server, token=first) as erin, Shopper(server) as searcher:
        watch = await erin.watch("headphones")
        socket = await erin.connect()
        expiring = await socket.receive(timeout=10)
        while expiring is not None and expiring["type"] != "token_expiring":
            expiring = await socket.receive(timeout=10)
        assert expiring is not None, "no token_expiring came"
        fresh = shop_token("erin", expires_in=600)
        await socket.connection.send(json.dumps({"type": "auth", "token": fresh}))
        # Past the first token's expiry, the socket is open (receiving nothing, not a close)
        # and takes alerts.
        assert await socket.receive(timeout=expires_at + 0.5 - time.time()) is None
        erin.http.headers["Authorization"] = f"Bearer {fresh}"
        await searcher.search("wireless headphones")
        alert = await socket.next_alert(timeout=10)
        assert alert is not None
        assert alert["watch"]["id"] == watch["id"]


async def test_without_a_fresh_token_the_socket_closes_with_4401(server: str) -> None:
    async with Shopper(server, token=shop_token("frank", expires_in=3)) as frank:
        socket = await frank.connect()
        code, reason = await socket.closed_by_server()
        assert (code, reason) == (4401, "the token has expired")


async def test_a_fresh_token_of_another_account_ends_the_socket(server: str) -> None:
    async with Shopper(server, token=shop_token("grace")) as grace:
        socket = await grace.connect()
        await socket.connection.send(json.dumps({"type": "auth", "token": shop_token("heidi")}))
        code, _ = await socket.closed_by_server()
        assert code == 4403


async def test_cors_for_the_shops_storefront_only(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as client:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        allowed = await client.options("/api/watches", headers={"Origin": STOREFRONT, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == STOREFRONT
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        foreign = await client.options(
            "/api/watches", headers={"Origin": "http://evil.test", **preflight}
        )
        assert foreign.status_code == 400
        assert "access-control-allow-origin" not in foreign.headers
        # A storefront's write with the customer's token goes through; a foreign page's
        # is refused even with a valid token.
        token = bearer(shop_token("ivan"))
        created = await client.post(
            "/api/watches", json={"terms": "kindle"}, headers={"Origin": STOREFRONT, **token}
        )
        assert created.status_code == 201, created.text
        assert created.headers["access-control-allow-origin"] == STOREFRONT
        refused = await client.post(
            "/api/watches",
            json={"terms": "kindle"},
            headers={"Origin": "http://evil.test", **token},
        )
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        # The admin API is never for a browser page.
        admin = await client.options(
            "/api/admin/products/X", headers={"Origin": STOREFRONT, **preflight}
        )
        assert "access-control-allow-origin" not in admin.headers


def test_rate_limits_count_per_account(catalog_settings: Settings) -> None:
    settings = msgspec.structs.replace(
        catalog_settings,
        jwt_secret=SHOP_SECRET,
        rate_limits_enabled=True,
        limit_watch_changes_per_session="3/minute",
        limit_watch_changes_per_address=None,
    )
    with run_server(settings) as url:
        statuses = []
        for device in range(2):  # two devices of one customer share the account's limit
            for n in range(2):
                response = httpx.post(
                    f"{url}/api/watches",
                    json={"terms": f"kindle model{device}x{n}"},
                    headers=bearer(shop_token("judy")),
                )
                statuses.append(response.status_code)
        assert statuses == [201, 201, 201, 429]
        # Another account has its own.
        other = httpx.post(
            f"{url}/api/watches", json={"terms": "kindle"}, headers=bearer(shop_token("ken"))
        )
        assert other.status_code == 201


def test_the_watch_cap_counts_per_account(catalog_settings: Settings) -> None:
    settings = msgspec.structs.replace(
        catalog_settings, jwt_secret=SHOP_SECRET, max_watches_per_user=2
    )
    with run_server(settings) as url:
        statuses = [
            httpx.post(
                f"{url}/api/watches",
                json={"terms": f"kindle edition{n}"},
                headers=bearer(shop_token("lena")),  # a device each
            ).status_code
            for n in range(3)
        ]
        assert statuses == [201, 201, 409]


def test_a_refusal_reason_is_cut_to_fit_a_close_frame() -> None:
    failed = SocketAuthFailed(4401, "é" * 100)  # 200 bytes of UTF-8
    assert failed.reason == "é" * 61  # 122 bytes: no character cut in half


def test_an_accounts_sockets_are_capped_as_a_sessions_are(catalog_settings: Settings) -> None:
    settings = msgspec.structs.replace(
        catalog_settings, jwt_secret=SHOP_SECRET, max_sockets_per_user=2
    )

    async def open_three(url: str) -> tuple[int, str]:
        token = shop_token(f"mona-{uuid.uuid4().hex[:6]}")
        async with Shopper(url, token=token) as first, Shopper(url, token=token) as second:
            await first.connect()
            await second.connect()
            third = await open_raw(url)
            await third.connection.send(json.dumps({"type": "auth", "token": token}))
            return await third.closed_by_server()

    with run_server(settings) as url:
        code, reason = anyio.run(open_three, url)
    assert code == 1008
    assert reason.startswith("too many open connections for this account")


def test_keys_that_cannot_be_read_close_a_socket_to_be_tried_again(
    catalog_settings: Settings,
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/jwks.json"
    settings = msgspec.structs.replace(catalog_settings, jwks_url=unreachable, jwks_allow_http=True)

    async def attempt(url: str) -> tuple[int, str]:
        socket = await open_raw(url)
        key = ShopKey("k1")
        await socket.connection.send(json.dumps({"type": "auth", "token": key.token("nina")}))
        return await socket.closed_by_server()

    with run_server(settings) as url:
        code, reason = anyio.run(attempt, url)
        response = httpx.get(f"{url}/api/watches", headers=bearer(ShopKey("k1").token("nina")))
    assert (code, reason) == (1013, "the shop's signing keys cannot be read right now")
    assert response.status_code == 503
    assert "127.0.0.1" not in response.text


async def test_a_new_account_hears_nothing_of_default_watches_before_it_came(
    server: str, catalog_settings: Settings
) -> None:
    word = "oldnews" + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:8])
    async with default_watch(catalog_settings, word), Shopper(server) as searcher:
        async with Shopper(server, token=shop_token(f"early-{word}")) as early:
            early_socket = await early.connect()
            await searcher.search(word)
            heard = await early_socket.next_alert()
            assert heard is not None
            assert heard["watch"]["terms"] == word
        # An account that comes later is told nothing of it, in its greeting or its replay.
        async with Shopper(server, token=shop_token(f"late-{word}")) as late:
            socket = await late.connect(after=0)
            assert [a for a in socket.hello["recent"] if a["watch"]["terms"] == word] == []
            replayed = await late.alerts_before_marker(socket, searcher)
            assert [a for a in replayed if a["watch"]["terms"] == word] == []
