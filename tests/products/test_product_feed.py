"""Product alerts reaching shoppers: live on each open socket of the recipient (the server
tails the `product_alerts` index), or, for a shopper who was away, once in the `away` of
the next greeting across their tabs and reloads. Real node, real server, real sockets; the
alerts are written to the index as the product matching writes them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import AlertWatch, ProductAlert, ProductCard, ProductChange
from percolert.core.settings import Settings
from percolert.engine import es, indices
from percolert.products.alerts import StoredProductAlert, product_alert_id, store
from percolert.products.feed import PAGE, ProductFeed
from percolert.products.seen import SeenMarks
from percolert.realtime.hub import Connection, Hub
from percolert.web.middleware.sessions import SessionSigner, load_secret
from tests.conftest import delete_indices, make_settings, prepare_indices
from tests.netproxy import DroppableProxy
from tests.servers import metric, run_server
from tests.shoppers import Shopper, Socket
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def feed_settings(elasticsearch_url: str) -> Iterator[Settings]:
    settings = make_settings(elasticsearch_url, product_alert_poll_seconds=0.1)
    prepare_indices(settings)
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture(scope="module")
def server(feed_settings: Settings) -> Iterator[str]:
    with run_server(feed_settings) as url:
        yield url


class Writer:
    """Writes product alerts for users as the product matching does, each with a position
    above the last."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._last = 0

    def user_of(self, shopper: Shopper) -> str:
        return self.user_of_cookie(shopper.cookie)

    def user_of_cookie(self, cookie: str) -> str:
        verified = SessionSigner(load_secret(self.settings)).verify(cookie)
        assert verified is not None
        return verified[0]

    async def write(
        self,
        recipient: Shopper | str,
        names: list[str],
        *,
        at: datetime | None = None,
        previous_price: float | None = 179.0,
        more: tuple[str, ...] = (),
        seq: int | None = None,
        change: ProductChange = "price_drop",
    ) -> list[ProductAlert]:
        """Price drops of products named `names` for `recipient` (a shopper, or a user id);
        with `more`, each a digest listing products of those names besides; `seq`: the
        first one's position, as a writer that numbered them earlier would have."""
        user = recipient if isinstance(recipient, str) else self.user_of(recipient)
        stamp = (at or datetime.now(UTC)).isoformat(timespec="milliseconds")
        alerts = []
        given = seq
        for offset, name in enumerate(names):
            if given is None:
                seq = self._last = max(time.time_ns() // 1000, self._last + 1)
            else:
                seq = given + offset
            alerts.append(
                ProductAlert(
                    id=product_alert_id(seq, "w-1"),
                    seq=seq,
                    watch=AlertWatch(id="w-1", terms="kindle"),
                    change=change,
                    product=ProductCard(
                        sku=f"sku-{seq}",
                        product_name=name,
                        price=129.0,
                        previous_price=previous_price,
                        category="electronics",
                        brand="Amazon",
                    ),
                    at=stamp,
                    total=1 + len(more),
                    more=[
                        ProductCard(
                            sku=f"sku-{seq}-{n}",
                            product_name=other,
                            price=99.0,
                            category="electronics",
                            brand="Amazon",
                        )
                        for n, other in enumerate(more)
                    ],
                )
            )
        client = es.create_client(self.settings)
        try:
            alias = indices.alias_for(self.settings, "product_alerts")
            await store(
                client, alias, [StoredProductAlert(user=user, alert=alert) for alert in alerts]
            )
        finally:
            await client.close()
        return alerts


@pytest.fixture
def writer(feed_settings: Settings) -> Writer:
    return Writer(feed_settings)


async def product_alerts_until(socket: Socket, alert_id: str) -> list[dict[str, Any]]:
    """The product alerts `socket` receives up to and including the one with `alert_id`."""
    received: list[dict[str, Any]] = []
    while (message := await socket.receive(timeout=10)) is not None:
        if message["type"] == "product_alert":
            received.append(message)
            if message["id"] == alert_id:
                return received
    raise AssertionError(f"product alert {alert_id} never came; got {received}")


def ids(alerts: list[dict[str, Any]]) -> list[str]:
    return [alert["id"] for alert in alerts]


async def test_a_live_product_alert_reaches_each_socket_of_its_owner_once_and_no_one_else(
    server: str, writer: Writer
) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        tabs = [await a.connect(), await a.connect()]
        other = await b.connect()
        [alert] = await writer.write(a, ["Kindle Paperwhite"])
        [first_marker] = await writer.write(a, ["marker one"])
        for tab in tabs:
            received = await product_alerts_until(tab, first_marker.id)
            assert ids(received) == [alert.id, first_marker.id]
            assert received[0] == msgspec.to_builtins(alert)
        # Written after the tail passed the first marker: a tail that sent something again
        # would send it again before this one.
        [second_marker] = await writer.write(a, ["marker two"])
        for tab in tabs:
            assert ids(await product_alerts_until(tab, second_marker.id)) == [second_marker.id]
        [b_marker] = await writer.write(b, ["marker of b"])
        assert ids(await product_alerts_until(other, b_marker.id)) == [b_marker.id]
        for socket in [*tabs, other]:
            assert socket.hello["away"] is None


async def test_an_alert_made_while_away_is_shown_once_across_tabs_and_a_reload(
    server: str, writer: Writer
) -> None:
    async with Shopper(server) as a:
        [alert] = await writer.write(a, ["Kindle Oasis"])
        first = await a.connect()
        assert first.hello["away"] == {"alerts": [msgspec.to_builtins(alert)], "more": 0}
        second = await a.connect()
        assert second.hello["away"] is None
        await first.close()
        reloaded = await a.connect()
        assert reloaded.hello["away"] is None
        # Nor does it come live afterwards: the next one is the first either tab receives.
        [marker] = await writer.write(a, ["marker"])
        for tab in (second, reloaded):
            assert ids(await product_alerts_until(tab, marker.id)) == [marker.id]


async def test_away_lists_the_ten_newest_first_and_counts_the_rest(
    server: str, writer: Writer
) -> None:
    async with Shopper(server) as a:
        alerts = await writer.write(a, [f"Kindle {n}" for n in range(13)])
        tab = await a.connect()
        away = tab.hello["away"]
        assert [alert["seq"] for alert in away["alerts"]] == [
            alert.seq for alert in reversed(alerts[3:])
        ]
        assert away["more"] == 3


async def test_away_leaves_out_alerts_older_than_the_retention(server: str, writer: Writer) -> None:
    async with Shopper(server) as a:
        await writer.write(a, ["Kindle of long ago"], at=datetime.now(UTC) - timedelta(days=31))
        [recent] = await writer.write(a, ["Kindle of today"])
        tab = await a.connect()
        assert ids(tab.hello["away"]["alerts"]) == [recent.id]
        assert tab.hello["away"]["more"] == 0


async def test_an_alert_shown_live_is_not_repeated_in_a_later_greeting(
    server: str, writer: Writer
) -> None:
    async with Shopper(server) as a:
        tab = await a.connect()
        [alert] = await writer.write(a, ["Kindle Scribe"])
        assert ids(await product_alerts_until(tab, alert.id)) == [alert.id]
        assert (await a.connect()).hello["away"] is None
        await tab.close()
        assert (await a.connect()).hello["away"] is None


async def test_two_instances_each_deliver_to_the_sockets_they_hold(
    feed_settings: Settings, redis_url: str, writer: Writer
) -> None:
    settings = msgspec.structs.replace(feed_settings, redis_url=redis_url)
    with run_server(settings) as one, run_server(settings) as two:
        async with Shopper(one) as a:
            tabs = [await a.connect(), await a.connect(base_url=two)]
            [alert] = await writer.write(a, ["Kindle Paperwhite Kids"])
            [marker] = await writer.write(a, ["marker"])
            for tab in tabs:
                assert ids(await product_alerts_until(tab, marker.id)) == [alert.id, marker.id]
            assert (await a.connect(base_url=two)).hello["away"] is None
            assert metric(one, "percolert_product_alerts_sent_total") == 2
            assert metric(two, "percolert_product_alerts_sent_total") == 2


async def test_elasticsearch_unreachable_means_no_away_and_the_tail_resumes(
    feed_settings: Settings, writer: Writer
) -> None:
    """The server reaches Elasticsearch through a proxy the test cuts: a greeting then has
    no `away` (the socket opens all the same), the tail keeps failing without stopping, and
    when the cluster is back an alert written meanwhile reaches the open socket."""
    es_port = int(feed_settings.elasticsearch_url.rsplit(":", 1)[1])
    proxy = DroppableProxy(es_port)
    settings = msgspec.structs.replace(
        feed_settings, elasticsearch_url=proxy.url, elasticsearch_timeout=1.0
    )
    try:
        with run_server(settings) as server:
            async with Shopper(server) as a:
                proxy.drop()
                failures = metric(server, "percolert_product_feed_failures_total")
                tab = await a.connect()
                assert tab.hello["away"] is None
                [alert] = await writer.write(a, ["Kindle during the outage"])
                await wait_until(
                    lambda: metric(server, "percolert_product_feed_failures_total") > failures,
                    what="the tail to fail",
                )
                proxy.restore()
                assert ids(await product_alerts_until(tab, alert.id)) == [alert.id]
    finally:
        proxy.close()


async def test_a_stored_alert_that_does_not_decode_is_skipped_not_fatal(
    server: str, writer: Writer, feed_settings: Settings
) -> None:
    async def write_broken(user: str) -> None:
        client = es.create_client(feed_settings)
        try:
            seq = time.time_ns() // 1000
            await client.index(
                index=indices.alias_for(feed_settings, "product_alerts"),
                id=product_alert_id(seq, "w-broken"),
                document={
                    "user": user,
                    "seq": seq,
                    "at": datetime.now(UTC).isoformat(),
                    "alert": {"from": "a writer of another format"},
                },
                refresh="wait_for",
            )
        finally:
            await client.close()

    async with Shopper(server) as a:
        await write_broken(writer.user_of(a))
        [waiting] = await writer.write(a, ["Kindle Colorsoft"])
        tab = await a.connect()
        assert ids(tab.hello["away"]["alerts"]) == [waiting.id]
        assert tab.hello["away"]["more"] == 0
        await write_broken(writer.user_of(a))
        [live] = await writer.write(a, ["Kindle Basic"])
        assert ids(await product_alerts_until(tab, live.id)) == [live.id]


@asynccontextmanager
async def tail_for(
    feed_settings: Settings, user: str
) -> AsyncIterator[tuple[AsyncElasticsearch, ProductFeed, list[str]]]:
    """A running product feed of its own, polling only once an hour (so that only `wake`
    makes it look), with one socket of `user` whose sent texts are listed."""
    settings = msgspec.structs.replace(feed_settings, product_alert_poll_seconds=3600.0)
    client = es.create_client(settings)
    hub = Hub()
    feed = ProductFeed(
        client, settings, hub, SeenMarks(client, indices.alias_for(settings, "product_seen"))
    )
    received: list[str] = []

    async def send_text(text: str) -> None:
        received.append(text)

    connection = Connection(user, send_text, 16)
    hub.add(connection)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed.run)
            tasks.start_soon(connection.write, tasks.cancel_scope)
            await wait_until(lambda: feed.started, what="the tail to start")
            yield client, feed, received
            tasks.cancel_scope.cancel()
    finally:
        await client.close()


