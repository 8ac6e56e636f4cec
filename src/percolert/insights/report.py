"""What the demand view shows, as one JSON document: the admin page, `GET
/api/admin/insights` and `percolert insights --json` all give this shape. Every count is of
searches, watches, alerts or deliveries, never of who made them: nothing here names a shopper.

A window is the last `since` seconds up to `until`, from a whole timeline bucket; `previous`
counts are of the whole buckets just before it, scaled to the window's length (the trend).
"""

from __future__ import annotations

import msgspec


class SearchCount(msgspec.Struct, frozen=True, kw_only=True):
    """A search text (normalised, redacted) and how often it was searched in the window and in
    the one before it; `results`: the most products one of its searches found."""

    text: str
    count: int
    previous: int
    results: int


class SearchTotals(msgspec.Struct, frozen=True, kw_only=True):
    searches: int
    no_results: int
    previous_searches: int
    previous_no_results: int


class TimelinePoint(msgspec.Struct, frozen=True, kw_only=True):
    """One bucket of the window: its start (epoch seconds) and what happened in it."""

    at: float
    searches: int
    no_results: int
    alerts: int


class WatchedTerm(msgspec.Struct, frozen=True, kw_only=True):
    """The words of shoppers' own watches (default watches not counted), as they typed them
    (casefolded), and how many watches have them."""

    term: str
    watches: int


class WatchedProduct(msgspec.Struct, frozen=True, kw_only=True):
    """A product shoppers watch ("notify me"): how many, and what the catalog says of it now
    (`name`, `price`, `in_stock` are None for a product no longer in the catalog). Of those
    with a price they wait for (`with_price`), the lowest, median and highest such price."""

    sku: str
    name: str | None
    price: float | None
    in_stock: bool | None
    watchers: int
    with_price: int
    price_min: float | None
    price_median: float | None
    price_max: float | None


class WatchAlerts(msgspec.Struct, frozen=True, kw_only=True):
    """Alerts one watch sent in the window: how many (`alerts`), to how many shoppers in all
    (`reach`: each alert's recipients, summed), and how many of those alerts were followed to
    the shop (`visits`, where the SDK reports them; `visit_rate` = visits / reach)."""

    watch_id: str
    label: str
    default: bool
    alerts: int
    reach: int
    visits: int
    visit_rate: float | None


class DefaultWatch(msgspec.Struct, frozen=True, kw_only=True):
    """A default watch as it stands, with what it did in the window (zeros: it reached
    nobody, and may be retired)."""

    watch_id: str
    label: str
    created_at: str
    alerts: int
    reach: int
    visits: int


class ChannelDeliveries(msgspec.Struct, frozen=True, kw_only=True):
    """Off-site events of one channel (webhook or email) made in the window, by state."""

    channel: str
    delivered: int
    pending: int
    failed: int
    suppressed: int


class Live(msgspec.Struct, frozen=True, kw_only=True):
    """The last `seconds` on every instance: searches and alerts per second, and the shoppers
    and sockets connected as the instances last reported them."""

    seconds: float
    searches_per_second: float
    alerts_per_second: float
    connected_shoppers: int
    sockets: int
    instances: int


class Insights(msgspec.Struct, frozen=True, kw_only=True):
    since: float
    until: str
    generated_at: str
    totals: SearchTotals
    top_searches: list[SearchCount]
    no_result_searches: list[SearchCount]
    timeline_bucket_seconds: float
    timeline: list[TimelinePoint]
    watched_terms: list[WatchedTerm]
    watched_products: list[WatchedProduct]
    restock_queue: list[WatchedProduct]
    alerts_per_watch: list[WatchAlerts]
    default_watches: list[DefaultWatch]
    offsite: list[ChannelDeliveries]
    live: Live
