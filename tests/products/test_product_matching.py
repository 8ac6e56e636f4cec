"""Catalog changes percolated against the watches that store searches' queries: who gets a
product alert. Real node; the changes are handed to a run as change detection would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import Notify, ProductChange, Watch, WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.products.alerts import CatalogChange, StoredProductAlert
from percolert.products.catalog import Product
from percolert.products.matching import ProductAlerting, ProductRun, product_event
from percolert.watches.percolator import Match, Percolator, SearchEvent
from percolert.watches.store import WatchStore
from tests.servers import metric
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

DAY = 86_400.0


async def _ignore(found: list[tuple[SearchEvent, list[Match]]]) -> None:
    pass


def kindle(price: float, sku: str = "kindle-1", **fields: str) -> Product:
    product = Product(
        sku=sku,
        product_name="Kindle Paperwhite",
        description="Waterproof e-reader",
        price=price,
        category="e-readers",
        brand="Amazon",
    )
    return msgspec.structs.replace(product, **fields)


def new(product: Product) -> CatalogChange:
    return CatalogChange(change="new", product=product)


def drop(previous: float, price: float, sku: str = "kindle-1") -> CatalogChange:
    return CatalogChange(change="price_drop", product=kindle(price, sku), previous_price=previous)


class World:
    """One deployment's indices on the real node: its watches, and product alerting."""

    def __init__(self, client: AsyncElasticsearch, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        normalizer = TextNormalizer()
        alias = indices.alias_for(settings, "watches")
        self.watches = WatchStore(client, alias, normalizer, max_per_user=500)
        self.percolator = Percolator(client, alias, normalizer, _ignore)
        self.alerting = ProductAlerting(client, settings, self.percolator)

    async def watch(
        self,
        owner: str | None,
        terms: str,
        *,
        max_price: float | None = None,
        notify: Notify = "both",
        phrase: bool = False,
        category: str | None = None,
    ) -> Watch:
        spec = WatchSpec(
            terms=terms, phrase=phrase, category=category, max_price=max_price, notify=notify
        )
        return await self.watches.add(owner, spec)

    async def run(
        self, *changes: CatalogChange, alerting: ProductAlerting | None = None
    ) -> ProductRun:
        async with (alerting or self.alerting).run() as run:
            await run.changed(list(changes))
        return run

    async def alerts(self) -> list[StoredProductAlert]:
        """Every product alert written, oldest first."""
        alias = indices.alias_for(self.settings, "product_alerts")
        await self.client.indices.refresh(index=alias)
        found = await self.client.search(index=alias, size=1000, sort=["seq"])
        return [StoredProductAlert.from_source(hit["_source"]) for hit in found["hits"]["hits"]]

    async def count(self, name: str) -> int:
        alias = indices.alias_for(self.settings, name)
        await self.client.indices.refresh(index=alias)
        return int((await self.client.count(index=alias))["count"])


@asynccontextmanager
async def world(settings: Settings) -> AsyncIterator[World]:
    client = es.create_client(settings)
    try:
        await indices.setup(client, settings)
        yield World(client, settings)
    finally:
        await client.close()


def told(alerts: list[StoredProductAlert]) -> list[tuple[str, str, ProductChange, str]]:
    return [(s.user, s.alert.watch.id, s.alert.change, s.alert.product.sku) for s in alerts]


async def test_a_new_product_alerts_the_owner_of_a_matching_watch_only(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        a = await w.watch("alice", "kindle", max_price=150)
        await w.watch("bob", "headphones")
        run = await w.run(new(kindle(129.0)))
        assert run.alerts == 1
        assert told(await w.alerts()) == [("alice", a.id, "new", "kindle-1")]
        # Over alice's max price: nobody.
        run = await w.run(new(kindle(179.0, "kindle-2")))
        assert run.alerts == 0
        assert len(await w.alerts()) == 1
        assert (w.alerting.changes_percolated, w.alerting.alerts_written) == (2, 1)


async def test_a_price_drop_under_the_max_price_tells_both_prices(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        a = await w.watch("alice", "kindle", max_price=150)
        await w.run(drop(199.0, 179.0))  # still over 150
        assert await w.alerts() == []
        await w.run(drop(179.0, 139.0))
        [stored] = await w.alerts()
        assert (stored.user, stored.alert.watch.id, stored.alert.change) == (
            "alice",
            a.id,
            "price_drop",
        )
        assert (stored.alert.product.previous_price, stored.alert.product.price) == (179.0, 139.0)


async def test_a_watch_without_max_price_hears_of_big_enough_drops_only(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        await w.watch("carol", "kindle")
        assert fresh_settings.price_drop_min_percent == 5.0
        assert (await w.run(drop(100.0, 97.0))).alerts == 0  # 3 %
        assert (await w.run(drop(100.0, 95.01))).alerts == 0  # just under 5 %
        # The small drops left no notice: this one is news.
        assert (await w.run(drop(100.0, 90.0))).alerts == 1  # 10 %
        assert (await w.run(drop(200.0, 190.0, "kindle-2"))).alerts == 1  # exactly 5 %
        assert [s.alert.product.price for s in await w.alerts()] == [90.0, 190.0]


async def test_one_product_alerts_one_watch_at_most_once_per_interval(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        await w.watch("carol", "kindle")
        dave = await w.watch("dave", "paperwhite")
        assert (await w.run(drop(100.0, 90.0))).alerts == 2
        assert (await w.run(drop(100.0, 90.0))).alerts == 0  # the same drop again
        assert (await w.run(drop(90.0, 80.0))).alerts == 0  # another drop, same day
        back = CatalogChange(change="back_in_stock", product=kindle(80.0))
        assert (await w.run(back)).alerts == 0
        # Another product is news; a watch new to this one too.
        assert (await w.run(drop(100.0, 90.0, "kindle-2"))).alerts == 2
        erin = await w.watch("erin", "kindle waterproof")
        run = await w.run(drop(80.0, 70.0))
        assert told(await w.alerts())[-1:] == [("erin", erin.id, "price_drop", "kindle-1")]
        assert run.alerts == 1
        # Once the interval has passed, the same product alerts again.
        later = ProductAlerting(
            w.client,
            fresh_settings,
            w.percolator,
            clock=lambda: time.time() + fresh_settings.product_alert_min_interval_seconds + 60,
        )
        run = await w.run(drop(70.0, 60.0), alerting=later)
        assert run.alerts == 3
        assert dave.id in {s.alert.watch.id for s in await w.alerts()}


async def test_a_drop_crossing_the_max_price_alerts_again_within_the_interval(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        await w.watch("alice", "kindle", max_price=150)
        assert (await w.run(drop(149.0, 140.0))).alerts == 1
        assert (await w.run(drop(140.0, 130.0))).alerts == 0  # under the max already
        # (the price went back up meanwhile, which is no event)
        assert (await w.run(drop(179.0, 139.0))).alerts == 1  # crosses 150
        assert [
            (s.alert.product.previous_price, s.alert.product.price) for s in await w.alerts()
        ] == [
            (149.0, 140.0),
            (179.0, 139.0),
        ]


async def test_a_new_product_is_news_but_a_drop_soon_after_is_not(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        await w.watch("carol", "kindle")
        await w.watch("carol", "amazon")
        assert (await w.run(new(kindle(100.0)))).alerts == 2
        assert await w.count("product_notices") == 1  # a document per sku
        assert (await w.run(drop(100.0, 80.0))).alerts == 0


async def test_300_products_matching_one_watch_in_one_run_make_one_digest(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        a = await w.watch("alice", "kindle", max_price=150)
        b = await w.watch("bob", "paperwhite")
        changes = [new(kindle(100.0 + n / 10, f"kindle-{n:03d}")) for n in range(300)]
        changes.insert(150, drop(140.0, 120.0, "kindle-999"))
        before = w.percolator.batches
        run = await w.run(*changes)
        assert w.percolator.batches - before == 5  # 301 changes, 64 a request
        assert run.alerts == 2
        assert run.changes == 301
        # What the run keeps to recognise a product seen again is what its digests list,
        # not every product it took (a large ingest changes millions).
        assert run.skus_listed == 5
        alerts = {s.user: s.alert for s in await w.alerts()}
        assert (alerts["alice"].watch.id, alerts["bob"].watch.id) == (a.id, b.id)
        for alert in alerts.values():
            assert alert.total == 301
            assert alert.change == "new"
            assert alert.product.sku == "kindle-000"
            assert [card.sku for card in alert.more] == [f"kindle-{n:03d}" for n in range(1, 5)]
        # Every product of the digest counts as told, to each watch.
        assert await w.count("product_notices") == 301
        notices = indices.alias_for(fresh_settings, "product_notices")
        notice = await w.client.get(index=notices, id="kindle-299")
        [told] = notice["_source"]["told"].values()  # one run: one moment
        assert set(told.split()) == {a.id, b.id}
        assert (await w.run(drop(129.9, 100.0, "kindle-299"))).alerts == 0


async def test_a_run_holding_many_notices_writes_them_as_it_goes(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        await w.watch("carol", "kindle")
        await w.watch("dave", "paperwhite")
        alerting = ProductAlerting(
            w.client, fresh_settings, w.percolator, batch_size=1, notices_held=1
        )
        async with alerting.run() as run:
            await run.changed([drop(100.0, 90.0), new(kindle(90.0, "kindle-2"))])
            assert await w.count("product_notices") == 2  # before the run's end
            await run.changed([drop(90.0, 80.0)])  # told earlier in this run
        assert run.alerts == 2
        assert {s.alert.total for s in await w.alerts()} == {2}


async def test_a_failed_percolation_fails_the_run_with_its_own_error(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        await w.watch("carol", "kindle")
        # Nothing listens there: every percolate request fails to connect.
        unreachable = msgspec.structs.replace(
            fresh_settings, elasticsearch_url="http://127.0.0.1:9"
        )
        dead = es.create_client(unreachable)
        try:
            percolator = Percolator(
                dead, indices.alias_for(fresh_settings, "watches"), TextNormalizer(), _ignore
            )
            alerting = ProductAlerting(w.client, fresh_settings, percolator, batch_size=1)
            with pytest.raises(TransportError):
                async with alerting.run() as run:
                    await run.changed([new(kindle(90.0)), new(kindle(90.0, "kindle-2"))])
        finally:
            await dead.close()
        assert await w.alerts() == []


async def test_a_digest_counts_a_product_once(fresh_settings: Settings) -> None:
    async with world(fresh_settings) as w:
        await w.watch("alice", "kindle", max_price=150)
        # kindle-1 matches twice in the run: a crossing drop after its price rose again.
        run = await w.run(drop(149.0, 140.0), new(kindle(120.0, "kindle-2")), drop(179.0, 139.0))
        assert run.alerts == 1
        [stored] = await w.alerts()
        assert stored.alert.total == 2
        assert (stored.alert.product.sku, stored.alert.product.price) == ("kindle-1", 139.0)
        assert [card.sku for card in stored.alert.more] == ["kindle-2"]


async def test_watches_of_searches_only_and_default_watches_hear_of_no_product(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        await w.watch("sam", "kindle", notify="searches")
        await w.watch(None, "kindle")  # a default watch, for everyone
        assert (await w.run(new(kindle(100.0)), drop(100.0, 50.0, "kindle-2"))).alerts == 0
        pat = await w.watch("pat", "kindle", notify="products")
        run = await w.run(new(kindle(100.0, "kindle-3")))
        assert told(await w.alerts()) == [("pat", pat.id, "new", "kindle-3")]
        assert run.alerts == 1
        # The percolator path itself: neither is a candidate for products.
        [matches] = await w.alerting.percolate([new(kindle(100.0))])
        assert [match.owner for match in matches] == ["pat"]


async def test_a_watch_matches_a_product_as_it_matches_a_search(
    fresh_settings: Settings,
) -> None:
    async with world(fresh_settings) as w:
        product = kindle(
            100.0, product_name="Paperwhite Kindle", description="Waterproof e-readers"
        )
        priced = await w.watch("u8", "kindle", category="e-readers", max_price=100)
        expected = {
            # every word, anywhere in name, brand, category, description, stemmed
            await w.watch("u1", "kindle amazon waterproof reader"): True,
            await w.watch("u2", "KINDLES"): True,
            await w.watch("u3", "kindle headphones"): False,
            # a phrase within one field, never across two
            await w.watch("u4", "paperwhite kindle", phrase=True): True,
            await w.watch("u5", "kindle amazon", phrase=True): False,
            # the category equal to the product's, the price at or under the max
            await w.watch("u6", "kindle", category="e-readers"): True,
            await w.watch("u7", "kindle", category="tablets"): False,
            priced: True,
            await w.watch("u9", "kindle", category="e-readers", max_price=99.99): False,
            await w.watch("u10", "kindle", max_price=99.99): False,
        }
        [matches] = await w.alerting.percolate([new(product)])
        assert {match.watch_id for match in matches} == {
            watch.id for watch, matched in expected.items() if matched
        }
        # The watch's max price comes with its match (for the price-drop rule).
        assert {m.watch_id: m.max_price for m in matches}[priced.id] == 100.0


async def test_expired_product_alerts_and_notices_are_pruned(fresh_settings: Settings) -> None:
    async with world(fresh_settings) as w:
        await w.watch("alice", "kindle")

        def days_ago(days: float) -> Callable[[], float]:
            return lambda: time.time() - days * DAY

        retention = fresh_settings.product_alert_retention_days
        old = ProductAlerting(w.client, fresh_settings, w.percolator, clock=days_ago(retention + 1))
        recent = ProductAlerting(w.client, fresh_settings, w.percolator, clock=days_ago(1.5))
        await w.run(new(kindle(100.0, "old")), alerting=old)
        await w.run(new(kindle(100.0, "recent")), alerting=recent)
        await w.run(new(kindle(100.0, "now")))
        assert await w.count("product_alerts") == 3
        assert await w.count("product_notices") == 3
        await w.alerting.prune()

        async def pruned() -> bool:
            return (await w.count("product_alerts"), await w.count("product_notices")) == (2, 1)

        await wait_until(pruned, timeout=20, what="expired alerts and notices deleted")
        assert {s.alert.product.sku for s in await w.alerts()} == {"recent", "now"}
        # The prune waited for its deletions: no task result of them is left in `.tasks`.
        await w.client.indices.refresh(index=".tasks", ignore_unavailable=True)
        leftovers = await w.client.search(
            index=".tasks",
            query={"match_phrase": {"task.description": fresh_settings.index_prefix}},
            ignore_unavailable=True,
            size=0,
        )
        assert leftovers["hits"]["total"]["value"] == 0


def test_product_alerting_is_measured_by_the_server(server: str) -> None:
    assert metric(server, "percolert_product_alerts_written_total") >= 0
    assert metric(server, "percolert_product_changes_percolated_total") >= 0


async def test_a_product_many_shoppers_watch_alerts_every_one_of_them(
    fresh_settings: Settings,
) -> None:
    """More matching watches than one percolation answer holds (a search stops there): a
    catalog change reads on, page after page, until every owner has their alert."""
    async with world(fresh_settings) as w:
        for n in range(12):
            await w.watch(f"shopper-{n}", "kindle")
        percolator = Percolator(
            w.client, indices.alias_for(fresh_settings, "watches"), TextNormalizer(), _ignore
        )
        paged = Percolator(
            w.client,
            indices.alias_for(fresh_settings, "watches"),
            TextNormalizer(),
            _ignore,
            max_matches=5,  # pages of 5: 5, 5, 2
        )
        event = product_event(kindle(99.0), time.time())
        [whole] = await percolator.percolate([event], audience="products")
        [read_on] = await paged.percolate([event], audience="products")
        assert sorted(match.owner or "" for match in read_on) == sorted(
            match.owner or "" for match in whole
        )
        assert len(whole) == 12
        run = await w.run(
            new(kindle(99.0)), alerting=ProductAlerting(w.client, fresh_settings, paged)
        )
        assert run.alerts == 12
