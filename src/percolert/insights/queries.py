"""The demand view's tables, read with Elasticsearch aggregations: the search log for
searches, alerts, visits and who is connected; the watches index for what shoppers wait for;
the catalog for those products' names, prices and stock; the outbox for off-site deliveries.

Every aggregation is bounded: the top TOP_N of a table, at most MAX_PRODUCTS watched products
looked up in the catalog, at most MAX_INSTANCES instances. The search log is already counted
by text and watch before it is written (activity.py), so a day of a busy shop is thousands of
documents a minute, not one per search.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import elasticsearch
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import Watch
from percolert.core.settings import Settings
from percolert.core.times import iso_from_seconds
from percolert.engine import indices
from percolert.insights import searchlog
from percolert.insights.activity import watch_label
from percolert.insights.redaction import redacted
from percolert.insights.report import (
    ChannelDeliveries,
    DefaultWatch,
    Insights,
    Live,
    SearchCount,
    SearchTotals,
    TimelinePoint,
    WatchAlerts,
    WatchedProduct,
    WatchedTerm,
)

logger = logging.getLogger(__name__)

TOP_N = 20
# Candidates each day's index offers a top table (ordered by a sum, over one shard a day):
# a text 41st every day may lead the week, which the default (1.5 x 20 + 10) would miss.
_SHARD_SIZE = 500
# Watched products whose names, prices and stock are looked up (the restock queue is found
# among them: the most-watched sold-out products).
MAX_PRODUCTS = 1_000
MAX_INSTANCES = 100
# Live figures: the last this many seconds, ending a little before now (the log is written
# once a second), and an instance counts as connected if it reported within PRESENCE_AGE.
LIVE_SECONDS = 30.0
_LIVE_LAG_SECONDS = 2.0
_PRESENCE_AGE_SECONDS = 15.0
# The timeline has about this many buckets, of a whole number of minutes.
_TIMELINE_BUCKETS = 48
# The most default watches the view lists (the watch store's bound).
_MAX_DEFAULTS = 1_000
_OFFSITE_CHANNELS = ("webhook", "email")


def _ms(seconds: float) -> int:
    return math.floor(seconds * 1000)


def _bucket_seconds(since: float) -> float:
    return max(60.0, math.ceil(since / _TIMELINE_BUCKETS / 60) * 60)


def _range(start: float, end: float) -> dict[str, Any]:
    # Two clauses, not one range: on a day's index that lies wholly before `end` (every day
    # but today), Elasticsearch rewrites the `lt` clause to one without bounds, so that
    # index's part of the search is the same request from one read to the next and its
    # result comes from the shard request cache (the `gte` bound is a whole bucket: _Window).
    return {
        "bool": {
            "filter": [
                {"range": {"at": {"gte": _ms(start)}}},
                {"range": {"at": {"lt": _ms(end)}}},
            ]
        }
    }


def _kind(kind: str) -> dict[str, Any]:
    return {"term": {"kind": kind}}


async def _search_log(
    client: AsyncElasticsearch, settings: Settings, **body: Any
) -> dict[str, Any]:
    """A search of every day's index; empty aggregations when there is none yet."""
    response = await client.search(
        index=searchlog.pattern(settings),
        size=0,
        ignore_unavailable=True,
        allow_no_indices=True,
        request_cache=True,
        # One day's index at a time: an aggregation over weeks of the log takes one of the
        # node's search threads (one core), never all of them, so shoppers' searches beside
        # it are not queued behind it.
        max_concurrent_shard_requests=1,
        **body,
    )
    failed = int((response.body.get("_shards") or {}).get("failed") or 0)
    if failed:
        # A day that cannot answer (mapped by hand, closed) is left out of the view: say so.
        logger.warning(
            "demand view: %d day(s) of the search log failed to answer: %s",
            failed,
            (response.body["_shards"].get("failures") or [{}])[0].get("reason"),
        )
    return dict(response.body.get("aggregations") or {})


def _sum(bucket: dict[str, Any], name: str) -> int:
    return int((bucket.get(name) or {}).get("value") or 0)


def _searches(aggregations: dict[str, Any], name: str) -> dict[str, tuple[int, int]]:
    return {
        str(bucket["key"]): (_sum(bucket, "searches"), _sum(bucket, "results"))
        for bucket in aggregations.get(name, {}).get("buckets", [])
    }


