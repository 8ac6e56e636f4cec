"""Limits on abuse, against a real server: rate limits per session and per address (429 with
Retry-After), new sessions per address (a token bucket that never keeps a page from loading),
the per-user socket cap, request bodies refused as they stream in, bounded request heads, and
forwarded addresses believed only from a trusted proxy. Limits use a window (or a refill) no
test outlives, so nothing resets mid-test, unless the test is about the refill."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response as HandshakeResponse

from percolert.core.settings import Settings
from percolert.web.middleware.ratelimits import client_address
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.servers import free_port, logged_errors, run_server
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

# Longer than any test, shorter than the time since 1970 (the sliding windows are aligned to
# multiples of their length since the epoch; `limits` mixes up the first two).
FOREVER = "10 years"
# A refill of the new-session bucket no test outlives.
NEVER_SECONDS = 10 * 365 * 86_400.0
_LIMITS = (
    "limit_searches_per_session",
    "limit_searches_per_address",
    "limit_reads_per_session",
    "limit_reads_per_address",
    "limit_watch_changes_per_session",
    "limit_watch_changes_per_address",
    "limit_sockets_per_session",
    "limit_sockets_per_address",
    "limit_admin_requests_per_address",
    "limit_monitoring_refusals_per_address",
)


def limited(settings: Settings, **changes: Any) -> Settings:
    """`settings` with rate limits on: those in `changes`, every other one off; counted by
    each server alone (in memory), even on the Redis broker, unless `changes` say otherwise."""
    limits: dict[str, Any] = dict.fromkeys(_LIMITS)
    limits["rate_limit_storage"] = "async+memory://"
    limits["new_sessions_burst"] = 0  # off
    limits.update(changes)
    return msgspec.structs.replace(settings, rate_limits_enabled=True, **limits)


@pytest.fixture(scope="module")
def session_limited(catalog_settings: Settings) -> Iterator[str]:
    """Per-session limits only (every test here uses sessions of its own)."""
    settings = limited(
        catalog_settings,
        limit_searches_per_session=f"3/{FOREVER}",
        limit_reads_per_session=f"3/{FOREVER}",
        limit_watch_changes_per_session=f"2/{FOREVER}",
        limit_sockets_per_session=f"2/{FOREVER}",
    )
    with run_server(settings) as url:
        yield url


@contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Warnings the percolert loggers write inside the block."""
    caught: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("percolert")
    logger.addHandler(handler)
    try:
        yield caught
    finally:
        logger.removeHandler(handler)


def assert_rate_limited(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) > 0
    return int(retry_after)


async def refused_handshake(shopper: Shopper) -> HandshakeResponse:
    """The HTTP answer to a WebSocket handshake that must be refused."""
    with pytest.raises(InvalidStatus) as refused:
        await shopper.connect()
    return refused.value.response


async def test_searches_over_the_session_limit_get_429_with_retry_after(
    session_limited: str,
) -> None:
    async with Shopper(session_limited) as a, Shopper(session_limited) as b:
        for number in range(3):
            await a.search(f"kindle {number}")
        refused = await a.http.get("/api/search", params={"q": "kindle"})
        # The window is years long: the wait is told in whole seconds, and it is long.
        assert assert_rate_limited(refused) > 3600
        assert "search" in refused.json()["error"]["message"]
        await b.search("kindle")  # another session has its own allowance
        metrics = (await b.http.get("/metrics")).text
        assert 'percolert_refused_total{limit="searches"} 1.0' in metrics


async def test_watch_changes_over_the_session_limit_get_429(session_limited: str) -> None:
    async with Shopper(session_limited) as a:
        watch = await a.watch("kindle")
        await a.unwatch(watch["id"])
        assert_rate_limited(await a.http.post("/api/watches", json={"terms": "oasis"}))
        assert_rate_limited(await a.http.delete(f"/api/watches/{watch['id']}"))
        assert (await a.http.get("/api/watches")).status_code == 200  # reading is not limited


async def test_reads_that_ask_elasticsearch_over_the_session_limit_get_429(
    session_limited: str,
) -> None:
    async with Shopper(session_limited) as a:
        for path in ("/api/watches", "/api/categories", "/api/watches"):
            assert (await a.http.get(path)).status_code == 200
        assert_rate_limited(await a.http.get("/api/categories"))
        assert (await a.http.get("/healthz")).status_code == 200  # probes are not limited


