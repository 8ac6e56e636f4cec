"""From catalog changes to product alerts: each change is percolated as a search event made
of the product (the same stored queries as searches, `audience="products"`), and what it
matched becomes, per owner and watch, one product alert of the run (a digest when several
products matched), written to the `product_alerts` index.

A run is one ingest or one admin request: `async with alerting.run() as run`, hand it the
changes with `run.changed(...)`; the alerts are written when the block ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio
from elasticsearch import AsyncElasticsearch

from percolert import indices
from percolert.catalog import Product
from percolert.messages import AlertWatch, ProductAlert, ProductCard
from percolert.percolator import FIELD_SEPARATOR, Match, Percolator, SearchEvent
from percolert.product_alerts import (
    CatalogChange,
    Positions,
    StoredProductAlert,
    max_seq,
    product_alert_id,
    store,
)
from percolert.settings import Settings

# A digest lists the first product and at most this many more; `total` counts them all.
DIGEST_MORE = 4
# Changes percolated in one request.
PERCOLATE_BATCH = 64


def product_event(product: Product, at: float) -> SearchEvent:
    """A product as the percolator sees a search: its text (fields kept apart) and what
    was "found": its category at its price."""
    text = FIELD_SEPARATOR.join(
        (product.product_name, product.brand, product.category, product.description)
    )
    return SearchEvent(text=text, searcher="", found=((product.category, product.price),), at=at)


def product_card(change: CatalogChange) -> ProductCard:
    product = change.product
    return ProductCard(
        sku=product.sku,
        product_name=product.product_name,
        price=product.price,
        previous_price=change.previous_price,
        category=product.category,
        brand=product.brand,
    )


class _Digest:
    """What one run found for one (owner, watch)."""

    def __init__(self, owner: str, match: Match, first: CatalogChange) -> None:
        self.owner = owner
        self.watch = AlertWatch(id=match.watch_id, terms=match.terms)
        self.first = first
        self.more: list[CatalogChange] = []
        self.total = 1

    def add(self, change: CatalogChange) -> None:
        self.total += 1
        if len(self.more) < DIGEST_MORE:
            self.more.append(change)


class ProductRun:
    """One run of changes: percolated as they come, alerts written at its end."""

    def __init__(self, alerting: ProductAlerting) -> None:
        self._alerting = alerting
        self._digests: dict[tuple[str, str], _Digest] = {}
        self.changes = 0
        # Product alerts the run wrote (known once it has ended).
        self.alerts = 0

    async def changed(self, changes: list[CatalogChange]) -> None:
        self.changes += len(changes)
        for start in range(0, len(changes), PERCOLATE_BATCH):
            batch = changes[start : start + PERCOLATE_BATCH]
            found = await self._alerting.percolate(batch)
            for change, matches in zip(batch, found, strict=True):
                for match in matches:
                    if match.owner is None:
                        continue  # not a candidate (audience filter); never alerts on products
                    key = (match.owner, match.watch_id)
                    digest = self._digests.get(key)
                    if digest is None:
                        self._digests[key] = _Digest(match.owner, match, change)
                    else:
                        digest.add(change)

    async def finish(self) -> None:
        self.alerts = await self._alerting.write(list(self._digests.values()))
        self._digests.clear()


class ProductAlerting:
    """Product alerts of one deployment: runs of changes in, alert documents out."""

    def __init__(
        self, client: AsyncElasticsearch, settings: Settings, percolator: Percolator
    ) -> None:
        self._client = client
        self._settings = settings
        self._percolator = percolator
        self._alerts_alias = indices.alias_for(settings, "product_alerts")
        self._positions: Positions | None = None
        self._lock = anyio.Lock()

    async def percolate(self, changes: list[CatalogChange]) -> list[list[Match]]:
        now = time.time()
        events = [product_event(change.product, now) for change in changes]
        return await self._percolator.percolate(events, audience="products")

    async def _take_positions(self, count: int) -> int:
        async with self._lock:
            if self._positions is None:
                self._positions = Positions(await max_seq(self._client, self._alerts_alias))
            return self._positions.take(count)

    async def write(self, digests: list[_Digest]) -> int:
        if not digests:
            return 0
        first = await self._take_positions(len(digests))
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        alerts = []
        for offset, digest in enumerate(digests):
            seq = first + offset
            alerts.append(
                StoredProductAlert(
                    user=digest.owner,
                    alert=ProductAlert(
                        id=product_alert_id(seq, digest.watch.id),
                        seq=seq,
                        watch=digest.watch,
                        change=digest.first.change,
                        product=product_card(digest.first),
                        at=at,
                        total=digest.total,
                        more=[product_card(change) for change in digest.more],
                    ),
                )
            )
        return await store(self._client, self._alerts_alias, alerts)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[ProductRun]:
        """A run: its alerts are written when the block ends without an error."""
        run = ProductRun(self)
        yield run
        await run.finish()