def _per_text() -> dict[str, Any]:
    return {"searches": {"sum": {"field": "count"}}, "results": {"max": {"field": "results"}}}


def _summed(query: dict[str, Any], field: str = "count") -> dict[str, Any]:
    """The sum of `field` over the documents matching `query` (read with _sum(..., "n"))."""
    return {"filter": query, "aggs": {"n": {"sum": {"field": field}}}}


def _top_texts(query: dict[str, Any]) -> dict[str, Any]:
    return {
        "filter": query,
        "aggs": {
            "texts": {
                "terms": {
                    "field": "text",
                    "size": TOP_N,
                    "shard_size": _SHARD_SIZE,
                    "order": {"searches": "desc"},
                },
                "aggs": _per_text(),
            }
        },
    }


def _no_results() -> dict[str, Any]:
    return {"term": {"results": 0}}


class _Window:
    """The window of a read: from a whole timeline bucket at or before `now - since` to now
    (up to a bucket, 1/48, longer than asked), and the window before it, of whole buckets.
    Bounds that move only once a bucket keep the past days' indices answering from the
    shard request cache: only today's index is aggregated again on each read."""

    def __init__(self, since: float, now: float) -> None:
        self.since = since
        self.now = now
        self.bucket = _bucket_seconds(since)
        self.start = math.floor((now - since) / self.bucket) * self.bucket
        self.previous_start = self.start - math.ceil(since / self.bucket) * self.bucket
        # The timeline's last bucket: the one now is in.
        self.last_bucket = math.floor(now / self.bucket) * self.bucket

    def as_long(self, previous: int) -> int:
        """A count of the previous window as if it were as long as this one (it is whole
        buckets; this one runs from a whole bucket to now): trends compare like with like."""
        return round(previous * (self.now - self.start) / (self.start - self.previous_start))


async def _read_searches(
    client: AsyncElasticsearch, settings: Settings, window: _Window
) -> tuple[SearchTotals, list[SearchCount], list[SearchCount], list[TimelinePoint], float]:
    bucket = window.bucket
    current = _range(window.start, window.now)
    searches = {"bool": {"filter": [_kind("search")]}}
    no_results = {"bool": {"filter": [_kind("search"), _no_results()]}}
    aggregations = await _search_log(
        client,
        settings,
        query=_range(window.previous_start, window.now),
        aggs={
            "current": {
                "filter": current,
                "aggs": {
                    "searches": _summed(searches),
                    "none": _summed(no_results),
                    "top": _top_texts(searches),
                    "zero": _top_texts(no_results),
                    "timeline": {
                        "date_histogram": {
                            "field": "at",
                            "fixed_interval": f"{round(bucket)}s",
                            "min_doc_count": 0,
                            "extended_bounds": {
                                "min": _ms(window.start),
                                "max": _ms(window.last_bucket),
                            },
                        },
                        "aggs": {
                            "searches": _summed(searches),
                            "none": _summed(no_results),
                            "alerts": _summed(_kind("alert"), "alerts"),
                        },
                    },
                },
            },
            "previous": {
                "filter": _range(window.previous_start, window.start),
                "aggs": {
                    "searches": _summed(searches),
                    "none": _summed(no_results),
                },
            },
        },
    )
    now_aggs = aggregations.get("current", {})
    before = aggregations.get("previous", {})
    top = _searches(now_aggs.get("top", {}), "texts")
    zero = _searches(now_aggs.get("zero", {}), "texts")
    previous = await _previous_counts(client, settings, window, sorted(set(top) | set(zero)))
    totals = SearchTotals(
        searches=_sum(now_aggs.get("searches", {}), "n"),
        no_results=_sum(now_aggs.get("none", {}), "n"),
        previous_searches=window.as_long(_sum(before.get("searches", {}), "n")),
        previous_no_results=window.as_long(_sum(before.get("none", {}), "n")),
    )

    def counts(found: dict[str, tuple[int, int]], previous: dict[str, int]) -> list[SearchCount]:
        return [
            SearchCount(
                text=text,
                count=count,
                previous=window.as_long(previous.get(text, 0)),
                results=results,
            )
            for text, (count, results) in found.items()
        ]

    timeline = [
        TimelinePoint(
            at=bucket["key"] / 1000,
            searches=_sum(bucket.get("searches", {}), "n"),
            no_results=_sum(bucket.get("none", {}), "n"),
            alerts=_sum(bucket.get("alerts", {}), "n"),
        )
        for bucket in now_aggs.get("timeline", {}).get("buckets", [])
    ]
    return (
        totals,
        counts(top, previous[0]),
        counts(zero, previous[1]),
        timeline,
        bucket,
    )