async def test_e_mail_preferences_count_as_the_sessions_reads_and_changes(
    session_limited: str,
) -> None:
    async with Shopper(session_limited) as a, Shopper(session_limited) as b:
        # No account here (401), and off-site delivery is off: counted all the same, first.
        for _ in range(3):
            assert (await a.http.get("/api/me/preferences")).status_code == 401
        assert_rate_limited(await a.http.get("/api/me/preferences"))
        for _ in range(2):
            assert (await b.http.put("/api/me/preferences", json={})).status_code == 401
        assert_rate_limited(await b.http.put("/api/me/preferences", json={}))


async def test_centrifugo_tokens_count_as_the_sessions_reads(session_limited: str) -> None:
    async with Shopper(session_limited) as a:
        # Alerts come on /ws here (404): counted all the same, first.
        for _ in range(3):
            assert (await a.http.post("/api/realtime/token", json={})).status_code == 404
        assert_rate_limited(await a.http.post("/api/realtime/token", json={}))


async def test_unsubscribe_posts_are_counted_per_address(catalog_settings: Settings) -> None:
    settings = limited(catalog_settings, limit_watch_changes_per_address=f"2/{FOREVER}")
    form = {"content-type": "application/x-www-form-urlencoded"}
    with run_server(settings) as url:

        def post() -> httpx.Response:
            return httpx.post(
                f"{url}/unsubscribe/not-a-token",
                content=b"List-Unsubscribe=One-Click",
                headers=form,
                timeout=10,
            )

        assert [post().status_code for _ in range(2)] == [404, 404]
        assert_rate_limited(post())
        # The page that only asks changes nothing and is not counted.
        assert httpx.get(f"{url}/unsubscribe/not-a-token", timeout=10).status_code == 404


async def test_socket_handshakes_over_the_session_limit_are_refused(session_limited: str) -> None:
    async with Shopper(session_limited) as a:
        for _ in range(2):
            await (await a.connect()).close()
        response = await refused_handshake(a)
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        assert json.loads(response.body)["error"]["code"] == "rate_limited"


async def test_the_address_limit_holds_across_sessions(catalog_settings: Settings) -> None:
    settings = limited(catalog_settings, limit_searches_per_address=f"4/{FOREVER}")
    with run_server(settings) as url:
        shoppers = [Shopper(url) for _ in range(5)]
        for shopper in shoppers:
            await shopper.__aenter__()
        try:
            for shopper in shoppers[:4]:
                await shopper.search("kindle")
            fresh = shoppers[4]
            assert_rate_limited(await fresh.http.get("/api/search", params={"q": "kindle"}))
        finally:
            for shopper in shoppers:
                await shopper.__aexit__()


def new_session(url: str, **headers: str) -> httpx.Response:
    """What the page asks first, from a client without a cookie."""
    return httpx.post(f"{url}/api/session", json={}, headers=headers, timeout=10)


def sessions_bucket(
    settings: Settings, burst: int, refill_seconds: float = NEVER_SECONDS
) -> Settings:
    return limited(settings, new_sessions_burst=burst, new_sessions_refill_seconds=refill_seconds)


async def test_an_address_cannot_mint_sessions_past_its_limit(catalog_settings: Settings) -> None:
    """Minting sessions is how one client would get around the per-user watch cap."""
    with run_server(sessions_bucket(catalog_settings, 3)) as url:
        cookies = []
        for response in (
            new_session(url),
            httpx.get(f"{url}/api/categories", timeout=10),  # any API call starts one
            httpx.get(f"{url}/api/search?q=kindle", timeout=10),
        ):
            assert response.status_code in (200, 204), response.text
            cookies.append(response.cookies[COOKIE_NAME])
        assert len(set(cookies)) == 3
        for path in ("/api/categories", "/api/search?q=kindle"):
            refused = httpx.post(
                f"{url}/api/watches", json={"terms": "kindle"}, headers={"Origin": url}, timeout=10
            )
            assert_rate_limited(refused)
            refused = httpx.get(f"{url}{path}", timeout=10)
            assert_rate_limited(refused)
            assert "set-cookie" not in refused.headers
        refused = new_session(url)
        assert "new sessions" in refused.json()["error"]["message"]
        assert assert_rate_limited(refused) > 3600  # a refill no test outlives
        # Sessions already issued carry on.
        with httpx.Client(base_url=url, cookies={COOKIE_NAME: cookies[0]}, timeout=10) as first:
            assert first.get("/api/search", params={"q": "kindle"}).status_code == 200
            assert "set-cookie" not in first.get("/api/categories").headers
            assert first.post("/api/session", json={}).status_code == 204


