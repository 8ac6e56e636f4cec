"""Telling what changed in the catalog: each incoming product is compared with the stored
one before it is indexed, and what is news to watch owners (a new product, a lower price, a
product back in stock) is handed on as a `CatalogChange`.

Per chunk: one `mget` of the stored products (their price, stock and version), classify,
then one bulk request that writes each product only over the version it was compared with
(`if_seq_no`/`if_primary_term`; `create` for a product that did not exist). Two writers
racing on one sku thus cannot both report the same drop: the loser's write conflicts, it
reads the product again and classifies against what the winner stored.
"""

from __future__ import annotations

from typing import Any

import msgspec
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_streaming_bulk

from percolert.engine.bulk import CONFLICT
from percolert.engine.es import ElasticsearchProblem
from percolert.products.alerts import CatalogChange, ChangeSink
from percolert.products.catalog import ChunkOutcome, LineError, Product, rejection_reason

# Writes of one product that may lose a race before it is given up (reported as an error).
MAX_ATTEMPTS = 5


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """What change detection reads of a stored product, and the version it read."""

    price: float
    in_stock: bool
    seq_no: int
    primary_term: int


def classify(product: Product, stored: Stored | None) -> CatalogChange | None:
    """The change `product` makes over `stored` (None: no product with its sku), if it is
    news: only a product one can buy is (a new or cheaper product out of stock alerts
    nobody; coming back in stock is then the news). Back in stock wins over a simultaneous
    drop and keeps the drop's previous price."""
    if not product.in_stock:
        return None
    if stored is None:
        return CatalogChange(change="new", product=product)
    previous = stored.price if product.price < stored.price else None
    if not stored.in_stock:
        return CatalogChange(change="back_in_stock", product=product, previous_price=previous)
    if previous is not None:
        return CatalogChange(change="price_drop", product=product, previous_price=previous)
    return None


class ProductNotStored(Exception):
    """A product change detection could not index; `conflict`: other writers kept winning."""

    def __init__(self, reason: str, *, conflict: bool) -> None:
        super().__init__(reason)
        self.conflict = conflict