async def test_wake_makes_the_tail_look_at_once(feed_settings: Settings, writer: Writer) -> None:
    """A writer in the same process (the admin API) wakes the tail: its alert goes out
    without waiting for the next poll, here an hour away."""
    async with tail_for(feed_settings, "wakeful-user") as (_, feed, received):
        [alert] = await writer.write("wakeful-user", ["Kindle Paperwhite"])
        feed.wake()
        await wait_until(lambda: received, what="the alert to be sent")
        assert [json.loads(text)["id"] for text in received] == [alert.id]


async def test_a_burst_larger_than_a_page_of_the_tail_is_read_through(
    server: str, writer: Writer
) -> None:
    """An ingest's many alerts for others, then one for A within the same poll: the tail
    pages through them all (in position order) and A's arrives, once."""
    async with Shopper(server) as a:
        tab = await a.connect()
        await writer.write("someone-away", [f"Kindle {n}" for n in range(PAGE + 500)])
        [alert] = await writer.write(a, ["Kindle Paperwhite"])
        [marker] = await writer.write(a, ["marker"])
        assert ids(await product_alerts_until(tab, marker.id)) == [alert.id, marker.id]


async def test_an_alert_visible_after_a_later_numbered_one_is_still_sent_once(
    server: str, writer: Writer
) -> None:
    """Two writers: the one that numbered its alert first finishes writing it last. The
    tail reads below the highest position it has seen, so that alert is sent too, once."""
    async with Shopper(server) as a:
        tab = await a.connect()
        numbered_first = time.time_ns() // 1000
        [later] = await writer.write(a, ["Kindle Oasis"])
        assert ids(await product_alerts_until(tab, later.id)) == [later.id]
        [earlier] = await writer.write(a, ["Kindle Scribe"], seq=numbered_first)
        assert earlier.seq < later.seq
        assert ids(await product_alerts_until(tab, earlier.id)) == [earlier.id]
        [marker] = await writer.write(a, ["marker"])
        assert ids(await product_alerts_until(tab, marker.id)) == [marker.id]


