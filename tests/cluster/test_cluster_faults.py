"""Two instances and their Redis when Redis fails: stopped for a while (its data kept), and
restarted empty. Real servers on two ports, a real redis-server of the test's own (stopped
and started again on its port), real Elasticsearch, real WebSocket clients that reconnect as
the page does (web/app.js)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from percolert.broker.redis import LAPSE_MS, REAP_MS
from percolert.core.settings import Settings
from percolert.dev.redisnode import RedisNode
from percolert.engine import es, indices
from tests.alerts.test_recovery import best_hit, first_found
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices
from tests.servers import free_port, run_server
from tests.shoppers import Shopper, Socket
from tests.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.anyio


class OwnRedis:
    """A redis-server of this test's own on a fixed port, so that it can be stopped and
    started again where the instances look for it."""

    def __init__(self, home: Path) -> None:
        self.node = RedisNode(home)
        self.port = free_port()
        self.node.start(self.port)
        self.url = f"redis://127.0.0.1:{self.port}"

    def stop(self, *, keep: bool) -> None:
        """Stop it; `keep`: its data is saved and loaded at the next start (as a Redis with
        persistence does), else it comes back empty."""
        if keep:
            client = redis.Redis(port=self.port)
            with contextlib.suppress(redis.ConnectionError):
                client.shutdown(save=True)
            client.close()
            wait_until_sync(lambda: self.node.status() is None, what="redis-server to stop")
        else:
            self.node.stop()
            (self.node.data / "dump.rdb").unlink(missing_ok=True)

    def start(self) -> None:
        self.node.start(self.port)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    try:
        yield server
    finally:
        server.node.stop()


@pytest.fixture
def settings(elasticsearch_url: str, own_redis: OwnRedis) -> Iterator[Settings]:
    """Settings on `own_redis`, the indices set up. No coalescing window: each search is its
    own alert, so that "every alert, exactly once" counts searches."""
    settings = make_settings(elasticsearch_url, redis_url=own_redis.url, coalesce_seconds=0.0)
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    try:
        yield settings
    finally:
        asyncio.run(delete_indices(settings))


@pytest.fixture
def cluster(settings: Settings) -> Iterator[tuple[Settings, str, str]]:
    """Two instances on `own_redis`, and their settings."""
    with run_server(settings) as one, run_server(settings) as two:
        yield settings, one, two


class Page:
    """An alert socket kept open as web/app.js keeps it: closed for any reason, it reconnects
    (after about a second) with `?after=` the last position it got. Records every alert and
    every close."""

    def __init__(self, shopper: Shopper, socket: Socket, base_url: str) -> None:
        self.shopper = shopper
        self.socket = socket
        self.base_url = base_url
        self.last = int(socket.hello["last_seq"])
        self.alerts: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []

    async def collect(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The alerts received, reconnecting as needed, once there are `count`."""
        with anyio.fail_after(timeout):
            while len(self.alerts) < count:
                try:
                    message = json.loads(await self.socket.connection.recv())
                except ConnectionClosed as closed:
                    received = closed.rcvd
                    self.closes.append(
                        (0, "") if received is None else (received.code, received.reason)
                    )
                    await anyio.sleep(1.0)  # the page's first retry comes after about 1 s
                    self.socket = await self.shopper.connect(
                        after=self.last, base_url=self.base_url
                    )
                    continue
                if message["type"] == "alert":
                    self.alerts.append(message)
                    self.last = max(self.last, message["seq"])
        return self.alerts


