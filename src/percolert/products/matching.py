"""From catalog changes to product alerts: each change is percolated as a search event made
of the product (the same stored queries as searches, `audience="products"`), and what it
matched becomes, per owner and watch, one product alert of the run (a digest when several
products matched), written to the `product_alerts` index.

A run is one ingest or one admin request: `async with alerting.run() as run`, hand it the
changes with `run.changed(...)`; the alerts are written when the block ends.

Who hears of a change:
- The stored query decides the words (every one in the product's text, fields apart for a
  phrase), the category and `max_price`; the audience filter keeps default watches and
  watches that notify of searches only out. A product watch's query decides the product
  (its sku, whatever the words) and the changes it is on (watches/product_watch.py); the
  rules below apply to it as to any watch.
- A `price_drop` reaches a watch without `max_price` only when it is at least
  `price_drop_min_percent` of the previous price (a watch with one: the query already
  wants the new price at or under it).
- A `price_drop` or `back_in_stock` of one sku reaches one watch at most once per
  `product_alert_min_interval_seconds`, unless the drop crosses the watch's `max_price`
  (previous > max >= new: news the shopper asked for). A `new` product is always news, but
  counts as told (a drop soon after an arrival is not news again).

Notices (the `product_notices` index) remember which watches each sku alerted, and when:
one document per sku, `{at, price, told: {epoch ms: "watch id ..."}}` (`at`, `price`: its latest
notice). Per sku rather than per (watch, sku): a product matches hundreds of watches when
there are many (156 on average at 20k benchmark watches), and a document per pair made
writing the notices cost several times the percolation itself (bench/product_percolation.py).
Read with one `mget` per percolated batch (the batch's matched skus), written after the
run's alerts (so a run that fails to write its alerts does not silence the next one). A run
holding more than `NOTICES_HELD` (watch, sku) pairs writes them as it goes, to bound its
memory; should its alerts then fail to be written, those products stay quiet for one
interval. Expired entries are dropped when their document is written again; a document
whose latest notice expired is deleted by the retention loop. Two runs writing one sku's
notices at once may lose one's entries: at worst a watch hears of the product once more.

A digest (one alert per owner and watch and run) holds the first product that matched,
at most `DIGEST_MORE` more and the total, so a run's memory grows with the (owner, watch)
pairs it matched, not with the products. Its `change` is its first product's: `change` and
`product` describe one product exactly, and each card of `more` tells a drop by its
`previous_price`. A product matching a watch again in the same run (a crossing drop) updates
its card rather than counting twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from elastic_transport import TransportError
from elasticsearch import ApiError as ElasticsearchApiError
from elasticsearch import AsyncElasticsearch

from percolert.core.exception_groups import first_error
from percolert.core.messages import AlertWatch, ProductAlert, ProductCard, ProductChange
from percolert.core.settings import Settings
from percolert.core.times import iso_from_seconds, seconds_from_iso
from percolert.engine import es, indices
from percolert.products.alerts import (
    CatalogChange,
    Positions,
    StoredProductAlert,
    max_seq,
    product_alert_id,
    store,
    write_all,
)
from percolert.products.catalog import Product
from percolert.watches.percolator import FIELD_SEPARATOR, Match, Percolator, SearchEvent

logger = logging.getLogger(__name__)

# A digest lists the first product and at most this many more; `total` counts them all.
DIGEST_MORE = 4
# Changes percolated in one request, and requests in flight at once for one run. Measured
# (bench/product_percolation.py, 5k changes against 20k watches, 2 cores shared with other
# work): 128 or 256 a request, or 4 at once, were within the noise of 64 x 2 (~200-400
# changes/s, percolation nearly all of it); 2 at once beat 1 in one series of two. 64 keeps
# one request short, and 2 leave the node room for searches.
PERCOLATE_BATCH = 64
PERCOLATE_CONCURRENCY = 2
# (watch, sku) pairs told a run holds before it writes their notices (module docstring).
NOTICES_HELD = 10_000
# How often expired product alerts and notices are deleted.
PRUNE_SECONDS = 600.0


def product_event(product: Product, at: float, change: ProductChange | None = None) -> SearchEvent:
    """A product as the percolator sees a search: its text (fields kept apart) and what
    was "found": its category at its price; and, for product watches, its sku and `change`
    (without one, no product watch matches)."""
    text = FIELD_SEPARATOR.join(
        (product.product_name, product.brand, product.category, product.description)
    )
    return SearchEvent(
        text=text,
        searcher="",
        found=((product.category, product.price),),
        at=at,
        sku=product.sku,
        change=change,
    )


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


def drop_is_enough(change: CatalogChange, max_price: float | None, min_percent: float) -> bool:
    """Whether a price drop is news for a watch: with a max price, the percolated query has
    already required the new price at or under it; without, the drop must be at least
    `min_percent` of the previous price."""
    if max_price is not None:
        return True
    previous = change.previous_price
    if previous is None or previous <= 0:
        return False  # a drop of unknown size is not judged big enough
    # A hair of tolerance: 100 → 95 is a drop of exactly 5 percent, in floats too.
    return (previous - change.product.price) * 100 >= min_percent * previous - 1e-9


def crosses(change: CatalogChange, max_price: float | None) -> bool:
    """A drop from above the watch's max price to at or under it."""
    previous = change.previous_price
    return (
        max_price is not None
        and previous is not None
        and previous > max_price >= change.product.price
    )


