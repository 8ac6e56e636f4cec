"""A user's own entries in the alert log: read for an export of their data, and taken out
of the stored log when their account is erased (what is not written yet: `AlertLog.forget`).

A sending to several owners is one document (log.py): an erased user is taken out of it
(their recipient entry and their watch), and the document is deleted only when it was
theirs alone. A default watch's sending to everyone names nobody but the users it
excludes: an erased user leaves that list.
"""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch

from percolert.alerts.log import record_from_source, source_for
from percolert.core.messages import Alert
from percolert.engine.es import Rewrite, rewrite_matching


def _without(user: str) -> Rewrite:
    """A stored sending with `user` taken out; None (deleted) when nobody is left in it."""

    def rewrite(source: dict[str, Any]) -> dict[str, Any] | None:
        recipients = [other for other in source.get("recipients") or () if other != user]
        if not source.get("everyone") and not recipients:
            return None
        excluded = [other for other in source.get("excluded") or () if other != user]
        alert = dict(source.get("alert") or {})
        if isinstance(alert.get("watches"), dict):
            alert["watches"] = {
                other: watch for other, watch in alert["watches"].items() if other != user
            }
        return {**source, "recipients": recipients, "excluded": excluded, "alert": alert}

    return rewrite


def _naming(user: str) -> dict[str, Any]:
    return {
        "bool": {
            "should": [{"term": {"recipients": user}}, {"term": {"excluded": user}}],
            "minimum_should_match": 1,
        }
    }


async def own_alerts(
    client: AsyncElasticsearch, alias: str, user: str, limit: int
) -> tuple[list[Alert], bool]:
    """The alerts sent to `user` through their own watches (not a default watch's sendings to
    everyone, which are nobody's in particular), newest first, at most `limit`; and whether
    there were more."""
    response = await client.search(
        index=alias,
        query={"bool": {"filter": [{"term": {"recipients": user}}]}},
        sort=[{"seq": "desc"}],
        size=limit + 1,
        track_total_hits=False,
        source=source_for(user),
    )
    hits = response["hits"]["hits"]
    alerts = [
        alert
        for hit in hits[:limit]
        if (alert := record_from_source(hit["_source"]).alert_for(user)) is not None
    ]
    return alerts, len(hits) > limit


async def erase_stored(
    client: AsyncElasticsearch, alias: str, user: str, *, request_timeout: float
) -> int:
    """Take `user` out of every stored sending that names them; returns how many sendings
    were changed or deleted, visible to search when this returns."""
    return await rewrite_matching(
        client, alias, _naming(user), _without(user), request_timeout=request_timeout
    )
