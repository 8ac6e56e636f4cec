"""The product catalog: what a product is (and what text it may hold), bulk ingest of NDJSON
files into the index, the categories it holds, and the stored products it would refuse now.

Ingest either loads plainly (one streaming bulk) or hands chunks of parsed products to a
`ChunkWriter` (change detection, `catalog_changes`), which indexes them and says what changed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

import elasticsearch
import msgspec
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_streaming_bulk

from percolert.core.cached import Cached
from percolert.core.fields import ONE_LINE_FORBIDDEN, text_problem
from percolert.core.messages import ProductChange, Sku
from percolert.core.ndjson import BadLine, read_lines

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Price = Annotated[float, msgspec.Meta(ge=0, le=10_000_000)]


class Product(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One catalog line. The sku is the document id, so re-ingesting updates in place.

    Its text is checked wherever one is made (decoded from a file or a request, or built):
    no control characters, and none of what breaks a line or reorders it in its one-line
    fields (`core.fields`). The category is stored trimmed and lower-cased, as watches name
    categories."""

    sku: Sku
    product_name: Name
    description: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    price: Price
    category: Label
    brand: Label
    in_stock: bool = True

    def __post_init__(self) -> None:
        # Raised while decoding, msgspec reports a ValueError as a ValidationError.
        for field in _ONE_LINE_FIELDS:
            problem = text_problem(getattr(self, field))
            if problem is not None:
                raise ValueError(f"{field} {problem}")
        problem = text_problem(self.description, running_text=True)
        if problem is not None:
            raise ValueError(f"description {problem}")
        # Checked before trimming: Python counts U+001C-U+001F as spaces and would strip them.
        category = self.category.strip().lower()
        if not category:
            raise ValueError("category may not be blank")
        self.category = category


_ONE_LINE_FIELDS = ("sku", "product_name", "category", "brand")


class LineError(msgspec.Struct, frozen=True):
    line: int
    reason: str


class ChangeCounts(msgspec.Struct):
    """Catalog changes found, by kind."""

    new: int = 0
    price_drop: int = 0
    back_in_stock: int = 0

    def add(self, change: ProductChange) -> None:
        setattr(self, change, getattr(self, change) + 1)

    @property
    def total(self) -> int:
        return self.new + self.price_drop + self.back_in_stock


class IngestReport(msgspec.Struct):
    loaded: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[LineError] = msgspec.field(default_factory=list)
    # With change detection: what it found (None on a plain load), and the product alerts
    # those changes made (the caller fills it in once its run of alerts has ended).
    changes: ChangeCounts | None = None
    alerts: int = 0


class ChunkOutcome(msgspec.Struct, frozen=True):
    """What a chunk writer did with one chunk: products stored, lines it could not store, and
    the changes it found, in input order."""

    loaded: int
    errors: list[LineError]
    changes: list[ProductChange]


class ChunkWriter(Protocol):
    """Indexes a chunk of parsed products, each with its line number (change detection is
    one: `catalog_changes.ChangeDetection`). Connection failures raise."""

    async def write(self, chunk: list[tuple[int, Product]]) -> ChunkOutcome: ...


_decoder = msgspec.json.Decoder(Product)


def parse_line(raw: bytes) -> Product:
    """Decode one NDJSON line; msgspec's error names the offending field (`$.price`)."""
    return _decoder.decode(raw)


async def ingest(
    client: AsyncElasticsearch,
    index: str,
    path: Path,
    *,
    chunk_size: int = 500,
    on_progress: Callable[[int], None] | None = None,
    on_error: Callable[[LineError], None] | None = None,
    writer: ChunkWriter | None = None,
) -> IngestReport:
    """Load an NDJSON file: good lines are indexed in bulk, bad lines reported by number.

    `on_progress` gets the number of bytes consumed since the last call; `on_error` each bad
    line as soon as it is known. Connection failures raise; per-document rejections do not.
    With a `writer`, chunks of `chunk_size` products go through it (change detection) and
    the report counts the changes it found; without, a plain bulk load.
    """
    report = IngestReport()
    started = time.perf_counter()

    def fail(line: int, reason: str) -> None:
        report.failed += 1
        error = LineError(line, reason)
        report.errors.append(error)
        if on_error is not None:
            on_error(error)

    products = _read_products(path, fail, on_progress)
    if writer is None:
        await _load_plainly(client, index, products, chunk_size, report, fail)
    else:
        report.changes = ChangeCounts()
        chunk: list[tuple[int, Product]] = []
        async for numbered in products:
            chunk.append(numbered)
            if len(chunk) >= chunk_size:
                await _write_chunk(writer, chunk, report, fail)
                chunk = []
        if chunk:
            await _write_chunk(writer, chunk, report, fail)
    await client.indices.refresh(index=index)
    report.errors.sort(key=lambda error: error.line)
    report.seconds = time.perf_counter() - started
    return report


async def _read_products(
    path: Path,
    fail: Callable[[int, str], None],
    on_progress: Callable[[int], None] | None,
) -> AsyncIterator[tuple[int, Product]]:
    """The file's good products with their line numbers; bad lines go to `fail`."""
    for item in read_lines(path, parse_line, "product", on_progress):
        if isinstance(item, BadLine):
            fail(item.line, item.reason)
        else:
            yield item


