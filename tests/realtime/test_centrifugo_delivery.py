"""Search alerts delivered through a real Centrifugo (PERCOLERT_DELIVERY=centrifugo): each
recipient hears of their own watch on their personal channel, nobody else does, and a
shopper present only on Centrifugo is reachable (leased and alerted). Centrifugo is built
from the Go module proxy on first use (bench/centrifugo.py, about 3 minutes on 2 cores), as
the benchmark runs it; without Go (and no build yet) these tests are reported as skipped."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.centrifugo import VERSION, Centrifugo, installed_version
from bench.rig import user_of
from percolert.core.settings import Settings
from tests.accounts.conftest import ADMIN, ADMIN_TOKEN
from tests.accounts.tokens import SHOP_SECRET, shop_token
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices
from tests.servers import metric, run_server
from tests.shoppers import Shopper, default_watch
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


class CentrifugoClient:
    """A socket speaking Centrifugo's JSON client protocol, subscribed by the server to its
    user's personal channel on connect; publications are read as Percolert alerts."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self._lines: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, peer: Centrifugo, shopper: Shopper) -> CentrifugoClient:
        """Connect as `shopper`, with the token Percolert gives them."""
        answer = await shopper.http.post("/api/realtime/token", json={})
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        token = answer.json()["token"]
        connection = await connect(peer.ws_url, origin=peer.url)  # type: ignore[arg-type]
        client = cls(connection)
        await connection.send(json.dumps({"id": 1, "connect": {"token": token}}))
        reply = await client._next(lambda line: line.get("id") == 1)
        assert "connect" in reply, reply
        return client

    async def _next(self, wanted: Any, timeout: float = 10.0) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                for number, line in enumerate(self._lines):
                    if wanted(line):
                        return self._lines.pop(number)
                frame = await self.connection.recv()
                # One frame may hold several replies and pushes, a line each.
                for text in str(frame).splitlines():
                    line = json.loads(text)
                    if line == {}:  # the server's ping
                        await self.connection.send("{}")
                    else:
                        self._lines.append(line)

    async def next_alert(self) -> dict[str, Any]:
        """The next alert published to the socket, skipping other publications: a watch
        added just before the socket opened may publish its `watches_changed` after."""
        push = await self._next(
            lambda line: line.get("push", {}).get("pub", {}).get("data", {}).get("type") == "alert"
        )
        alert: dict[str, Any] = push["push"]["pub"]["data"]
        return alert

    async def closed_with(self) -> int:
        """Read until Centrifugo closes the socket: the close code."""
        with anyio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await self._read_until_closed()
        received = closed.value.rcvd
        assert received is not None, "closed without a close frame"
        return received.code

    async def _read_until_closed(self) -> None:
        while True:
            await self.connection.recv()

    async def close(self) -> None:
        await self.connection.close()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Centrifugo]:
    if shutil.which("go") is None and installed_version() != VERSION:
        pytest.skip("Go is not installed: Centrifugo is built from source (go.dev/doc/install)")
    node = Centrifugo(tmp_path, history_size=100)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def served(elasticsearch_url: str, peer: Centrifugo) -> Iterator[tuple[str, Settings]]:
    settings = make_settings(
        elasticsearch_url,
        delivery="centrifugo",
        centrifugo_api_url=peer.url,
        centrifugo_api_key=peer.api_key,
        centrifugo_token_secret=peer.secret,
        coalesce_seconds=0.0,
        jwt_secret=SHOP_SECRET,
        admin_token=ADMIN_TOKEN,
        # Leases renewed every 5 s at most: the users present on Centrifugo are leased by
        # the renewal loop (no hello reaches this server).
        lease_slack_seconds=20.0,
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    try:
        with run_server(settings) as url:
            yield url, settings
    finally:
        asyncio.run(delete_indices(settings))


async def reachable(url: str, present: int, *, leased: int = 0) -> None:
    """Wait until the server counts `present` users on Centrifugo and has leased at least
    `leased` watches (its renewal loop leases those present: no hello reaches it)."""
    await wait_until(
        lambda: metric(url, "percolert_centrifugo_present") == present,
        timeout=20,
        what=f"{present} present",
    )
    await wait_until(
        lambda: metric(url, "percolert_watch_leases_written_total") >= leased,
        timeout=30,
        what=f"{leased} watches leased",
    )


async def test_each_recipient_hears_of_their_own_watch_on_their_channel_only(
    served: tuple[str, Settings], peer: Centrifugo
) -> None:
    url, _ = served
    async with Shopper(url) as ada, Shopper(url) as bob, Shopper(url) as eve:
        ada_watch = await ada.watch("fitbit")
        bob_watch = await bob.watch("kindle")
        ada_socket = await CentrifugoClient.open(peer, ada)
        bob_socket = await CentrifugoClient.open(peer, bob)
        try:
            # Present on Centrifugo, then leased: both are reachable from this server.
            await reachable(url, 2, leased=2)
            await eve.search("fitbit charge")
            alert = await ada_socket.next_alert()
            assert alert["type"] == "alert"
            assert alert["watch"]["id"] == ada_watch["id"]
            first_seq = alert["seq"]

            # Ada's own search alerts nobody; Bob hears of Eve's kindle search, through his
            # watch and no one else's.
            await ada.search("fitbit versa")
            await eve.search("kindle paperwhite")
            kindle = await bob_socket.next_alert()
            assert kindle["watch"]["id"] == bob_watch["id"]
            assert "fitbit" not in json.dumps(kindle)

            # Ada's next alert is Eve's next fitbit search: she heard neither her own search
            # nor Bob's kindle alert in between.
            await eve.search("fitbit sense")
            second = await ada_socket.next_alert()
            assert second["watch"]["id"] == ada_watch["id"]
            assert second["seq"] > kindle["seq"] > first_seq
            assert metric(url, "percolert_centrifugo_failed_total") == 0
        finally:
            await ada_socket.close()
            await bob_socket.close()


async def test_the_token_names_the_caller_and_is_refused_where_alerts_come_on_ws(
    served: tuple[str, Settings], peer: Centrifugo, elasticsearch_url: str
) -> None:
    url, settings = served
    async with Shopper(url) as ada:
        answer = (await ada.http.post("/api/realtime/token", json={})).json()
        claims = jwt.decode(answer["token"], peer.secret, algorithms=["HS256"])
        assert claims["sub"] == user_of(ada.cookie)
        assert claims["exp"] - claims["iat"] == settings.centrifugo_token_seconds
        assert answer["expires_at"].startswith(time.strftime("%Y-", time.gmtime(claims["exp"])))
    with run_server(make_settings(elasticsearch_url)) as plain:
        async with Shopper(plain) as bob:
            refused = await bob.http.post("/api/realtime/token", json={})
            assert refused.status_code == 404
            assert refused.json()["error"]["code"] == "not_found"
            assert "/ws" in refused.json()["error"]["message"]


async def test_a_default_watch_reaches_everyone_present_but_the_searcher(
    served: tuple[str, Settings], peer: Centrifugo
) -> None:
    url, settings = served
    async with (
        default_watch(settings, "kindle") as (watch, _),
        Shopper(url) as ada,
        Shopper(url) as bob,
        Shopper(url) as eve,
    ):
        sockets = [await CentrifugoClient.open(peer, shopper) for shopper in (ada, bob, eve)]
        try:
            await reachable(url, 3)
            await eve.search("kindle paperwhite")
            first = [await socket.next_alert() for socket in sockets[:2]]
            assert {alert["watch"]["id"] for alert in first} == {watch.id}
            assert first[0]["seq"] == first[1]["seq"]  # one sending, one broadcast
            # Eve's next alert is of Ada's search: she did not hear of her own.
            await ada.search("kindle oasis")
            heard = await sockets[2].next_alert()
            assert heard["seq"] > first[0]["seq"]
            assert (await sockets[1].next_alert())["seq"] == heard["seq"]
        finally:
            for socket in sockets:
                await socket.close()


async def test_an_erased_account_is_disconnected_for_good_and_hears_nothing_more(
    served: tuple[str, Settings], peer: Centrifugo
) -> None:
    url, _ = served
    async with Shopper(url, token=shop_token("centrifugo-erased")) as ada, Shopper(url) as eve:
        await ada.watch("fitbit")
        socket = await CentrifugoClient.open(peer, ada)
        try:
            await reachable(url, 1, leased=1)
            await eve.search("fitbit charge")
            assert (await socket.next_alert())["type"] == "alert"
            erased = httpx.delete(f"{url}/api/admin/accounts/centrifugo-erased", headers=ADMIN)
            assert erased.status_code == 200, erased.text
            # Centrifugo's "force disconnect, do not reconnect".
            assert await socket.closed_with() == 3501
            await wait_until(
                lambda: metric(url, "percolert_centrifugo_present") == 0,
                timeout=20,
                what="nobody present",
            )
            assert metric(url, "percolert_centrifugo_failed_total") == 0
        finally:
            await socket.close()