class _Notices:
    """One sku's notices: when each watch was last told of it (epoch seconds), and its
    latest notice's time and price."""

    def __init__(self) -> None:
        self.told: dict[str, float] = {}
        self.at = 0.0
        self.price = 0.0
        self.changed = False

    @classmethod
    def of(cls, source: dict[str, Any], since: float) -> _Notices:
        notices = cls()
        notices.at = seconds_from_iso(source["at"])
        notices.price = float(source["price"])
        told: dict[str, str] = source.get("told") or {}
        for ms, watches in told.items():
            at = int(ms) / 1000
            if at > since:
                for watch in watches.split():
                    notices.told[watch] = max(at, notices.told.get(watch, at))
        return notices

    def tell_at(self, at: float, price: float) -> None:
        """Watches were told of the product (in `told`) at `at`, at `price`."""
        self.at, self.price, self.changed = at, price, True

    def document(self) -> dict[str, Any]:
        # Grouped by when they were told (a run tells all of its watches at one moment):
        # `{epoch ms: "watch watch ..."}`, a few strings rather than hundreds of keys, which
        # Elasticsearch parses and stores several times faster (100k watches: ~750 a sku).
        by_time: dict[int, list[str]] = {}
        for watch, at in self.told.items():
            by_time.setdefault(round(at * 1000), []).append(watch)
        return {
            "at": iso_from_seconds(self.at),
            "price": self.price,
            "told": {str(ms): " ".join(watches) for ms, watches in by_time.items()},
        }


class _Digest:
    """What one run found for one (owner, watch)."""

    def __init__(self, owner: str, match: Match, first: CatalogChange) -> None:
        self.owner = owner
        self.watch = AlertWatch(id=match.watch_id, terms=match.terms, sku=match.sku)
        self.first = first
        self.more: list[CatalogChange] = []
        self.total = 1

    def add(self, change: CatalogChange) -> bool:
        """A product that may be listed already (its latest change replaces the listed one);
        whether it is listed now."""
        sku = change.product.sku
        if self.first.product.sku == sku:
            self.first = change
            return True
        for position, listed in enumerate(self.more):
            if listed.product.sku == sku:
                self.more[position] = change
                return True
        return self.add_new(change)

    def add_new(self, change: CatalogChange) -> bool:
        """A product not yet in the digest; whether it is listed (else only counted)."""
        self.total += 1
        if len(self.more) < DIGEST_MORE:
            self.more.append(change)
            return True
        return False


