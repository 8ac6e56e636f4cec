"""Two instances on a Redis made for failover: a Redis Cluster (three primaries, each with a
replica) and a primary behind three Sentinels, real `redis-server`s of the test's own
(tests/redis_topologies.py). The primary holding the instances' keys is SIGKILLed while
shoppers search; a replica takes over, and what it had not yet received is lost with the old
primary (replication is asynchronous). Stated and tested here: the instances ride it out as
any Redis outage (search answers throughout; alerts wait), come back on the new primary, and
every socket gets every alert once, in order, as the alert log has them: what the lost tail
took is replayed from the log (a 1012 resync) where a position was lost."""

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
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.alerts.test_recovery import best_hit
from tests.cluster.test_cluster_faults import Page, in_order_once, logged_for, wait_ready
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices
from tests.redis_topologies import redis_cluster, redis_sentinels
from tests.servers import metric, run_server
from tests.shoppers import Shopper
from tests.web.test_limits import FOREVER, assert_rate_limited, limited

pytestmark = pytest.mark.anyio


@dataclass
class Topology:
    url: str
    kill_primary: Callable[[], int]  # of the instances' keys; returns once a replica serves


@pytest.fixture(params=["cluster", "sentinel"])
def settings(
    request: pytest.FixtureRequest, elasticsearch_url: str, tmp_path: Path
) -> Iterator[tuple[Settings, Topology]]:
    """Settings on a Redis Cluster or behind Sentinel, the indices set up. No coalescing
    window: each search is its own alert, so that "every alert, once" counts searches."""
    settings = make_settings(elasticsearch_url, coalesce_seconds=0.0)
    with contextlib.ExitStack() as stack:
        if request.param == "cluster":
            nodes = stack.enter_context(redis_cluster(tmp_path))
            key = f"percolert:{{{settings.index_prefix}}}:meta"  # every key is in its slot
            topology = Topology(nodes.url, lambda: nodes.kill_primary(key))
        else:
            sentinels = stack.enter_context(redis_sentinels(tmp_path))
            topology = Topology(sentinels.url, sentinels.kill_primary)
        settings = msgspec.structs.replace(settings, redis_url=topology.url)
        prepare_indices(settings, catalog=SAMPLE_CATALOG)
        try:
            yield settings, topology
        finally:
            asyncio.run(delete_indices(settings))


async def test_the_primary_killed_mid_run_loses_no_alert_and_sends_none_twice(
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
            killed = anyio.Event()

            async def kill() -> None:
                await anyio.to_thread.run_sync(topology.kill_primary)
                killed.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(kill)
                # Searching throughout the failover, from both instances: answered while
                # the broker is down (their alerts wait), then alerting again.
                while not killed.is_set() or searched < 6:
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
            sockets = [page.socket for page in pages]
            assert await a.alerts_before_markers(sockets, b) == [[], []]


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