async def test_many_new_sessions_from_one_address_never_keep_the_page_from_loading(
    catalog_settings: Settings,
) -> None:
    """Issue 22: one client behind a shared address (a NAT) asking for 40 sessions in a few
    seconds. The page and its script still load for everyone there (they need no session),
    the client itself is limited, and it waits for a refill of the bucket, not for an hour.
    With the default limits: only the counting store is this server's own."""
    settings = msgspec.structs.replace(
        catalog_settings, rate_limits_enabled=True, rate_limit_storage="async+memory://"
    )
    with run_server(settings) as url:
        answers = [
            new_session(url) if number % 2 else httpx.get(f"{url}/api/categories", timeout=10)
            for number in range(40)
        ]
        for path in ("/", "/static/app.js", "/static/style.css"):
            page = httpx.get(f"{url}{path}", timeout=10)
            assert page.status_code == 200, (path, page.text)
            assert "set-cookie" not in page.headers
        started = [answer for answer in answers if COOKIE_NAME in answer.cookies]
        refused = [answer for answer in answers if answer.status_code == 429]
        assert len(started) >= settings.new_sessions_burst
        assert refused, "40 new sessions at once were all admitted"
        assert len(started) + len(refused) == 40
        # Still limited (a token may have come back meanwhile: then the next one is refused),
        # and told to wait for one refill at most.
        for _ in range(3):
            again = new_session(url)
            if again.status_code == 429:
                break
        assert assert_rate_limited(again) <= settings.new_sessions_refill_seconds


async def test_the_bucket_refills_one_new_session_at_a_time(catalog_settings: Settings) -> None:
    with run_server(sessions_bucket(catalog_settings, 2, refill_seconds=0.5)) as url:
        for _ in range(2):
            assert new_session(url).status_code == 204
        # Refused until a token is back: then one session, and refused again, as no window
        # of the old kind would (it admits a whole allowance once it has passed).
        await wait_until(lambda: new_session(url).status_code == 204, what="a token to come back")
        refused = new_session(url)
        if refused.status_code == 204:  # a slow machine: another token came back meanwhile
            refused = new_session(url)
        assert assert_rate_limited(refused) == 1  # half a second, in whole seconds


async def test_instances_sharing_a_redis_share_the_new_session_bucket(
    catalog_settings: Settings, redis_url: str
) -> None:
    settings = msgspec.structs.replace(
        sessions_bucket(msgspec.structs.replace(catalog_settings, redis_url=redis_url), 2),
        rate_limit_storage=None,  # the Redis the instances share
    )
    with run_server(settings) as one, run_server(settings) as two:
        assert new_session(one).status_code == 204
        assert new_session(two).status_code == 204
        for url in (one, two):
            refused = new_session(url)
            assert assert_rate_limited(refused) > 3600
            assert "set-cookie" not in refused.headers


async def test_probes_the_page_and_its_files_get_no_session_and_spend_no_allowance(
    catalog_settings: Settings,
) -> None:
    """A load balancer probing every few seconds would otherwise lock its address's shoppers
    out once the new-session limit is spent; a page that could not load could not even say
    why."""
    with run_server(sessions_bucket(catalog_settings, 2)) as url:
        for _ in range(10):
            for path in ("/", "/static/app.js", "/openapi.json", "/healthz", "/readyz", "/metrics"):
                answer = httpx.get(f"{url}{path}", timeout=10)
                assert answer.status_code == 200, (path, answer.text)
                assert "set-cookie" not in answer.headers
        for _ in range(2):
            assert COOKIE_NAME in new_session(url).cookies


async def test_another_sites_page_cannot_spend_an_addresss_new_sessions(
    catalog_settings: Settings,
) -> None:
    """`<img src="https://shop/api/categories">` on another site reaches the shop without its
    (SameSite) cookie: it is answered, but starts no session."""
    with run_server(sessions_bucket(catalog_settings, 2)) as url:
        for _ in range(5):
            answer = httpx.get(
                f"{url}/api/categories", headers={"Sec-Fetch-Site": "cross-site"}, timeout=10
            )
            assert answer.status_code == 200
            assert "set-cookie" not in answer.headers
        for _ in range(2):
            assert COOKIE_NAME in new_session(url, **{"Sec-Fetch-Site": "same-origin"}).cookies


