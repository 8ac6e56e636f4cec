"""Two instances sharing one Redis and the same indices behave as one service: real servers
on two ports, a real redis-server, real Elasticsearch, real WebSocket clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import msgspec
import pytest

from percolert.alerts.log import AlertLog
from percolert.core.messages import AlertWatch
from percolert.core.records import AlertRecord
from percolert.core.settings import Settings
from percolert.engine import es, indices
from tests.alerts.test_recovery import best_hit, first_found
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices
from tests.servers import metric, run_server
from tests.shoppers import Shopper, default_watch
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

WINDOW = 2.0  # coalescing window, seconds: room for searches alternating between instances


@pytest.fixture(scope="module")
def cluster_settings(catalog_settings: Settings, redis_url: str) -> Settings:
    return msgspec.structs.replace(
        catalog_settings, coalesce_seconds=WINDOW, max_watches_per_user=5, redis_url=redis_url
    )


@pytest.fixture(scope="module")
def instances(cluster_settings: Settings) -> Iterator[tuple[str, str]]:
    with run_server(cluster_settings) as one, run_server(cluster_settings) as two:
        yield one, two


@pytest.fixture(scope="module")
def strict_instances(elasticsearch_url: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """Two instances where only a connected user is reachable: no reconnect grace, hence no
    restart window either."""
    settings = make_settings(elasticsearch_url, redis_url=redis_url, reconnect_grace_seconds=0.0)
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    try:
        with run_server(settings) as one, run_server(settings) as two:
            yield one, two
    finally:
        asyncio.run(delete_indices(settings))


async def every_window_closed(server: str) -> None:
    """Every coalescing window of the service has ended, its follow-up (if any) sent."""
    await wait_until(
        lambda: metric(server, "percolert_coalescing_windows") == 0,
        what="every coalescing window to close",
    )


async def test_an_alert_reaches_each_socket_of_the_owner_once_whichever_instance(
    instances: tuple[str, str],
) -> None:
    one, two = instances
    async with Shopper(one) as a, Shopper(two) as b, Shopper(one) as c:
        watch = await a.watch("kindle")
        a_one, a_two = await a.connect(), await a.connect(base_url=two)
        c_one = await c.connect()
        await b.search("Kindle Paperwhite")  # on instance 2, where A has one of two sockets
        alerts = [await a_one.next_alert(), await a_two.next_alert()]
        for alert in alerts:
            assert alert is not None
            assert alert["watch"] == {"id": watch["id"], "terms": "kindle"}
            assert alert["count"] == 1
        assert alerts[0] == alerts[1]  # the same sending, the same position
        # Whatever B's search sent reaches a socket before the marker, which B searches next
        # on the same instance: nothing twice, and nothing for C.
        assert await a.alerts_before_markers([a_one, a_two], b) == [[], []]
        assert await c.alerts_before_marker(c_one, b) == []
        await a.unwatch(watch["id"])


async def test_an_owner_connected_only_to_the_other_instance_is_reachable(
    strict_instances: tuple[str, str],
) -> None:
    """Who is reachable is shared: instance 1 alerts A, whose only socket is on instance 2,
    and not D, connected nowhere."""
    one, two = strict_instances
    async with Shopper(two) as a, Shopper(one) as b, Shopper(one) as d:
        watch = await a.watch("kindle")
        await d.watch("kindle")
        socket = await a.connect()
        await b.search("Kindle Oasis")  # on instance 1, which holds no socket of A's
        alert = await socket.next_alert()
        assert alert is not None
        assert alert["watch"]["id"] == watch["id"]
        # D was away when the search was made (no grace): nothing was kept for them.
        assert await (await d.connect(after=0)).messages_before_pong() == []
        assert await a.alerts_before_marker(socket, b) == []


async def test_a_default_watch_reaches_users_on_both_instances_but_the_searcher(
    instances: tuple[str, str], cluster_settings: Settings
) -> None:
    one, two = instances
    async with (
        default_watch(cluster_settings, "playstation") as (default, _),
        Shopper(one) as a,
        Shopper(two) as b,
        Shopper(two) as c,
    ):
        sockets = {"a": await a.connect(), "b": await b.connect(), "c": await c.connect()}
        await b.search("PlayStation 5 Pro")
        for name in ("a", "c"):
            alert = await sockets[name].next_alert()
            assert alert is not None, name
            assert alert["watch"]["id"] == default.id
        assert await a.alerts_before_marker(sockets["a"], c) == []
        assert await b.alerts_before_marker(sockets["b"], c) == []
        assert await c.alerts_before_marker(sockets["c"], b) == []


async def test_a_window_spans_the_instances_one_alert_and_one_follow_up_with_the_total(
    instances: tuple[str, str],
) -> None:
    one, two = instances
    async with Shopper(one) as a, Shopper(one) as b, Shopper(two) as d:
        watch = await a.watch("headphones")
        sockets = [await a.connect(), await a.connect(base_url=two)]
        texts = ["sony headphones", "bose headphones", "jbl headphones", "beats headphones"]
        texts.append("sennheiser headphones")
        found = []
        for index, text in enumerate(texts):
            # Instance 1, 2, 1, 2, 1; each search finds its brand's headphones first.
            found.append(await best_hit(b if index % 2 == 0 else d, text))
        assert len(set(found)) == len(texts)
        for socket in sockets:
            first = await socket.next_alert()
            follow_up = await socket.next_alert(timeout=WINDOW + 5)
            assert first is not None
            assert follow_up is not None
            assert (first["count"], follow_up["count"]) == (1, len(texts) - 1)
            # About one search, then (what the latest found first) the others.
            assert first_found(first) in found
            assert first_found(follow_up) in found
            assert first_found(first) != first_found(follow_up)
        await every_window_closed(one)
        await every_window_closed(two)
        # No second immediate alert, no second follow-up.
        assert await a.alerts_before_markers(sockets, b) == [[], []]
        await a.unwatch(watch["id"])


async def test_watches_changed_reaches_the_users_sockets_on_every_instance(
    instances: tuple[str, str],
) -> None:
    one, two = instances
    async with Shopper(one) as a:
        sockets = [await a.connect(), await a.connect(base_url=two)]
        watch = await a.watch("gopro")
        for socket in sockets:
            changed = await socket.receive()
            assert changed is not None
            assert changed["type"] == "watches_changed"
            assert [w["id"] for w in changed["watches"] if not w["is_default"]] == [watch["id"]]
        await a.unwatch(watch["id"])


async def test_a_page_resumes_on_the_other_instance_from_the_log(
    instances: tuple[str, str], cluster_settings: Settings
) -> None:
    one, two = instances
    async with Shopper(one) as a, Shopper(two) as b:
        watch = await a.watch("macbook")
        socket = await a.connect()
        last_seq = socket.hello["last_seq"]  # A's own position: none yet
        assert last_seq == 0
        await socket.close()
        air = await best_hit(b, "MacBook Air")  # A is away but within the grace: kept

        client = es.create_client(cluster_settings)
        try:

            async def logged() -> bool:
                # The newest sendings: the log is shared with this module's other tests.
                found = await client.search(
                    index=indices.alias_for(cluster_settings, "alerts"),
                    sort=[{"seq": "desc"}],
                    size=100,
                    source_includes=["alert.watches"],
                )
                return any(
                    any(w["id"] == watch["id"] for w in hit["_source"]["alert"]["watches"].values())
                    for hit in found["hits"]["hits"]
                )

            await wait_until(logged, what="the alert to reach the log")
        finally:
            await client.close()
        resumed = await a.connect(after=last_seq)  # on instance 1: made and logged by 2
        alert = await resumed.next_alert()
        assert alert is not None
        assert alert["watch"]["id"] == watch["id"]
        assert alert["seq"] > last_seq
        assert first_found(alert) == air
        assert await a.alerts_before_marker(resumed, b) == []
        await a.unwatch(watch["id"])


def test_positions_start_above_the_logs_last(redis_url: str, elasticsearch_url: str) -> None:
    """An instance joining Redis starts the shared counter above every position the log
    holds, so `after=` values handed out before stay valid."""
    settings = make_settings(elasticsearch_url, redis_url=redis_url)
    prepare_indices(settings)
    ahead = int(time.time() * 1_000_000) + 10**12  # a position from a clock far ahead

    async def log_one() -> None:
        client = es.create_client(settings)
        log = AlertLog(client, indices.alias_for(settings, "alerts"))
        log.append(
            AlertRecord(
                seq=ahead,
                at="2026-01-01T00:00:00.000+00:00",
                earliest_ms=0,
                watches={"someone": AlertWatch(id="w", terms="q")},
            )
        )
        await log.flush()
        await client.close()

    asyncio.run(log_one())
    try:
        with run_server(settings) as one:

            async def first_alert_seq() -> int:
                async with Shopper(one) as owner, Shopper(one) as searcher:
                    await owner.watch("kindle")
                    socket = await owner.connect()
                    assert socket.hello["last_seq"] == 0  # none of the owner's own yet
                    await searcher.search("kindle oasis")
                    alert = await socket.next_alert()
                    assert alert is not None
                    return int(alert["seq"])

            assert asyncio.run(first_alert_seq()) > ahead
    finally:
        asyncio.run(delete_indices(settings))
