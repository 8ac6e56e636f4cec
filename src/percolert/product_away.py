"""What a returning shopper missed: their product alerts above their seen mark, newest first
and bounded, with a count of the rest (hello's `away`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.product_alerts import StoredProductAlert

logger = logging.getLogger("percolert.product_away")

# A greeting lists this many product alerts at most; `more` counts the others.
AWAY_LIMIT = 10


class Missed(msgspec.Struct, frozen=True, kw_only=True):
    """What a user missed: the newest alerts (those that decode), how many more there are,
    and the newest position among them (the mark to move to)."""

    alerts: list[StoredProductAlert]
    more: int
    newest: int


async def missed_product_alerts(
    client: AsyncElasticsearch,
    alias: str,
    user: str,
    above: int,
    *,
    retention_days: float,
    limit: int = AWAY_LIMIT,
) -> Missed | None:
    """The user's product alerts with `seq` above `above` and within the retention (older
    ones may not have been pruned yet), newest first, at most `limit`, with how many more
    there are; None when there are none. One search on the user's own documents: cheap
    enough for every greeting."""
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
    if not hits["hits"]:
        return None
    return Missed(
        alerts=decode_alerts(hit["_source"] for hit in hits["hits"]),
        more=int(hits["total"]["value"]) - len(hits["hits"]),
        newest=int(hits["hits"][0]["_source"]["seq"]),
    )


def decode_alerts(sources: Iterable[dict[str, Any]]) -> list[StoredProductAlert]:
    """The stored alerts that decode; one that does not (written by a newer or broken
    writer) is logged and left out rather than failing every read that meets it."""
    alerts = []
    for source in sources:
        try:
            alerts.append(StoredProductAlert.from_source(source))
        except (msgspec.ValidationError, KeyError) as error:
            logger.warning("skipping a product alert that does not decode: %s", error)
    return alerts
