"""What a returning shopper missed: their product alerts above their seen mark, newest first
and bounded, with a count of the rest (hello's `away`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from elasticsearch import AsyncElasticsearch

from percolert.product_alerts import StoredProductAlert

# A greeting lists this many product alerts at most; `more` counts the others.
AWAY_LIMIT = 10


async def missed_product_alerts(
    client: AsyncElasticsearch,
    alias: str,
    user: str,
    above: int,
    *,
    retention_days: float,
    limit: int = AWAY_LIMIT,
) -> tuple[list[StoredProductAlert], int]:
    """The user's product alerts with `seq` above `above` and within the retention (older
    ones may not have been pruned yet), newest first, at most `limit`; and how many there
    are in all. One search on the user's own documents: cheap enough for every greeting."""
    kept_since = datetime.now(UTC) - timedelta(days=retention_days)
    response = await client.search(
        index=alias,
        query={
            "bool": {
                "filter": [
                    {"term": {"user": user}},
                    {"range": {"seq": {"gt": above}}},
                    {"range": {"at": {"gte": kept_since.isoformat(timespec="milliseconds")}}},
                ]
            }
        },
        sort=[{"seq": "desc"}],
        size=limit,
        track_total_hits=True,
    )
    hits = response["hits"]
    alerts = [StoredProductAlert.from_source(hit["_source"]) for hit in hits["hits"]]
    return alerts, int(hits["total"]["value"])