async def test_tabs_greeted_at_once_show_what_was_missed_in_one_of_them(
    server: str, writer: Writer
) -> None:
    async with Shopper(server) as a:
        [alert] = await writer.write(a, ["Kindle Kids"])
        tabs = await asyncio.gather(*(a.connect() for _ in range(5)))
        aways = [tab.hello["away"] for tab in tabs if tab.hello["away"] is not None]
        assert aways == [{"alerts": [msgspec.to_builtins(alert)], "more": 0}]


@pytest.fixture
def quiet_settings(elasticsearch_url: str) -> Iterator[Settings]:
    """A deployment of its own: no other test's alerts in its window."""
    settings = make_settings(elasticsearch_url)
    prepare_indices(settings)
    yield settings
    asyncio.run(delete_indices(settings))


async def test_an_old_burst_is_not_read_again_at_every_poll(quiet_settings: Settings) -> None:
    """A large ingest's alerts, numbered longer ago than any write takes to become visible,
    are no longer in the tail's window: a poll is one search, not a page per thousand of
    them, however long no later alert comes."""
    settings = quiet_settings
    client = es.create_client(settings)
    alias = indices.alias_for(settings, "product_alerts")
    try:
        writer = Writer(settings)
        numbered = time.time_ns() // 1000 - 2 * 60_000_000  # two minutes ago
        await writer.write("someone-away", [f"Kindle {n}" for n in range(2 * PAGE)], seq=numbered)
        feed = ProductFeed(
            client, settings, Hub(), SeenMarks(client, indices.alias_for(settings, "product_seen"))
        )

        async def searches() -> int:
            stats = await client.indices.stats(index=alias, metric="search")
            return int(stats["_all"]["primaries"]["search"]["query_total"])

        await feed.tick()  # the start
        before = await searches()
        for _ in range(3):
            await feed.tick()
        assert await searches() - before == 3
    finally:
        await client.close()


