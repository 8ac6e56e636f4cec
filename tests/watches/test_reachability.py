"""Search percolation verifies only watches whose owners are leased as reachable
(reachability.py): a connecting user's watches are leased before their hello, leases are
renewed while a socket stays open and lapse after it closes, a connect storm is one flush,
and product percolation still reaches every owner."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import anyio
import msgspec
import pytest

from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.watches.percolator import Match, Percolator, SearchEvent
from percolert.watches.reachability import lease_until
from percolert.watches.store import WatchStore
from tests.conftest import SAMPLE_CATALOG, prepare_indices
from tests.netproxy import DroppableProxy
from tests.servers import metric, run_server
from tests.shoppers import Shopper, Socket
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


def fresh_word(stem: str) -> str:
    """A word no other watch or product has (letters only: it survives normalisation)."""
    return stem + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:10])


async def ignore(found: list[tuple[SearchEvent, list[Match]]]) -> None:
    pass


async def set_leases(settings: Settings, leases: dict[str, str]) -> None:
    """Write `reachable_until` of these watches directly, as a lease long past would be."""
    client = es.create_client(settings)
    alias = indices.alias_for(settings, "watches")
    try:
        for watch_id, until in leases.items():
            await client.update(index=alias, id=watch_id, doc={"reachable_until": until})
        await client.indices.refresh(index=alias)
    finally:
        await client.close()


async def percolated(settings: Settings, text: str) -> dict[str, set[str]]:
    """The ids of the watches a search and a catalog change with `text` match."""
    client = es.create_client(settings)
    percolator = Percolator(
        client, indices.alias_for(settings, "watches"), TextNormalizer(), ignore
    )
    try:
        event = [SearchEvent(text=text, searcher="x")]
        [searches] = await percolator.percolate(event)
        [products] = await percolator.percolate(event, audience="products")
    finally:
        await client.close()
    return {
        "searches": {match.watch_id for match in searches},
        "products": {match.watch_id for match in products},
    }


async def test_search_percolation_verifies_only_leased_and_default_watches(
    fresh_settings: Settings,
) -> None:
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "watches")
    try:
        await indices.setup(client, fresh_settings)
        store = WatchStore(client, alias, TextNormalizer(), max_per_user=50)
        added = await store.add("alice", WatchSpec(terms="kindle"))  # leased: alice is here
        default = await store.add(None, WatchSpec(terms="kindle paperwhite"))
        # Owners away: bob's lease ended a minute ago, carol's watch came in bulk (no lease),
        # dave's lease runs a minute more.
        await store.add_many([("carol", WatchSpec(terms="kindle"))])
        bob = await store.add("bob", WatchSpec(terms="kindle"))
        dave = await store.add("dave", WatchSpec(terms="kindle"))
        [carol] = await store.owned_by("carol")
    finally:
        await client.close()
    await set_leases(fresh_settings, {bob.id: lease_until(-60), dave.id: lease_until(60)})
    found = await percolated(fresh_settings, "kindle paperwhite")
    assert found["searches"] == {added.id, default.id, dave.id}
    # Catalog changes reach every owner, leased or not (never a default watch).
    assert found["products"] == {added.id, bob.id, carol.id, dave.id}


@pytest.fixture
def lease_settings(fresh_settings: Settings) -> Settings:
    """A deployment of its own with a short grace and lease: renewals come every second."""
    settings = msgspec.structs.replace(
        fresh_settings, reconnect_grace_seconds=1.0, lease_slack_seconds=2.0, coalesce_seconds=0
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    return settings


async def test_a_connecting_user_is_leased_before_hello(
    server: str, catalog_settings: Settings
) -> None:
    word = fresh_word("lease")
    async with Shopper(server) as owner, Shopper(server) as searcher:
        watch = await owner.watch(word)
        # Away so long that the lease ended: searches no longer verify the watch.
        await set_leases(catalog_settings, {watch["id"]: lease_until(-60)})
        assert (await percolated(catalog_settings, word))["searches"] == set()
        socket = await owner.connect()
        # Right after the hello, the first search reaches the owner.
        await searcher.search(word)
        alert = await socket.next_alert()
        assert alert is not None
        assert alert["watch"]["id"] == watch["id"]


async def test_a_watch_added_through_the_api_is_matched_at_once(
    server: str, catalog_settings: Settings
) -> None:
    """A connected user's lease is known; a watch they add then carries a lease of its own,
    rather than waiting for the next renewal."""
    async with Shopper(server) as owner, Shopper(server) as searcher:
        socket = await owner.connect()
        word = fresh_word("added")
        watch = await owner.watch(word)
        assert (await percolated(catalog_settings, word))["searches"] == {watch["id"]}
        await searcher.search(word)
        alert = await socket.next_alert()
        assert alert is not None
        assert alert["watch"]["id"] == watch["id"]


async def test_a_connect_storm_is_leased_in_a_few_requests(
    server: str, catalog_settings: Settings
) -> None:
    word = fresh_word("storm")
    users = 60
    shoppers = [Shopper(server) for _ in range(users)]
    try:
        for shopper in shoppers:
            await shopper.__aenter__()
        watches = [await shopper.watch(word) for shopper in shoppers]
        await set_leases(catalog_settings, {watch["id"]: lease_until(-60) for watch in watches})
        before = {
            name: metric(server, f"percolert_{name}_total")
            for name in ("watch_lease_writes", "watch_lease_refreshes", "watch_leases_written")
        }
        sockets: list[Socket] = []

        async def connect(shopper: Shopper) -> None:
            sockets.append(await shopper.connect())

        async with anyio.create_task_group() as tasks:
            for shopper in shoppers:
                tasks.start_soon(connect, shopper)
        after = {name: metric(server, f"percolert_{name}_total") for name in before}
        # Every user leased; a renewal tick that lands in the storm may lease some of them a
        # second time (it reads before the arrivals' writes are visible): harmless, and
        # counted, so at least once each rather than exactly.
        assert after["watch_leases_written"] - before["watch_leases_written"] >= users
        # One flush for the first arrival, another for everyone who came meanwhile, ...
        assert after["watch_lease_writes"] - before["watch_lease_writes"] <= 6, after
        assert after["watch_lease_refreshes"] - before["watch_lease_refreshes"] <= 6, after
        async with Shopper(server) as searcher:
            await searcher.search(word)
        for socket in sockets:
            alert = await socket.next_alert()
            assert alert is not None
            assert alert["watch"]["terms"] == word
    finally:
        for shopper in shoppers:
            await shopper.__aexit__(None, None, None)


async def stored_lease(settings: Settings, watch_id: str) -> float:
    """Seconds left of a watch's lease."""
    client = es.create_client(settings)
    try:
        found = await client.get(index=indices.alias_for(settings, "watches"), id=watch_id)
    finally:
        await client.close()
    source: dict[str, Any] = found["_source"]
    return datetime.fromisoformat(source["reachable_until"]).timestamp() - time.time()