async def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(
    catalog_settings: Settings,
) -> None:
    with run_server(sessions_bucket(catalog_settings, 2)) as url:
        answers = [
            httpx.get(f"{url}/api/categories", headers={"X-Forwarded-For": f"203.0.113.{n}"})
            for n in range(3)
        ]
        assert [answer.status_code for answer in answers] == [200, 200, 429]


async def test_a_trusted_proxy_says_who_the_client_is(catalog_settings: Settings) -> None:
    settings = msgspec.structs.replace(
        sessions_bucket(catalog_settings, 2),
        trusted_proxies=("127.0.0.1",),
    )
    with run_server(settings) as url:

        def via_proxy(client: str) -> int:
            response = httpx.get(f"{url}/api/categories", headers={"X-Forwarded-For": client})
            return response.status_code

        assert [via_proxy(f"203.0.113.{n}") for n in range(4)] == [200] * 4
        assert [via_proxy("198.51.100.7") for _ in range(3)] == [200, 200, 429]


async def test_one_user_may_open_only_so_many_sockets_at_once(catalog_settings: Settings) -> None:
    settings = msgspec.structs.replace(catalog_settings, max_sockets_per_user=3)
    with run_server(settings) as url, logged_errors() as errors:
        async with Shopper(url) as a, Shopper(url) as b:
            opened: list[Any] = []
            refusals: list[HandshakeResponse] = []

            async def open_one() -> None:
                try:
                    opened.append(await a.connect())
                except InvalidStatus as refused:
                    refusals.append(refused.response)

            # In parallel: the cap holds even while handshakes are under way together.
            async with anyio.create_task_group() as tasks:
                for _ in range(8):
                    tasks.start_soon(open_one)
            assert len(opened) == 3
            assert len(refusals) == 5
            error = json.loads(refusals[0].body)["error"]
            assert refusals[0].status_code == 429
            assert error["code"] == "too_many_sockets"
            assert "too many open connections for this session" in error["message"]
            assert errors == []  # a refusal is an answer, not a server error

            await b.connect()  # the cap is per user
            await opened[0].close()
            deadline = time.monotonic() + 10
            while True:  # the server counts the closed socket out once it has seen the close
                try:
                    await a.connect()
                    break
                except InvalidStatus:
                    assert time.monotonic() < deadline, "a closed socket kept its place"
                    await anyio.sleep(0.05)


