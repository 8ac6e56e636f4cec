"""A watch on one product (`sku`): what makes its spec one, its stored query and its id.

A product watch is stored in the same percolator index as watches of words, and percolated
with the same requests; its query wants the percolated document's `product_sku` to be its
sku and `product_change` one of the changes it is `on` (and the price at or under its
`max_price`). Only a catalog change's document carries those fields (`Percolator.document`):
a search's never does, so no search can match a product watch, whatever words it has, and
no other product can either, whatever its words. Besides, a product watch notifies of
products only, so search percolation's audience filter never makes it a candidate.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from percolert.core.messages import ProductWatchChange, WatchSpec

# The fields of a percolated catalog change (mappings/watches.json) a product watch's query
# references; a search's document has neither.
SKU_FIELD = "product_sku"
CHANGE_FIELD = "product_change"
# What a product watch alerts on when its spec does not say: every change it may.
WATCHABLE: tuple[ProductWatchChange, ...] = ("back_in_stock", "price_drop")


def spec_problem(spec: WatchSpec) -> str | None:
    """Why `spec` is neither a watch of words nor a product watch, in a sentence for the
    shopper; None when it is one of them. (What its words or product are is checked later.)"""
    if spec.sku is None:
        if not spec.terms:
            return "a watch needs `terms` (words to watch for) or a `sku` (one product to watch)"
        if spec.on is not None:
            return "`on` applies to a product watch only (one with a `sku`, not `terms`)"
        return None
    if spec.terms:
        return "a watch has either `terms` (words) or a `sku` (one product), not both"
    if spec.phrase or spec.category is not None:
        return "`phrase` and `category` apply to watches of words; a product watch has a `sku`"
    if spec.notify == "searches":
        return (
            "a product watch alerts of its product's changes only, never of searches: "
            'leave `notify` out (or send "products")'
        )
    return None


def changes(spec: WatchSpec) -> list[ProductWatchChange]:
    """The changes a product watch is on, each once, in one order (so that equal lists mean
    the same)."""
    chosen = set(WATCHABLE if spec.on is None else spec.on)
    return [change for change in WATCHABLE if change in chosen]


def build_query(sku: str, on: list[ProductWatchChange], max_price: float | None) -> dict[str, Any]:
    """The percolator query of a product watch, in filter context: the `term` on the sku is
    what the percolator pre-selects it by, so it is a candidate for its own product only."""
    filters: list[dict[str, Any]] = [
        {"term": {SKU_FIELD: sku}},
        {"terms": {CHANGE_FIELD: list(on)}},
    ]
    if max_price is not None:
        # The product's price (its document's lowest price found, as a search's would be).
        filters.append({"range": {"min_price": {"lte": max_price}}})
    return {"bool": {"filter": filters}}


def watch_id(owner: str, sku: str) -> str:
    """Deterministic, of the owner and the sku alone: one owner watches one product once
    (another `on` or `max_price` is the same watch), and a second add collides. The same form
    as ids of watches of words (`store.watch_id`), from a signature none of theirs has."""
    signature = msgspec.json.encode([owner, "sku", sku])
    return f"w-{hashlib.sha256(signature).hexdigest()[:20]}"