class ProductRun:
    """One run of changes: percolated as they come, alerts written at its end."""

    def __init__(self, alerting: ProductAlerting) -> None:
        self._alerting = alerting
        self._digests: dict[str, _Digest] = {}  # by watch id
        # Skus some digest of this run lists: a product seen again may be listed, and its
        # latest change must replace the listed one. Only listed ones: a digest lists a few
        # products, so this stays small however many products a run changes.
        self._listed: set[str] = set()
        # Notices not yet written, per sku: the watches told (stored ones included).
        self._notices: dict[str, _Notices] = {}
        self._held = 0  # (watch, sku) pairs told in `_notices`
        self.changes = 0
        # Product alerts the run wrote (known once it has ended).
        self.alerts = 0

    @property
    def skus_listed(self) -> int:
        """How many products the run's digests list (what it keeps to recognise one seen
        again: bounded by the digests, not by the products changed)."""
        return len(self._listed)

    async def changed(self, changes: list[CatalogChange]) -> None:
        """Percolate `changes` (in batches, a few requests at once) and take what they
        matched into the run's digests, batch after batch in the order given."""
        self.changes += len(changes)
        size = self._alerting.batch_size
        batches = [changes[start : start + size] for start in range(0, len(changes), size)]
        limiter = anyio.CapacityLimiter(self._alerting.concurrency)
        turns = [anyio.Event() for _ in batches]

        async def percolate(number: int, batch: list[CatalogChange]) -> None:
            async with limiter:
                found = await self._alerting.percolate(batch)
            if number > 0:
                await turns[number - 1].wait()
            await self._take(batch, found)
            turns[number].set()

        try:
            async with anyio.create_task_group() as group:
                for number, batch in enumerate(batches):
                    group.start_soon(percolate, number, batch)
        except BaseExceptionGroup as failed:
            # A failed batch cancels the others: its error reaches the caller as itself
            # (an Elasticsearch error, say), not wrapped in the task group's.
            raise first_error(failed) from None

    async def _take(self, batch: list[CatalogChange], found: list[list[Match]]) -> None:
        # Run once per match (hundreds per product at 100k watches): what depends on the
        # change alone is decided once per change, and a digest is searched for a product
        # already in it only when that product came earlier in the run.
        settings = self._alerting.settings
        matched = [(change, matches) for change, matches in zip(batch, found, strict=True)]
        if not any(matches for _, matches in matched):
            return
        now = self._alerting.clock()
        since = now - settings.product_alert_min_interval_seconds
        skus = {change.product.sku for change, matches in matched if matches}
        stored = await self._alerting.notices(
            [sku for sku in skus if sku not in self._notices], since
        )
        self._notices.update(stored)
        digests = self._digests
        for change, matches in matched:
            if not matches:
                continue
            product = change.product
            notices = self._notices.setdefault(product.sku, _Notices())
            told = notices.told
            drop = change.change == "price_drop"
            limited = change.change != "new"
            again = product.sku in self._listed
            listed = False
            held = self._held
            for match in matches:
                owner = match.owner
                if owner is None:
                    continue  # not a candidate (audience filter); never alerts on products
                watch_id = match.watch_id
                if drop and not drop_is_enough(
                    change, match.max_price, settings.price_drop_min_percent
                ):
                    continue
                if limited and not crosses(change, match.max_price):
                    last = told.get(watch_id)
                    if last is not None and last > since:
                        continue  # told within the interval
                told[watch_id] = now
                self._held += 1
                digest = digests.get(watch_id)  # a watch has one owner
                if digest is None:
                    digests[watch_id] = _Digest(owner, match, change)
                    listed = True
                elif again:
                    listed = digest.add(change) or listed
                else:
                    listed = digest.add_new(change) or listed
            if self._held > held:
                notices.tell_at(now, product.price)
            if listed:
                self._listed.add(product.sku)
        if self._held > self._alerting.notices_held:
            await self._write_notices()

    async def _write_notices(self) -> None:
        await self._alerting.record(
            {sku: notices for sku, notices in self._notices.items() if notices.changed}
        )
        self._notices.clear()
        self._held = 0

    async def finish(self) -> None:
        self.alerts = await self._alerting.write(list(self._digests.values()))
        self._digests.clear()
        await self._write_notices()