async def readiness(base_url: str) -> tuple[int, str]:
    """/readyz's status and its error code, or its `broker` field when ready."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.get("/readyz")
    body = response.json()
    if response.status_code == 200:
        return 200, body["broker"]
    return response.status_code, body["error"]["code"]


async def wait_ready(base_url: str, expected: tuple[int, str]) -> None:
    async def reached() -> bool:
        return await readiness(base_url) == expected

    await wait_until(reached, timeout=20, what=f"/readyz of {base_url} to say {expected}")


def in_order_once(alerts: list[dict[str, Any]]) -> list[int]:
    seqs = [alert["seq"] for alert in alerts]
    assert seqs == sorted(set(seqs)), seqs  # in position order, none twice
    return seqs


async def test_redis_stopped_for_a_while_delays_alerts_and_loses_none(
    cluster: tuple[Settings, str, str], own_redis: OwnRedis
) -> None:
    _, one, two = cluster
    async with Shopper(one) as a, Shopper(two) as b:
        await a.watch("kindle")
        held = Page(a, await a.connect(), one)
        paperwhite = await best_hit(b, "kindle paperwhite")
        await held.collect(1)

        own_redis.stop(keep=True)
        # Redis's clock is this machine's: no beat lands after this, so every instance's
        # presence (the last beat + LAPSE_MS) has lapsed once LAPSE_MS more have passed.
        stopped = time.time()
        await wait_ready(one, (503, "broker_unavailable"))
        await wait_ready(two, (503, "broker_unavailable"))
        texts = ["kindle oasis", "kindle scribe", "kindle basic", "kindle kids"]
        # Answered (200) while Redis is away; each finds its own Kindle first.
        found = [await best_hit(b, text) for text in texts]
        assert len(set(found)) == len(texts)
        # A socket opened while Redis is away: registered when it is back.
        late = Page(a, await a.connect(base_url=two), two)
        assert await readiness(two) == (503, "broker_unavailable")
        # Away as long as the issue asks: past an instance's lapse, so that every instance
        # comes back lapsed on Redis's clock until its next beat; short of the reaping, so
        # that no inbox or registry is dropped.
        await wait_until(
            lambda: time.time() > stopped + LAPSE_MS / 1000,
            timeout=2 * LAPSE_MS / 1000,
            what="every instance's presence to lapse on Redis's clock",
        )
        own_redis.start()
        assert time.time() < stopped + REAP_MS / 1000, "away so long that instances were reaped"

        await wait_ready(one, (200, "up"))
        await wait_ready(two, (200, "up"))
        alerts = await held.collect(1 + len(texts))
        # Kept in the order searched while Redis was away, and sent in that order.
        assert [first_found(alert) for alert in alerts] == [paperwhite, *found]
        in_order_once(alerts)
        assert held.closes == []  # the socket held through the outage stayed open
        late_alerts = await late.collect(len(texts))
        assert [first_found(alert) for alert in late_alerts] == found
        in_order_once(late_alerts)
        assert await a.alerts_before_markers([held.socket, late.socket], b) == [[], []]


async def logged_for(settings: Settings, watch_id: str, count: int) -> list[int]:
    """The positions of the alert log's sendings through `watch_id`, once there are `count`."""
    client = es.create_client(settings)
    seqs: list[int] = []
    try:

        async def logged() -> bool:
            nonlocal seqs
            found = await client.search(
                index=indices.alias_for(settings, "alerts"),
                query={"match_all": {}},
                size=1000,
                source_includes=["seq", "alert.watches"],
            )
            seqs = sorted(
                hit["_source"]["seq"]
                for hit in found["hits"]["hits"]
                if any(w["id"] == watch_id for w in hit["_source"]["alert"]["watches"].values())
            )
            return len(seqs) >= count

        await wait_until(logged, what=f"{count} alerts in the log")
    finally:
        await client.close()
    return seqs


async def test_redis_restarted_empty_resyncs_sockets_from_the_log(
    cluster: tuple[Settings, str, str], own_redis: OwnRedis
) -> None:
    settings, one, two = cluster
    async with Shopper(one) as a, Shopper(two) as b:
        watch = await a.watch("kindle")
        pages = [Page(a, await a.connect(), one), Page(a, await a.connect(base_url=two), two)]
        before = [await best_hit(b, text) for text in ("kindle paperwhite", "kindle oasis")]
        for page in pages:
            await page.collect(len(before))
        old = max(alert["seq"] for alert in pages[0].alerts)  # the last before the restart

        own_redis.stop(keep=False)
        own_redis.start()  # empty
        after = [
            await best_hit(b, text) for text in ("kindle scribe", "kindle basic", "kindle kids")
        ]
        assert len({*before, *after}) == len(before) + len(after)  # each search told apart
        logged = await logged_for(settings, watch["id"], len(before) + len(after))
        for page in pages:
            alerts = await page.collect(len(before) + len(after))
            assert (1012, "resync") in page.closes
            assert in_order_once(alerts) == logged  # no gap, nothing twice
            # Searches percolated side by side may be numbered in either order.
            assert sorted(first_found(alert) for alert in alerts) == sorted([*before, *after])
            assert all(alert["seq"] > old for alert in alerts if first_found(alert) in after)
        sockets = [page.socket for page in pages]
        assert await a.alerts_before_markers(sockets, b) == [[], []]


async def test_an_instance_starts_while_redis_is_away_and_joins_when_it_answers(
    settings: Settings, own_redis: OwnRedis
) -> None:
    own_redis.stop(keep=False)
    with run_server(settings) as one:
        async with Shopper(one) as a, Shopper(one) as b:
            await a.watch("kindle")
            page = Page(a, await a.connect(), one)
            assert await readiness(one) == (503, "broker_unavailable")
            oasis = await best_hit(b, "kindle oasis")  # answered; its alert waits for Redis
            own_redis.start()
            await wait_ready(one, (200, "up"))
            [alert] = await page.collect(1)
            assert first_found(alert) == oasis
            assert await a.alerts_before_marker(page.socket, b) == []