async def _exchange(url: str, request: bytes, timeout: float = 10) -> bytes:
    """Send `request` (possibly incomplete: the client then just waits) and read until the
    server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(request)
        with anyio.fail_after(timeout):
            while True:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return received


def _status_and_body(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


async def test_a_huge_chunked_body_is_refused_as_it_arrives(server: str) -> None:
    """The body announces a 64 MiB chunk and sends 6 KB of it, then waits: the server must
    answer 413 and close, not wait for (or buffer) the rest."""
    async with Shopper(server) as a:
        host = server.removeprefix("http://")
        head = (
            f"POST /api/watches HTTP/1.1\r\nHost: {host}\r\nOrigin: {server}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            f"Cookie: {COOKIE_NAME}={a.cookie}\r\n\r\n"
        )
        body = f"{64 * 1024 * 1024:x}\r\n".encode() + b'{"terms": "' + b"a" * 6000
        status, answer = _status_and_body(await _exchange(server, head.encode() + body))
        assert status == 413
        assert answer["error"]["code"] == "body_too_large"


async def test_a_body_declared_too_large_is_refused_before_it_is_read(server: str) -> None:
    async with Shopper(server) as a:
        host = server.removeprefix("http://")
        head = (
            f"POST /api/watches HTTP/1.1\r\nHost: {host}\r\nOrigin: {server}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {64 * 1024 * 1024}\r\n"
            f"Cookie: {COOKIE_NAME}={a.cookie}\r\n\r\n"
        )
        status, answer = _status_and_body(await _exchange(server, head.encode() + b"{"))
        assert status == 413
        assert answer["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([f"X-Pad-{n}: {'a' * 1000}" for n in range(40)], id="many headers"),
        pytest.param([f"X-Pad: {'a' * 40_000}"], id="one long header"),
    ],
)
async def test_a_request_head_over_the_bound_is_refused(server: str, headers: list[str]) -> None:
    """40 KB of headers, never finished: answered 431 and closed, not buffered without end."""
    request = "GET /healthz HTTP/1.1\r\nHost: x\r\n" + "\r\n".join(headers)
    status, answer = _status_and_body(await _exchange(server, request.encode()))
    assert status == 431
    assert answer["error"]["code"] == "headers_too_large"


async def test_a_head_within_the_bound_with_its_body_in_the_same_read_is_served(
    server: str,
) -> None:
    """Only the head counts toward its bound: 14 KB of headers and a 3 KB body, sent in one
    write, are a request within both bounds."""
    async with Shopper(server) as a:
        host = server.removeprefix("http://")
        body = b'{"terms": "kindle paperwhite"' + b" " * 3000 + b"}"
        head = (
            f"POST /api/watches HTTP/1.1\r\nHost: {host}\r\nOrigin: {server}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Cookie: {COOKIE_NAME}={a.cookie}\r\nConnection: close\r\n"
            + "".join(f"X-Pad-{n}: {'a' * 1000}\r\n" for n in range(14))
            + "\r\n"
        )
        status, answer = _status_and_body(await _exchange(server, head.encode() + body))
        assert status == 201, answer  # counting the body too, it was 431
        assert answer["terms"] == "kindle paperwhite"


def test_ordinary_heads_pass_request_after_request_on_one_connection(server: str) -> None:
    """The bound is per request: 100 requests with 1 KB of headers over one keep-alive
    connection, and one with 8 KB of cookies, are all answered."""
    with httpx.Client(base_url=server, timeout=10) as client:
        for _ in range(100):
            assert client.get("/healthz", headers={"X-Pad": "a" * 1000}).status_code == 200
        big_cookies = "; ".join(f"other{n}={'c' * 1000}" for n in range(8))
        assert client.get("/healthz", headers={"Cookie": big_cookies}).status_code == 200


def test_ipv6_clients_count_by_their_64_bit_prefix() -> None:
    assert client_address("2001:db8:1:2:aaaa::1") == client_address("2001:db8:1:2:bbbb::9")
    assert client_address("2001:db8:1:2::1") != client_address("2001:db8:1:3::1")
    assert client_address("203.0.113.9") == "203.0.113.9"
    assert client_address(None) is None


async def test_a_body_declared_too_large_is_refused_on_a_route_that_takes_none(
    server: str,
) -> None:
    """Answered without reading it, rather than answered and then read and thrown away."""
    async with Shopper(server) as a:
        host = server.removeprefix("http://")
        head = (
            f"GET /api/categories HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Length: {64 * 1024 * 1024}\r\nCookie: {COOKIE_NAME}={a.cookie}\r\n\r\n"
        )
        status, answer = _status_and_body(await _exchange(server, head.encode() + b"x" * 100))
        assert status == 413
        assert answer["error"]["code"] == "body_too_large"


async def test_instances_sharing_a_redis_share_the_session_limit(
    catalog_settings: Settings, redis_url: str
) -> None:
    # No storage configured: the Redis the instances share holds the counters.
    settings = limited(
        msgspec.structs.replace(catalog_settings, redis_url=redis_url),
        rate_limit_storage=None,
        limit_searches_per_session=f"3/{FOREVER}",
    )
    with run_server(settings) as one, run_server(settings) as two:
        async with Shopper(one) as a:
            await a.search("kindle 1")
            await a.search("kindle 2")
            other = httpx.AsyncClient(base_url=two, cookies={COOKIE_NAME: a.cookie}, timeout=15)
            async with other:
                third = await other.get("/api/search", params={"q": "kindle 3"})
                assert third.status_code == 200, third.text
                # The fourth is over the limit on either instance.
                assert_rate_limited(await other.get("/api/search", params={"q": "kindle 4"}))
            assert_rate_limited(await a.http.get("/api/search", params={"q": "kindle 4"}))


async def test_a_store_that_does_not_answer_admits_and_says_so_once(
    catalog_settings: Settings,
) -> None:
    nowhere = f"async+redis://127.0.0.1:{free_port()}"  # nothing listens there
    settings = limited(
        catalog_settings, rate_limit_storage=nowhere, limit_searches_per_session=f"1/{FOREVER}"
    )
    with run_server(settings) as url, capture_warnings() as warnings:
        async with Shopper(url) as a:
            for number in range(3):  # past the limit: nothing counts them
                await a.search(f"kindle {number}")
    assert [w for w in warnings if "rate limits not enforced" in w] == [warnings[0]]
