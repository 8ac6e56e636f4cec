"""Product alerts at rest: one document per recipient, watch and run of catalog changes in
the `product_alerts` index (mappings/product_alerts.json), written by whoever found the
changes (`percolert ingest`, the admin API of any instance) and read by every server, which
delivers them to the sockets it holds and greets returning owners with what they missed.

Positions (`seq`) are their own space, apart from search alerts': microseconds of the
writer's clock, above every position the index holds and every one this writer issued, so
that a later run sorts after an earlier one even within one process. Two processes writing
in the same microsecond may issue the same position: ids stay distinct (they name the
watch) and readers order by (seq, id).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from percolert.core.messages import ProductAlert, ProductChange
from percolert.engine.es import ElasticsearchProblem
from percolert.products.catalog import Product, rejection_reason

# How long a writer takes at most from numbering alerts to their being visible to search
# (a bulk write, then a refresh), in positions (microseconds): readers look this far back
# below what they have seen, for alerts numbered earlier that became visible later.
VISIBLE_WITHIN_MICROS = 30_000_000


class CatalogChange(msgspec.Struct, frozen=True, kw_only=True):
    """A catalog change worth telling watch owners about, as change detection found it:
    the product as it is now, and for a price drop the price it had before."""

    change: ProductChange
    product: Product
    previous_price: float | None = None


class ChangeSink(Protocol):
    """Where change detection hands what it found, a batch at a time, in the order the
    products came (`catalog.ingest` and the admin API call it; product matching is one)."""

    async def changed(self, changes: list[CatalogChange]) -> None: ...


class StoredProductAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A product alert and its recipient, as the index holds it."""

    user: str
    alert: ProductAlert

    def document(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "seq": self.alert.seq,
            "at": self.alert.at,
            "alert": msgspec.to_builtins(self.alert),
        }

    @classmethod
    def from_source(cls, source: dict[str, Any]) -> StoredProductAlert:
        return cls(user=source["user"], alert=msgspec.convert(source["alert"], ProductAlert))


def product_alert_id(seq: int, watch_id: str) -> str:
    """A watch has one owner and one alert per run, so (position, watch) is unique."""
    return f"p-{seq}-{watch_id}"


async def max_seq(client: AsyncElasticsearch, alias: str) -> int:
    """The highest position the index holds (0 when empty)."""
    response = await client.search(
        index=alias, size=0, aggs={"top": {"max": {"field": "seq"}}}, track_total_hits=False
    )
    value = response.body["aggregations"]["top"]["value"]
    return int(value) if value is not None else 0


class Positions:
    """Issues product-alert positions for one writer (process): strictly increasing, above
    `floor` (the index's max when the writer started) and at or above its clock."""

    def __init__(self, floor: int = 0) -> None:
        self._last = floor

    def take(self, count: int) -> int:
        """The first of `count` consecutive positions."""
        first = max(time.time_ns() // 1000, self._last + 1)
        self._last = first + count - 1
        return first


async def store(client: AsyncElasticsearch, alias: str, alerts: list[StoredProductAlert]) -> int:
    """Write alerts in bulk, visible to searches when this returns. Returns how many were
    written; raises if Elasticsearch fails (the caller reports what was not written)."""
    if not alerts:
        return 0
    actions = (
        {"_index": alias, "_id": stored.alert.id, "_source": stored.document()} for stored in alerts
    )
    # One refresh at the end: `refresh="wait_for"` on each chunk waited up to a refresh
    # interval per 1,000 alerts (8 s for a run of 7.5k alerts).
    written = await write_all(client, actions, chunk_size=1000, what="product alerts")
    await client.indices.refresh(index=alias)
    return written


async def write_all(
    client: AsyncElasticsearch, actions: Iterable[dict[str, Any]], *, chunk_size: int, what: str
) -> int:
    """Bulk-write documents that must all be stored (alerts, notices); returns how many were.
    Documents Elasticsearch refuses (a write block, a full queue after retries) raise an
    `ElasticsearchProblem`, which callers report as Elasticsearch failing (a 503, a CLI
    message), rather than the helper's own `BulkIndexError`."""
    written, refused = await async_bulk(
        client, actions, chunk_size=chunk_size, max_retries=3, raise_on_error=False
    )
    if isinstance(refused, list) and refused:
        raise ElasticsearchProblem(
            f"Elasticsearch refused {len(refused)} {what}: {rejection_reason(refused[0])}"
        )
    return written