async def test_leases_are_renewed_while_connected_and_lapse_after(
    lease_settings: Settings,
) -> None:
    lease = lease_settings.reconnect_grace_seconds + lease_settings.lease_slack_seconds
    word = fresh_word("renew")
    with run_server(lease_settings) as server:
        async with Shopper(server) as owner, Shopper(server) as searcher:
            watch = await owner.watch(word)
            added = time.monotonic()
            socket = await owner.connect()
            # Past the lease the watch was added with: only renewals keep it.
            await wait_until(
                lambda: (
                    time.monotonic() - added > lease + 0.5
                    and metric(server, "percolert_watch_leases_written_total") >= 2
                ),
                timeout=30,
                what="renewals past the first lease",
            )
            assert await stored_lease(lease_settings, watch["id"]) > 0
            await searcher.search(word)
            alert = await socket.next_alert()
            assert alert is not None
            assert alert["watch"]["id"] == watch["id"]
            await socket.close()

            async def lapsed() -> bool:
                found = await percolated(lease_settings, word)
                return found == {"searches": set(), "products": {watch["id"]}}

            # Gone: the lease outlasts the grace, then search percolation drops the watch.
            await wait_until(lapsed, timeout=30, what="the lease to lapse")


async def test_elasticsearch_down_at_connect_still_opens_the_socket(
    lease_settings: Settings,
) -> None:
    """The lease is written once Elasticsearch is back (the renewal loop retries)."""
    port = int(lease_settings.elasticsearch_url.rsplit(":", 1)[1])
    proxy = DroppableProxy(port)
    settings = msgspec.structs.replace(
        lease_settings, elasticsearch_url=proxy.url, elasticsearch_timeout=1.0
    )
    word = fresh_word("down")
    try:
        with run_server(settings) as server:
            async with Shopper(server) as owner, Shopper(server) as searcher:
                watch = await owner.watch(word)
                await set_leases(lease_settings, {watch["id"]: lease_until(-60)})
                proxy.drop()
                started = time.monotonic()
                socket = await owner.connect()  # the hello came
                assert time.monotonic() - started < 4 * settings.elasticsearch_timeout
                assert metric(server, "percolert_watch_lease_failures_total") >= 1
                proxy.restore()
                await wait_until(
                    lambda: metric(server, "percolert_watch_leases_written_total") >= 1,
                    timeout=30,
                    what="the lease written once Elasticsearch is back",
                )
                await searcher.search(word)
                alert = await socket.next_alert()
                assert alert is not None
                assert alert["watch"]["id"] == watch["id"]
    finally:
        proxy.close()


async def test_refused_lease_writes_turn_the_lease_filter_off(lease_settings: Settings) -> None:
    """Elasticsearch refusing writes (a write block, as at the disk's flood stage) while it
    still answers searches: the leases of connected users run out unrenewed, so searches
    must percolate every watch until lease writes succeed again."""
    lease = lease_settings.reconnect_grace_seconds + lease_settings.lease_slack_seconds
    word = fresh_word("blocked")
    alias = indices.alias_for(lease_settings, "watches")
    client = es.create_client(lease_settings)
    with run_server(lease_settings) as server:
        async with Shopper(server) as owner, Shopper(server) as searcher:
            watch = await owner.watch(word)
            socket = await owner.connect()
            try:
                await client.indices.put_settings(
                    index=alias, settings={"index.blocks.write": True}
                )
                blocked = time.monotonic()
                # Every lease written before the block has run out, and renewals failed.
                await wait_until(
                    lambda: (
                        time.monotonic() - blocked > lease + 0.5
                        and metric(server, "percolert_watch_lease_failures_total") >= 1
                    ),
                    timeout=30,
                    what="the leases to run out under refused renewals",
                )
                assert (await percolated(lease_settings, word))["searches"] == set()
                await searcher.search(word)
                alert = await socket.next_alert()
                assert alert is not None
                assert alert["watch"]["id"] == watch["id"]
            finally:
                await client.indices.put_settings(
                    index=alias, settings={"index.blocks.write": None}
                )
                await client.close()
            await socket.close()