class ProductAlerting:
    """Product alerts of one deployment: runs of changes in, alert documents out; and
    their retention (`retain`, a background loop of the server)."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        settings: Settings,
        percolator: Percolator,
        *,
        batch_size: int = PERCOLATE_BATCH,
        concurrency: int = PERCOLATE_CONCURRENCY,
        clock: Callable[[], float] = time.time,
        notices_held: int = NOTICES_HELD,
    ) -> None:
        self._client = client
        self.settings = settings
        self._percolator = percolator
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.clock = clock
        self.notices_held = notices_held
        self._alerts_alias = indices.alias_for(settings, "product_alerts")
        self._notices_alias = indices.alias_for(settings, "product_notices")
        self._positions: Positions | None = None
        self._lock = anyio.Lock()
        # Read by the metrics (services.readings).
        self.changes_percolated = 0
        self.alerts_written = 0

    async def percolate(self, changes: list[CatalogChange]) -> list[list[Match]]:
        now = self.clock()
        events = [product_event(change.product, now, change.change) for change in changes]
        found = await self._percolator.percolate(events, audience="products")
        self.changes_percolated += len(changes)
        return found

    async def notices(self, skus: list[str], since: float) -> dict[str, _Notices]:
        """The stored notices of these skus (those that have any), without entries older
        than `since`."""
        if not skus:
            return {}
        response = await self._client.mget(index=self._notices_alias, ids=skus)
        docs: list[dict[str, Any]] = response.body["docs"]
        return {doc["_id"]: _Notices.of(doc["_source"], since) for doc in docs if doc.get("found")}

    async def record(self, notices: dict[str, _Notices]) -> None:
        """Write notices, a document per sku."""
        if not notices:
            return
        actions = (
            {"_index": self._notices_alias, "_id": sku, "_source": held.document()}
            for sku, held in notices.items()
        )
        await write_all(self._client, actions, chunk_size=500, what="product notices")

    async def _take_positions(self, count: int) -> int:
        async with self._lock:
            if self._positions is None:
                self._positions = Positions(await max_seq(self._client, self._alerts_alias))
            return self._positions.take(count)

    async def write(self, digests: list[_Digest]) -> int:
        if not digests:
            return 0
        first = await self._take_positions(len(digests))
        at = iso_from_seconds(self.clock())
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
        written = await store(self._client, self._alerts_alias, alerts)
        self.alerts_written += written
        return written

    @asynccontextmanager
    async def run(self) -> AsyncIterator[ProductRun]:
        """A run: its alerts are written when the block ends without an error."""
        run = ProductRun(self)
        yield run
        await run.finish()

    async def prune(self) -> None:
        """Delete product alerts older than the retention and notices older than the
        minimum interval."""
        now = self.clock()
        expired = [
            (self._alerts_alias, now - self.settings.product_alert_retention_days * 86_400),
            (self._notices_alias, now - self.settings.product_alert_min_interval_seconds),
        ]
        for alias, cutoff in expired:
            await es.delete_older(self._client, alias, iso_from_seconds(cutoff))

    async def retain(self) -> None:
        """Prune every `PRUNE_SECONDS`, until cancelled; a failed prune waits for the next."""
        while True:
            try:
                await self.prune()
            except (TransportError, ElasticsearchApiError) as error:
                logger.warning("pruning product alerts failed: %s", error)
            await anyio.sleep(PRUNE_SECONDS)
