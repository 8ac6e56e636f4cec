"""What a returning shopper missed: their product alerts their seen mark does not cover,
newest first and bounded, with a count of the rest (hello's `away`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from percolert.core.times import iso_from_seconds
from percolert.engine.reads import Reads
from percolert.products.alerts import VISIBLE_WITHIN_MICROS, StoredProductAlert
from percolert.products.seen import Mark

logger = logging.getLogger(__name__)

# A greeting lists this many product alerts at most; `more` counts the others.
AWAY_LIMIT = 10


# Alerts of one greeting whose ids it records as shown (the newest): a user with more
# product alerts than this within the visibility window may see the oldest of them twice.
COVERED_LIMIT = 100


class Missed(msgspec.Struct, frozen=True, kw_only=True):
    """What a user missed: the newest alerts (those that decode), how many more there are,
    and what the greeting covers (ids by position, the newest ones: the mark moves past
    them; older ones it covers lie below the mark's visibility window)."""

    alerts: list[StoredProductAlert]
    more: int
    covered: dict[str, int]


async def missed_product_alerts(
    reads: Reads,
    alias: str,
    user: str,
    mark: Mark,
    *,
    retention_days: float,
    limit: int = AWAY_LIMIT,
) -> Missed | None:
    """The user's product alerts the mark does not cover, within the retention (older ones
    may not have been pruned yet), newest first, at most `limit`, with how many more there
    are; None when there are none. One search on the user's own documents: cheap enough
    for every greeting."""
    kept_since = iso_from_seconds(time.time() - retention_days * 86_400)
    body = {
        "query": {
            "bool": {
                "filter": [
                    {"term": {"user": user}},
                    {"range": {"seq": {"gt": mark.upto - VISIBLE_WITHIN_MICROS}}},
                    {"range": {"at": {"gte": kept_since}}},
                ],
                "must_not": [{"ids": {"values": list(mark.shown)}}] if mark.shown else [],
            }
        },
        "sort": [{"seq": "desc"}],
        "size": limit,
        "track_total_hits": True,
        # In the same search, so that what the mark moves past is exactly what was counted.
        "aggs": {
            "covered": {
                "top_hits": {
                    "size": COVERED_LIMIT,
                    "sort": [{"seq": "desc"}],
                    "_source": False,
                    "docvalue_fields": ["seq"],
                }
            }
        },
    }
    response = await reads.search(alias, body)
    hits = response["hits"]
    if not hits["hits"]:
        return None
    covered = response["aggregations"]["covered"]["hits"]["hits"]
    return Missed(
        alerts=decode_alerts(hit["_source"] for hit in hits["hits"]),
        more=int(hits["total"]["value"]) - len(hits["hits"]),
        covered={hit["_id"]: int(hit["fields"]["seq"][0]) for hit in covered},
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