async def _previous_counts(
    client: AsyncElasticsearch, settings: Settings, window: _Window, texts: list[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """How often each of `texts` was searched in the window before, in all and with no
    result (the trend of the top tables)."""
    if not texts:
        return {}, {}

    def of(query: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "filter": {"bool": {"filter": query}},
            "aggs": {
                "texts": {
                    "terms": {"field": "text", "size": len(texts), "include": texts},
                    "aggs": {"searches": {"sum": {"field": "count"}}},
                }
            },
        }

    aggregations = await _search_log(
        client,
        settings,
        query={"bool": {"filter": [_range(window.previous_start, window.start), _kind("search")]}},
        aggs={"all": of([]), "none": of([_no_results()])},
    )
    return (
        {
            text: count
            for text, (count, _) in _searches(aggregations.get("all", {}), "texts").items()
        },
        {
            text: count
            for text, (count, _) in _searches(aggregations.get("none", {}), "texts").items()
        },
    )


class _WatchActivity:
    __slots__ = ("alerts", "default", "label", "reach", "visits")

    def __init__(self, label: str, default: bool) -> None:
        self.label = label
        self.default = default
        self.alerts = self.reach = self.visits = 0


def _per_watch() -> dict[str, Any]:
    return {
        "alerts": {"sum": {"field": "alerts"}},
        "reach": {"sum": {"field": "shoppers"}},
        "label": {"terms": {"field": "label", "size": 1}},
        "default": {"terms": {"field": "default", "size": 1}},
    }


def _watch_buckets(aggregation: dict[str, Any], into: dict[str, _WatchActivity]) -> None:
    for bucket in aggregation.get("watches", {}).get("buckets", []):
        labels = bucket.get("label", {}).get("buckets", [])
        defaults = bucket.get("default", {}).get("buckets", [])
        activity = into.setdefault(
            str(bucket["key"]),
            _WatchActivity(
                str(labels[0]["key"]) if labels else "",
                bool(defaults and defaults[0]["key"]),
            ),
        )
        activity.alerts = _sum(bucket, "alerts")
        activity.reach = _sum(bucket, "reach")


async def _read_alerts(
    client: AsyncElasticsearch, settings: Settings, window: _Window, defaults: Sequence[Watch]
) -> tuple[list[WatchAlerts], list[DefaultWatch]]:
    default_ids = [watch.id for watch in defaults]
    current = _range(window.start, window.now)
    alerts = {"bool": {"filter": [current, _kind("alert")]}}
    aggs: dict[str, Any] = {
        "top": {
            "filter": alerts,
            "aggs": {
                "watches": {
                    "terms": {
                        "field": "watch_id",
                        "size": TOP_N,
                        "shard_size": _SHARD_SIZE,
                        "order": {"alerts": "desc"},
                    },
                    "aggs": _per_watch(),
                }
            },
        }
    }
    if default_ids:
        aggs["defaults"] = {
            "filter": alerts,
            "aggs": {
                "watches": {
                    "terms": {
                        "field": "watch_id",
                        "size": len(default_ids),
                        "include": default_ids,
                    },
                    "aggs": _per_watch(),
                }
            },
        }
    aggregations = await _search_log(client, settings, query=current, aggs=aggs)
    top: dict[str, _WatchActivity] = {}
    _watch_buckets(aggregations.get("top", {}), top)
    of_defaults: dict[str, _WatchActivity] = {}
    _watch_buckets(aggregations.get("defaults", {}), of_defaults)
    visits = await _visits(client, settings, window, sorted(set(top) | set(of_defaults)))
    for activity_by_id in (top, of_defaults):
        for watch_id, activity in activity_by_id.items():
            activity.visits = visits.get(watch_id, 0)
    per_watch = [
        WatchAlerts(
            watch_id=watch_id,
            label=activity.label,
            default=activity.default,
            alerts=activity.alerts,
            reach=activity.reach,
            visits=activity.visits,
            visit_rate=round(activity.visits / activity.reach, 4) if activity.reach else None,
        )
        for watch_id, activity in top.items()
    ]
    nothing = _WatchActivity("", True)
    default_rows = [
        DefaultWatch(
            watch_id=watch.id,
            label=watch_label(watch, phrase=watch.phrase),
            created_at=watch.created_at,
            alerts=of_defaults.get(watch.id, nothing).alerts,
            reach=of_defaults.get(watch.id, nothing).reach,
            visits=of_defaults.get(watch.id, nothing).visits,
        )
        for watch in defaults
    ]
    # Those reaching most first; those reaching nobody (to retire) last, oldest first.
    default_rows.sort(key=lambda row: (-row.reach, -row.alerts, row.created_at))
    return per_watch, default_rows


async def _visits(
    client: AsyncElasticsearch, settings: Settings, window: _Window, watch_ids: list[str]
) -> dict[str, int]:
    if not watch_ids:
        return {}
    aggregations = await _search_log(
        client,
        settings,
        query={"bool": {"filter": [_range(window.start, window.now), _kind("visit")]}},
        aggs={
            "watches": {
                "terms": {"field": "watch_id", "size": len(watch_ids), "include": watch_ids},
                "aggs": {"visits": {"sum": {"field": "count"}}},
            }
        },
    )
    return {
        str(bucket["key"]): _sum(bucket, "visits")
        for bucket in aggregations.get("watches", {}).get("buckets", [])
    }


async def _read_watched(
    client: AsyncElasticsearch, settings: Settings
) -> tuple[list[WatchedTerm], list[WatchedProduct], list[WatchedProduct]]:
    """Shoppers' own watches as they stand (not a window: a watch waits until removed)."""
    response = await client.search(
        index=indices.alias_for(settings, "watches"),
        size=0,
        query={"bool": {"filter": [{"term": {"is_default": False}}]}},
        aggs={
            "words": {
                "filter": {"bool": {"must_not": [{"exists": {"field": "sku"}}]}},
                # `terms`: a watch's words as the shopper typed them, case and all; the
                # most common spellings are read and counted together in any case.
                "aggs": {"terms": {"terms": {"field": "terms", "size": 10 * TOP_N}}},
            },
            "products": {
                "terms": {"field": "sku", "size": MAX_PRODUCTS},
                "aggs": {
                    "prices": {"stats": {"field": "max_price"}},
                    "median": {"percentiles": {"field": "max_price", "percents": [50]}},
                },
            },
        },
    )
    aggregations = response.body.get("aggregations") or {}
    folded: Counter[str] = Counter()
    for bucket in aggregations.get("words", {}).get("terms", {}).get("buckets", []):
        # Folded and redacted as searches are: an e-mail address or a phone number typed
        # into a watch is not shown.
        folded[redacted(str(bucket["key"]))] += int(bucket["doc_count"])
    terms = [WatchedTerm(term=term, watches=count) for term, count in folded.most_common(TOP_N)]
    buckets = aggregations.get("products", {}).get("buckets", [])
    catalog = await _catalog(client, settings, [str(bucket["key"]) for bucket in buckets])
    products = []
    for bucket in buckets:
        sku = str(bucket["key"])
        prices = bucket.get("prices", {})
        median = (bucket.get("median", {}).get("values") or {}).get("50.0")
        found = catalog.get(sku, {})
        products.append(
            WatchedProduct(
                sku=sku,
                name=found.get("product_name"),
                price=found.get("price"),
                in_stock=found.get("in_stock"),
                watchers=int(bucket["doc_count"]),
                with_price=int(prices.get("count") or 0),
                price_min=prices.get("min"),
                price_median=None if median is None else round(float(median), 2),
                price_max=prices.get("max"),
            )
        )
    restock = [product for product in products if product.in_stock is False][:TOP_N]
    return terms, products[:TOP_N], restock


async def _catalog(
    client: AsyncElasticsearch, settings: Settings, skus: list[str]
) -> dict[str, dict[str, Any]]:
    if not skus:
        return {}
    response = await client.mget(
        index=indices.alias_for(settings, "products"),
        ids=skus,
        source_includes=["product_name", "price", "in_stock"],
    )
    return {
        str(doc["_id"]): dict(doc.get("_source") or {})
        for doc in response.body.get("docs", [])
        if doc.get("found")
    }


async def _read_offsite(
    client: AsyncElasticsearch, settings: Settings, window: _Window
) -> list[ChannelDeliveries]:
    try:
        response = await client.search(
            index=indices.alias_for(settings, "outbox"),
            size=0,
            query={"range": {"created_at": {"gte": iso_from_seconds(window.start)}}},
            aggs={
                "channels": {
                    "terms": {"field": "channel", "size": 10},
                    "aggs": {"states": {"terms": {"field": "state", "size": 10}}},
                }
            },
        )
    except elasticsearch.NotFoundError:
        return []
    counts: dict[str, dict[str, int]] = {channel: {} for channel in _OFFSITE_CHANNELS}
    for channel in (response.body.get("aggregations") or {}).get("channels", {}).get("buckets", []):
        counts[str(channel["key"])] = {
            str(state["key"]): int(state["doc_count"]) for state in channel["states"]["buckets"]
        }
    return [
        ChannelDeliveries(
            channel=channel,
            delivered=states.get("delivered", 0),
            pending=states.get("pending", 0),
            failed=states.get("failed", 0),
            suppressed=states.get("suppressed", 0),
        )
        for channel, states in counts.items()
    ]


async def read_live(client: AsyncElasticsearch, settings: Settings, now: float) -> Live:
    """Searches and alerts per second over the last LIVE_SECONDS, and the shoppers connected
    to every instance that reported lately."""
    end = now - _LIVE_LAG_SECONDS
    aggregations = await _search_log(
        client,
        settings,
        query=_range(now - _LIVE_LAG_SECONDS - max(LIVE_SECONDS, _PRESENCE_AGE_SECONDS), now + 60),
        aggs={
            "searches": {
                "filter": {"bool": {"filter": [_range(end - LIVE_SECONDS, end), _kind("search")]}},
                "aggs": {"n": {"sum": {"field": "count"}}},
            },
            "alerts": {
                "filter": {"bool": {"filter": [_range(end - LIVE_SECONDS, end), _kind("alert")]}},
                "aggs": {"n": {"sum": {"field": "alerts"}}},
            },
            "presence": {
                "filter": {
                    "bool": {
                        "filter": [_range(now - _PRESENCE_AGE_SECONDS, now + 60), _kind("presence")]
                    }
                },
                "aggs": {
                    "instances": {
                        "terms": {"field": "instance", "size": MAX_INSTANCES},
                        "aggs": {
                            "latest": {
                                "top_hits": {
                                    "size": 1,
                                    "sort": [{"at": "desc"}],
                                    "_source": ["shoppers", "sockets"],
                                }
                            }
                        },
                    }
                },
            },
        },
    )
    shoppers = sockets = instances = 0
    for bucket in aggregations.get("presence", {}).get("instances", {}).get("buckets", []):
        hits = bucket["latest"]["hits"]["hits"]
        if hits:
            instances += 1
            shoppers += int(hits[0]["_source"].get("shoppers") or 0)
            sockets += int(hits[0]["_source"].get("sockets") or 0)
    return Live(
        seconds=LIVE_SECONDS,
        searches_per_second=round(_sum(aggregations.get("searches", {}), "n") / LIVE_SECONDS, 2),
        alerts_per_second=round(_sum(aggregations.get("alerts", {}), "n") / LIVE_SECONDS, 2),
        connected_shoppers=shoppers,
        sockets=sockets,
        instances=instances,
    )


async def read_insights(
    client: AsyncElasticsearch,
    settings: Settings,
    defaults: Sequence[Watch],
    *,
    since: float,
    now: float | None = None,
) -> Insights:
    """The demand view over the last `since` seconds (and the window before it, for trends).
    `defaults`: the default watches as they stand (the watch store's)."""
    moment = time.time() if now is None else now
    window = _Window(since, moment)
    # One request at a time, not all at once: the view waits a little longer, searches not.
    searches = await _read_searches(client, settings, window)
    alerts = await _read_alerts(client, settings, window, defaults[:_MAX_DEFAULTS])
    watched = await _read_watched(client, settings)
    offsite = await _read_offsite(client, settings, window)
    live = await read_live(client, settings, moment)
    totals, top, zero, timeline, bucket = searches
    per_watch, default_rows = alerts
    terms, products, restock = watched
    return Insights(
        since=since,
        until=iso_from_seconds(moment),
        generated_at=iso_from_seconds(time.time()),
        totals=totals,
        top_searches=top,
        no_result_searches=zero,
        timeline_bucket_seconds=bucket,
        timeline=timeline,
        watched_terms=terms,
        watched_products=products,
        restock_queue=restock,
        alerts_per_watch=per_watch,
        default_watches=default_rows,
        offsite=offsite,
        live=live,
    )
