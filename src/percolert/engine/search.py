"""Catalog search: the relevance a shopper expects, built from plain text (never client DSL)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.core.fields import text_problem
from percolert.core.messages import ProductCard, SearchHit, SearchResponse
from percolert.core.times import iso_to_microsecond

MAX_QUERY_LENGTH = 200
MAX_SIZE = 50
# One typo allowed from five characters up, two from nine (transpositions count as one);
# short words must match exactly, or "ipad" would also find "ipod".
FUZZINESS = "AUTO:5,9"


def build_query(text: str) -> dict[str, Any]:
    """The Elasticsearch query for a shopper's search text.

    Every product must match (most of) the words somewhere in its text, typos tolerated;
    scoring then prefers name matches over brand/category over description, and boosts
    the words appearing together as a phrase in the name.
    """
    return {
        "bool": {
            "must": {
                "match": {
                    "all_text": {
                        "query": text,
                        "fuzziness": FUZZINESS,
                        "prefix_length": 1,
                        # Up to three words all must match; longer queries three in four.
                        "minimum_should_match": "3<75%",
                    }
                }
            },
            "should": [
                {
                    "match": {
                        "product_name": {
                            "query": text,
                            "fuzziness": FUZZINESS,
                            "prefix_length": 1,
                            "boost": 3.0,
                        }
                    }
                },
                {"match_phrase": {"product_name": {"query": text, "slop": 1, "boost": 6.0}}},
                {"match": {"brand": {"query": text, "boost": 2.0}}},
                {"term": {"category": {"value": text.strip().lower(), "boost": 2.0}}},
                {"match_phrase": {"description": {"query": text, "slop": 2, "boost": 1.0}}},
            ],
        }
    }


class _Source(msgspec.Struct):
    product_name: str
    price: float
    category: str
    brand: str
    description: str = ""
    in_stock: bool = True


class _Hit(msgspec.Struct):
    """A search hit, or the cheapest product of a category found (fewer fields, no score)."""

    id: str = msgspec.field(name="_id")
    source: _Source = msgspec.field(name="_source")
    score: float | None = msgspec.field(name="_score", default=None)

    def card(self) -> ProductCard:
        return ProductCard(
            sku=self.id,
            product_name=self.source.product_name,
            price=self.source.price,
            category=self.source.category,
            brand=self.source.brand,
        )


_SOURCE_FIELDS = ["product_name", "description", "price", "category", "brand", "in_stock"]

# Categories of what a search found, beyond this many, are not reported (the catalog has a
# dozen; watch filters on the rest do not see them).
MAX_FOUND_CATEGORIES = 100

# Products an alert about the search may show: its best few, and the cheapest in each
# category it found (so that a watch on a category under a price, which the search matched
# through that product, can show it).
ALERT_TOP_HITS = 3
_CARD_FIELDS = ["product_name", "price", "category", "brand"]

# What the search found, over all its matches rather than the page returned: each category
# with its lowest price, and the product at that price. Watch filters are judged on it; it
# costs one aggregation beside the search, in the same request.
_FOUND = {
    "found": {
        "terms": {"field": "category", "size": MAX_FOUND_CATEGORIES},
        "aggs": {
            "cheapest": {"min": {"field": "price"}},
            "cheapest_product": {
                "top_hits": {
                    "size": 1,
                    "sort": [{"price": "asc"}],
                    "_source": {"includes": _CARD_FIELDS},
                }
            },
        },
    }
}


class _Cheapest(msgspec.Struct):
    value: float | None = None


class _CardHits(msgspec.Struct):
    hits: list[_Hit] = msgspec.field(default_factory=list)


class _TopHits(msgspec.Struct):
    hits: _CardHits = msgspec.field(default_factory=_CardHits)


class _Category(msgspec.Struct):
    key: str
    cheapest: _Cheapest = msgspec.field(default_factory=_Cheapest)
    cheapest_product: _TopHits = msgspec.field(default_factory=_TopHits)


class _CategoryBuckets(msgspec.Struct):
    buckets: list[_Category] = msgspec.field(default_factory=list)


class _Aggregations(msgspec.Struct):
    found: _CategoryBuckets = msgspec.field(default_factory=_CategoryBuckets)


# (category, lowest price in it, or None if nothing there has one), for each category found
Found = tuple[tuple[str, float | None], ...]


def _alert_products(hits: list[_Hit], categories: list[_Category]) -> tuple[ProductCard, ...]:
    """What alerts about the search may show: its best hits, then each category's cheapest."""
    cards = {hit.id: hit.card() for hit in hits[:ALERT_TOP_HITS]}
    for category in categories:
        for cheapest in category.cheapest_product.hits.hits:
            cards.setdefault(cheapest.id, cheapest.card())
    return tuple(cards.values())


async def search_products(
    client: AsyncElasticsearch, index: str, text: str, size: int, *, made_at: float = 0.0
) -> tuple[SearchResponse, Found, tuple[ProductCard, ...]]:
    """The shopper's answer; what the search found, for percolation (never shown); and the
    products an alert about it may show to a watch's owner. `made_at`: when the search was
    made (epoch seconds), which the answer says as alerts about it do."""
    started = time.perf_counter()
    response = await client.search(
        index=index,
        query=build_query(text),
        size=size,
        source_includes=_SOURCE_FIELDS,
        track_total_hits=True,
        aggs=_FOUND,
    )
    body = response.body
    hits = msgspec.convert(body["hits"]["hits"], list[_Hit])
    total = body["hits"]["total"]
    aggregations = msgspec.convert(body.get("aggregations", {}), _Aggregations)
    # A category stored before such values were refused (`setup` reports them) must not
    # forge what a watch's category and price filter reads: it is left out.
    categories = [
        bucket for bucket in aggregations.found.buckets if text_problem(bucket.key) is None
    ]
    found = tuple((bucket.key, bucket.cheapest.value) for bucket in categories)
    answer = SearchResponse(
        query=text,
        total=int(total["value"] if isinstance(total, dict) else total),
        took_ms=round((time.perf_counter() - started) * 1000, 2),
        at=iso_to_microsecond(made_at) if made_at else "",
        results=[
            SearchHit(
                id=hit.id,
                product_name=hit.source.product_name,
                description=hit.source.description,
                price=hit.source.price,
                category=hit.source.category,
                brand=hit.source.brand,
                in_stock=hit.source.in_stock,
                score=round(hit.score or 0.0, 4),
            )
            for hit in hits
        ],
    )
    return answer, found, _alert_products(hits, categories)
