"""Two instances on a Redis made for failover: a Redis Cluster (three primaries, each with a
replica) and a primary behind three Sentinels, real `redis-server`s of the test's own
(tests/redis_topologies.py). The primary holding the instances' keys fails over while
shoppers search: SIGKILLed (a crashed machine), or by a planned `CLUSTER FAILOVER`. Stated
and tested here: the instances ride it out as any Redis outage (search answers throughout;
alerts wait), come back on the new primary, and every socket gets every alert once, in
order, as the alert log has them. Replication is asynchronous: in `sentinel-lost-tail` the
replica is kept from receiving the last alerts' writes, so the new primary's position
counter is behind what the instances saw; they start a new epoch and their sockets resync
from the log (1012)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest

from percolert.core.settings import Settings
from percolert.web.middleware.ratelimits import Action, RateLimits
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.alerts.test_recovery import best_hit
from tests.cluster.test_cluster_faults import Page, in_order_once, logged_for, wait_ready
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices
from tests.redis_topologies import RedisClusterNodes, RedisSentinels
from tests.servers import free_port, metric, run_server
from tests.shoppers import Shopper
from tests.web.test_limits import FOREVER, assert_rate_limited, limited

pytestmark = pytest.mark.anyio


@dataclass
class Topology:
    url: str
    fail_over: Callable[[], int]  # the instances' keys' primary; returns once a replica serves
    # Keeps the replica from receiving what is written from now on (its tail is then lost).
    hold_replication: Callable[[], None] | None = None


@pytest.fixture(
    params=["cluster-killed", "cluster-planned", "sentinel-killed", "sentinel-lost-tail"]
)
def settings(
    request: pytest.FixtureRequest, elasticsearch_url: str, tmp_path: Path
) -> Iterator[tuple[Settings, Topology]]:
    """Settings on a Redis Cluster or behind Sentinel, the indices set up. No coalescing
    window: each search is its own alert, so that "every alert, once" counts searches."""
    settings = make_settings(elasticsearch_url, coalesce_seconds=0.0)
    with contextlib.ExitStack() as stack:
        if request.param.startswith("cluster"):
            nodes = stack.enter_context(RedisClusterNodes(tmp_path))
            key = f"percolert:{{{settings.index_prefix}}}:meta"  # every key is in its slot
            planned = request.param == "cluster-planned"
            topology = Topology(
                nodes.url, lambda: (nodes.fail_over if planned else nodes.kill_primary)(key)
            )
        else:
            sentinels = stack.enter_context(RedisSentinels(tmp_path))
            hold = sentinels.hold_replication if request.param.endswith("lost-tail") else None
            topology = Topology(sentinels.url, sentinels.kill_primary, hold)
        settings = msgspec.structs.replace(settings, redis_url=topology.url)
        prepare_indices(settings, catalog=SAMPLE_CATALOG)
        try:
            yield settings, topology
        finally:
            asyncio.run(delete_indices(settings))


async def test_a_failover_mid_run_loses_no_alert_and_sends_none_twice(
    settings: tuple[Settings, Topology],
) -> None:
    settings_, topology = settings
    texts = ["kindle paperwhite", "kindle oasis", "kindle scribe", "kindle basic", "kindle kids"]
    with run_server(settings_) as one, run_server(settings_) as two:
        async with Shopper(one) as a, Shopper(one) as b, Shopper(two) as c:
            watch = await a.watch("kindle")
            pages = [Page(a, await a.connect(), one), Page(a, await a.connect(base_url=two), two)]
            for text in texts[:2]:
                await best_hit(c, text)
            for page in pages:
                await page.collect(2)
            searched = 2
            if topology.hold_replication is not None:
                topology.hold_replication()
                # Delivered live by the primary, never received by its replica.
                for text in texts[2:4]:
                    await best_hit(b, text)
                searched += 2
                for page in pages:
                    await page.collect(searched)

            failed_over = anyio.Event()

            async def fail_over() -> None:
                await anyio.to_thread.run_sync(topology.fail_over)
                failed_over.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(fail_over)
                # Searching during the failover, from both instances: answered while the
                # broker is down (their alerts wait), then alerting again. A dozen at most:
                # a socket replays the newest 200 it missed.
                while searched < 8 or (searched < 16 and not failed_over.is_set()):
                    await best_hit(b if searched % 2 else c, texts[searched % len(texts)])
                    searched += 1
            for url in (one, two):
                await wait_ready(url, (200, "up"))
                # Each lost the old primary and found the new one.
                assert metric(url, "percolert_broker_reconnects_total") >= 1
            for text in texts:
                await best_hit(b, text)
            searched += len(texts)

            logged = await logged_for(settings_, watch["id"], searched)
            assert len(logged) == searched  # every search alerted once
            for page in pages:
                alerts = await page.collect(searched)
                assert in_order_once(alerts) == logged  # no gap, nothing twice
            if topology.hold_replication is not None:
                # The new primary's counter was behind what each instance had seen.
                for url in (one, two):
                    assert metric(url, "percolert_broker_gaps_total", cause="epoch") >= 1
                assert all((1012, "resync") in page.closes for page in pages)
            sockets = [page.socket for page in pages]
            assert await a.alerts_before_markers(sockets, b) == [[], []]


@pytest.mark.parametrize("settings", ["cluster-killed", "sentinel-killed"], indirect=True)
async def test_instances_share_the_session_limit_through_it(
    settings: tuple[Settings, Topology],
) -> None:
    """The rate limits' counters live in the same Redis: a Cluster keeps each key's windows
    in one slot (`limits`' hash tags), Sentinel's primary is found like the broker's."""
    limits = limited(
        settings[0], rate_limit_storage=None, limit_searches_per_session=f"2/{FOREVER}"
    )
    with run_server(limits) as one, run_server(limits) as two:
        async with (
            Shopper(one) as a,
            httpx.AsyncClient(base_url=two, cookies={COOKIE_NAME: a.cookie}, timeout=15) as other,
        ):
            await a.search("kindle 1")
            second = await other.get("/api/search", params={"q": "kindle 2"})
            assert second.status_code == 200, second.text
            # The third is over the limit on either instance.
            assert_rate_limited(await other.get("/api/search", params={"q": "kindle 3"}))
            assert_rate_limited(await a.http.get("/api/search", params={"q": "kindle 3"}))


@pytest.mark.parametrize("form", ["redis+cluster", "redis+sentinel"])
async def test_the_limits_admit_while_no_node_answers(form: str) -> None:
    """A Cluster's own errors are no RedisError: they too must count as a store that does
    not answer, which admits (and is not asked again until it answers)."""
    nowhere = f"{form}://127.0.0.1:{free_port()}?sentinel_master_name=primary"
    if form == "redis+cluster":
        nowhere = nowhere.partition("?")[0]
    settings = limited(
        make_settings("http://127.0.0.1:9"),
        redis_url=nowhere,
        rate_limit_storage=None,
        limit_searches_per_session=f"1/{FOREVER}",
        new_sessions_burst=1,
    )
    limits = RateLimits(settings)
    try:
        for _ in range(3):
            assert await limits.admit(Action.SEARCH, session="s", address="192.0.2.1") is None
            assert await limits.admit(Action.NEW_SESSION, session=None, address="192.0.2.1") is None
    finally:
        await limits.close()