@pytest.mark.parametrize("open_meanwhile", [False, True], ids=["on-return", "live"])
async def test_an_alert_visible_after_a_greeting_moved_the_mark_past_it_is_still_shown(
    server: str, writer: Writer, open_meanwhile: bool
) -> None:
    """Another writer's alert, numbered before one a greeting showed but visible only
    after it: shown once, live on the open socket or on return."""
    async with Shopper(server) as a:
        numbered_first = time.time_ns() // 1000
        [later] = await writer.write(a, ["Kindle Oasis"])
        tab = await a.connect()
        assert ids(tab.hello["away"]["alerts"]) == [later.id]
        if not open_meanwhile:
            await tab.close()
        [earlier] = await writer.write(a, ["Kindle Scribe"], seq=numbered_first)
        if open_meanwhile:
            assert ids(await product_alerts_until(tab, earlier.id)) == [earlier.id]
            await tab.close()
        returned = await a.connect()
        away = returned.hello["away"]
        assert (away is None) if open_meanwhile else (ids(away["alerts"]) == [earlier.id])
        assert (await a.connect()).hello["away"] is None


async def test_more_alerts_at_one_position_than_a_page_are_all_read(
    feed_settings: Settings,
) -> None:
    """One run's alerts may share a position; more of them than a page of the tail still
    reach their owners, the last one written included."""

    def alert(seq: int, watch: str) -> ProductAlert:
        return ProductAlert(
            id=product_alert_id(seq, watch),
            seq=seq,
            watch=AlertWatch(id=watch, terms="kindle"),
            change="new",
            product=ProductCard(
                sku="kindle-1", product_name="Kindle", price=99.0, category="e", brand="Amazon"
            ),
            at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            total=1,
        )

    async with tail_for(feed_settings, "tied-user") as (client, feed, received):
        seq = time.time_ns() // 1000
        others = [
            StoredProductAlert(user="someone-away", alert=alert(seq, f"w-{n}"))
            for n in range(PAGE + 200)
        ]
        mine = StoredProductAlert(user="tied-user", alert=alert(seq, "w-mine"))
        alias = indices.alias_for(feed_settings, "product_alerts")
        await store(client, alias, [*others, mine])
        feed.wake()
        await wait_until(lambda: received, what="the owner's alert to be sent")
        assert [json.loads(text)["id"] for text in received] == [mine.alert.id]