async def _load_plainly(
    client: AsyncElasticsearch,
    index: str,
    products: AsyncIterator[tuple[int, Product]],
    chunk_size: int,
    report: IngestReport,
    fail: Callable[[int, str], None],
) -> None:
    pending_lines: deque[int] = deque()  # line numbers of sent actions, in bulk order

    async def actions() -> AsyncIterator[dict[str, Any]]:
        async for number, product in products:
            pending_lines.append(number)
            yield {"_index": index, "_id": product.sku, "_source": msgspec.to_builtins(product)}

    async for ok, item in async_streaming_bulk(
        client,
        actions(),
        chunk_size=chunk_size,
        raise_on_error=False,
        max_retries=3,
    ):
        number = pending_lines.popleft()
        if ok:
            report.loaded += 1
        else:
            fail(number, f"rejected by Elasticsearch: {rejection_reason(item)}")


async def _write_chunk(
    writer: ChunkWriter,
    chunk: list[tuple[int, Product]],
    report: IngestReport,
    fail: Callable[[int, str], None],
) -> None:
    outcome = await writer.write(chunk)
    report.loaded += outcome.loaded
    for error in outcome.errors:
        fail(error.line, error.reason)
    assert report.changes is not None
    for change in outcome.changes:
        report.changes.add(change)


def rejection_reason(item: dict[str, Any]) -> str:
    """Why Elasticsearch refused one document of a bulk request (its item in the answer)."""
    error = next(iter(item.values())).get("error", {})
    return str(error.get("reason", error)) if isinstance(error, dict) else str(error)


async def remove_product(client: AsyncElasticsearch, index: str, sku: str) -> bool:
    """Delete a product, visible to searches when this returns; False if there was none."""
    try:
        await client.delete(index=index, id=sku, refresh=True)
    except elasticsearch.NotFoundError as error:
        if error.error == "index_not_found_exception":
            raise
        return False
    return True


async def product_name(client: AsyncElasticsearch, index: str, sku: str) -> str | None:
    """The name of the product with `sku` (sold out or not); None if the catalog has none.
    `sku` must be a `Sku`: it reaches Elasticsearch's URL."""
    try:
        found = await client.get(index=index, id=sku, source_includes=["product_name"])
    except elasticsearch.NotFoundError as error:
        if error.error == "index_not_found_exception":
            raise
        return None
    return str(found["_source"]["product_name"])


# More categories than a shop's filter would list; a watch's category is checked against them.
_MAX_CATEGORIES = 1000


async def category_names(client: AsyncElasticsearch, index: str) -> list[str]:
    """The categories products are in, sorted."""
    response = await client.search(
        index=index,
        size=0,
        aggs={
            "categories": {
                "terms": {"field": "category", "size": _MAX_CATEGORIES, "order": {"_key": "asc"}}
            }
        },
    )
    return [bucket["key"] for bucket in response["aggregations"]["categories"]["buckets"]]


class CategoryCache:
    """The catalog's categories, read again once they are `ttl_seconds` old: checking every
    new watch's category need not cost an aggregation each."""

    def __init__(
        self, client: AsyncElasticsearch, index: str, *, ttl_seconds: float = 30.0
    ) -> None:
        async def read() -> frozenset[str]:
            return frozenset(await category_names(client, index))

        self._names = Cached(read, ttl_seconds=ttl_seconds)

    async def names(self) -> frozenset[str]:
        return await self._names.get()


class BadProduct(msgspec.Struct, frozen=True):
    """A stored product with text `Product` refuses: its sku and the fields at fault."""

    sku: str
    fields: list[str]


class StoredTextReport(msgspec.Struct, frozen=True):
    """What `stored_text_problems` found: products whose one-line fields hold a character
    `Product` refuses (how many, and the first few), and categories stored otherwise than
    trimmed and lower-cased (no watch can name them)."""

    products: int = 0
    examples: list[BadProduct] = msgspec.field(default_factory=list)
    uncased_categories: list[str] = msgspec.field(default_factory=list)


# The one-line fields as the index holds them whole: names and brands in a keyword
# sub-field (up to its `ignore_above`: a longer name goes unchecked).
_KEYWORD_FIELDS = {
    "sku": "sku",
    "product_name": "product_name.keyword",
    "brand": "brand.keyword",
    "category": "category",
}


async def stored_text_problems(
    client: AsyncElasticsearch, index: str, *, examples: int = 5
) -> StoredTextReport:
    """The products stored before `Product` checked its text that it would refuse now. One
    search: a regexp per keyword field (run over the terms, not the documents) and the
    categories."""
    # Lucene's regexp takes the characters themselves in a class; NONE: no operators.
    anywhere = {"value": f".*[{ONE_LINE_FORBIDDEN}].*", "flags": "NONE"}
    response = await client.search(
        index=index,
        size=examples,
        track_total_hits=True,
        source_includes=list(_KEYWORD_FIELDS),
        query={
            "bool": {
                "should": [{"regexp": {field: anywhere}} for field in _KEYWORD_FIELDS.values()],
                "minimum_should_match": 1,
            }
        },
        aggs={
            # Every product's category, not only those of the products the query found.
            "catalog": {
                "global": {},
                "aggs": {"categories": {"terms": {"field": "category", "size": _MAX_CATEGORIES}}},
            }
        },
    )
    found = [
        BadProduct(
            sku=hit["_id"],
            fields=[
                field
                for field in _KEYWORD_FIELDS
                if text_problem(str(hit["_source"].get(field, ""))) is not None
            ],
        )
        for hit in response["hits"]["hits"]
    ]
    buckets = response["aggregations"]["catalog"]["categories"]["buckets"]
    categories = [bucket["key"] for bucket in buckets]
    return StoredTextReport(
        products=response["hits"]["total"]["value"],
        examples=found,
        uncased_categories=sorted(
            category
            for category in categories
            if category != category.strip().lower() and text_problem(category) is None
        ),
    )