class ChangeDetection:
    """Indexes products into `index`, handing what changed to `sink` (a `catalog.ChunkWriter`:
    `catalog.ingest` calls it per chunk; the admin API with one product)."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        index: str,
        sink: ChangeSink,
        *,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._client = client
        self._index = index
        self._sink = sink
        self._max_attempts = max_attempts

    async def write(self, chunk: list[tuple[int, Product]]) -> ChunkOutcome:
        """Index a chunk (line number, product); its changes go to the sink, in input order,
        once the chunk is indexed. A sku repeated in the chunk is written in turn, each line
        compared with the one before, as if the lines had come one by one."""
        stored = await self._read({product.sku for _, product in chunk})
        found: list[tuple[int, CatalogChange]] = []
        errors: list[LineError] = []
        loaded = 0
        for round_ in _rounds(chunk):
            outcome = await self._write_round(round_, stored)
            loaded += outcome.loaded
            found.extend(outcome.changes)
            errors.extend(outcome.errors)
        found.sort(key=lambda numbered: numbered[0])
        changes = [change for _, change in found]
        if changes:
            await self._sink.changed(changes)
        errors.sort(key=lambda error: error.line)
        return ChunkOutcome(
            loaded=loaded, errors=errors, changes=[change.change for change in changes]
        )

    async def put(self, product: Product) -> CatalogChange | None:
        """Index one product (the admin API); its change, if any, went to the sink."""
        stored = await self._read({product.sku})
        outcome = await self._write_round([(1, product)], stored)
        if outcome.errors:
            error = outcome.errors[0]
            raise ProductNotStored(error.reason, conflict=error.line in outcome.conflicted)
        changes = [change for _, change in outcome.changes]
        if changes:
            await self._sink.changed(changes)
        return changes[0] if changes else None

    async def _read(self, skus: set[str]) -> dict[str, Stored | None]:
        if not skus:
            return {}
        response = await self._client.mget(
            index=self._index, ids=sorted(skus), source_includes=["price", "in_stock"]
        )
        stored: dict[str, Stored | None] = {}
        for doc in response.body["docs"]:
            if "error" in doc:  # a shard failed to answer: the write fails, not a guess
                raise ElasticsearchProblem(
                    f"Elasticsearch could not read the stored products to compare: {doc['error']}"
                )
            source = doc.get("_source") or {}
            stored[doc["_id"]] = (
                Stored(
                    price=float(source["price"]),
                    in_stock=bool(source.get("in_stock", True)),
                    seq_no=doc["_seq_no"],
                    primary_term=doc["_primary_term"],
                )
                if doc.get("found")
                else None
            )
        return stored

    async def _write_round(
        self, products: list[tuple[int, Product]], stored: dict[str, Stored | None]
    ) -> _RoundOutcome:
        """Write products of distinct skus, each over the version in `stored` (updated as
        they are written); a product that lost a race is read again and retried."""
        outcome = _RoundOutcome()
        pending = products
        for attempt in range(self._max_attempts):
            planned = {
                product.sku: (number, product, classify(product, stored[product.sku]))
                for number, product in pending
            }
            actions = [self._action(product, stored[product.sku]) for _, product in pending]
            lost: list[tuple[int, Product]] = []
            async for ok, item in async_streaming_bulk(
                self._client,
                actions,
                chunk_size=max(1, len(actions)),
                raise_on_error=False,
                max_retries=3,
            ):
                result = next(iter(item.values()))
                number, product, change = planned[result["_id"]]
                if ok:
                    outcome.loaded += 1
                    stored[product.sku] = Stored(
                        price=product.price,
                        in_stock=product.in_stock,
                        seq_no=result["_seq_no"],
                        primary_term=result["_primary_term"],
                    )
                    if change is not None:
                        outcome.changes.append((number, change))
                elif result.get("status") == CONFLICT and attempt + 1 < self._max_attempts:
                    lost.append((number, product))
                elif result.get("status") == CONFLICT:
                    outcome.conflicted.add(number)
                    outcome.errors.append(
                        LineError(
                            number,
                            f"not stored: changed by other writers {self._max_attempts} "
                            "times while this one tried",
                        )
                    )
                else:
                    outcome.errors.append(
                        LineError(number, f"rejected by Elasticsearch: {rejection_reason(item)}")
                    )
            if not lost:
                break
            stored.update(await self._read({product.sku for _, product in lost}))
            pending = lost
        return outcome

    def _action(self, product: Product, stored: Stored | None) -> dict[str, Any]:
        action: dict[str, Any] = {
            "_index": self._index,
            "_id": product.sku,
            "_source": msgspec.to_builtins(product),
        }
        if stored is None:
            action["_op_type"] = "create"
        else:
            action["if_seq_no"] = stored.seq_no
            action["if_primary_term"] = stored.primary_term
        return action


class _RoundOutcome:
    def __init__(self) -> None:
        self.loaded = 0
        self.changes: list[tuple[int, CatalogChange]] = []
        self.errors: list[LineError] = []
        self.conflicted: set[int] = set()


def _rounds(chunk: list[tuple[int, Product]]) -> list[list[tuple[int, Product]]]:
    """The chunk as rounds of distinct skus: every sku's first line in the first round, its
    second in the second, and so on (so a later line is written after an earlier one)."""
    rounds: list[list[tuple[int, Product]]] = []
    seen: dict[str, int] = {}
    for numbered in chunk:
        sku = numbered[1].sku
        occurrence = seen.get(sku, 0)
        seen[sku] = occurrence + 1
        if occurrence == len(rounds):
            rounds.append([])
        rounds[occurrence].append(numbered)
    return rounds
