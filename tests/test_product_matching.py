"""Catalog changes percolated against the watches that store searches' queries: who gets a
product alert. Real node; the changes are handed to a run as change detection would."""

from __future__ import annotations

import pytest

from percolert import es, indices
from percolert.catalog import Product
from percolert.messages import WatchSpec
from percolert.percolator import Match, Percolator, SearchEvent
from percolert.product_alerts import CatalogChange, StoredProductAlert
from percolert.product_matching import ProductAlerting
from percolert.settings import Settings
from percolert.text import TextNormalizer
from percolert.watches import WatchStore

pytestmark = pytest.mark.anyio


async def _ignore(found: list[tuple[SearchEvent, list[Match]]]) -> None:
    pass


def kindle(price: float, sku: str = "kindle-1") -> Product:
    return Product(
        sku=sku,
        product_name="Kindle Paperwhite",
        description="Waterproof e-reader",
        price=price,
        category="electronics",
        brand="Amazon",
    )


async def test_a_new_product_alerts_the_owner_of_a_matching_watch_only(
    fresh_settings: Settings,
) -> None:
    client = es.create_client(fresh_settings)
    try:
        await indices.setup(client, fresh_settings)
        normalizer = TextNormalizer()
        watches = WatchStore(
            client, indices.alias_for(fresh_settings, "watches"), normalizer, max_per_user=50
        )
        a = await watches.add("alice", WatchSpec(terms="kindle", max_price=150))
        await watches.add("bob", WatchSpec(terms="headphones"))
        await watches.add(None, WatchSpec(terms="kindle"))  # default: never on products
        percolator = Percolator(
            client, indices.alias_for(fresh_settings, "watches"), normalizer, _ignore
        )
        alerting = ProductAlerting(client, fresh_settings, percolator)
        async with alerting.run() as run:
            await run.changed([CatalogChange(change="new", product=kindle(129.0))])
            await run.changed([CatalogChange(change="new", product=kindle(179.0, "kindle-2"))])
        assert run.alerts == 1
        found = await client.search(
            index=indices.alias_for(fresh_settings, "product_alerts"), size=10
        )
        stored = [StoredProductAlert.from_source(hit["_source"]) for hit in found["hits"]["hits"]]
        assert [(s.user, s.alert.watch.id, s.alert.product.sku) for s in stored] == [
            ("alice", a.id, "kindle-1")
        ]
    finally:
        await client.close()
