"""Wire formats: every HTTP body and every WebSocket message is a msgspec Struct."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from percolert.core.fields import ONE_LINE_FORBIDDEN


class ErrorDetail(msgspec.Struct, frozen=True):
    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """The one error shape: `{"error": {"code": ..., "message": ...}}`."""

    error: ErrorDetail


class SearchHit(msgspec.Struct, frozen=True):
    id: str
    product_name: str
    description: str
    price: float
    category: str
    brand: str
    in_stock: bool
    score: float


class SearchResponse(msgspec.Struct, frozen=True):
    query: str
    total: int
    took_ms: float
    results: list[SearchHit]
    # When the search was made, to the microsecond: an alert about it says the same `at`.
    at: str = ""


class Health(msgspec.Struct, frozen=True):
    status: str


class Readiness(msgspec.Struct, frozen=True):
    status: str
    elasticsearch: str
    # The alert broker: "memory" (embedded), "up" (its Redis answers); "down" is a 503.
    broker: str = "memory"


# --- watches -----------------------------------------------------------------------------

# The limit applies to the words once surrounding and repeated spaces are trimmed (the
# watches domain checks it), so the decoder does not count raw characters.
TERMS_MAX_LENGTH = 100
Terms = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        extra_json_schema={
            "maxLength": TERMS_MAX_LENGTH,
            "description": f"words; at most {TERMS_MAX_LENGTH} characters once spaces are trimmed",
        },
    ),
]
Category = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=50,
        # The characters `core.fields` refuses in a product's category.
        pattern=f"^[^{ONE_LINE_FORBIDDEN}]+$",
        description="no control characters, line or paragraph separators, bidi formatting",
    ),
]
MaxPrice = Annotated[float, msgspec.Meta(gt=0, le=10_000_000)]
# What a watch alerts on: other shoppers' searches, catalog changes (products), or both.
Notify = Literal["searches", "products", "both"]


class WatchSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a shopper sends to watch for: words, never query DSL. `notify` is a preference,
    not part of what the watch means: two watches differing only in it are duplicates."""

    terms: Terms
    phrase: bool = False
    category: Category | None = None
    max_price: MaxPrice | None = None
    notify: Notify = "both"


class WatchUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """PATCH /api/watches/{id}: what may change of a watch after it is made."""

    notify: Notify


class Watch(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    terms: str
    phrase: bool = False
    category: str | None = None
    max_price: float | None = None
    is_default: bool = False
    created_at: str = ""
    notify: Notify = "both"


class WatchList(msgspec.Struct, frozen=True):
    watches: list[Watch]


class Categories(msgspec.Struct, frozen=True):
    categories: list[str]


# --- WebSocket messages (server to client): one tagged union on "type" -------------------


class ServerMessage(msgspec.Struct, frozen=True, tag_field="type"):
    pass


# Alerts are made by the thousand per second and some wait in the alert log's buffer for a
# second or more: gc=False keeps them (plain data, never in a reference cycle) out of the
# cyclic garbage collector's full collections, which otherwise pause the server.
class AlertWatch(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """The recipient's watch an alert is about; its filters (when it has them) say which
    products fit it."""

    id: str
    terms: str
    category: str | None = None
    max_price: float | None = None


class ProductCard(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a product alert shows of a product. `previous_price`: for a price drop."""

    sku: str
    product_name: str
    price: float
    previous_price: float | None = None
    category: str
    brand: str


# The most products one search alert shows.
ALERT_FOUND_LIMIT = 3


class Alert(ServerMessage, tag="alert", frozen=True, gc=False):
    """Other shoppers' searches matched a watch of the recipient's: what matched, never what
    they typed nor who they are (protocol 2; protocol 1 carried the search text as `query`).

    `count` is how many matching searches this alert stands for: 1 for the first, more for a
    follow-up that folds the repeats seen within the coalescing window. `found`: products
    those searches found that fit the watch (its category and price), at most
    `ALERT_FOUND_LIMIT`, catalog data only. `seq` is the alert's position in the
    recipient's stream: a reconnecting client passes the last one it saw.
    """

    id: str
    seq: int
    watch: AlertWatch
    count: int
    at: str
    found: list[ProductCard] = []


ProductChange = Literal["new", "price_drop", "back_in_stock"]


class ProductAlert(ServerMessage, tag="product_alert", frozen=True, kw_only=True):
    """A catalog change matched a watch of the recipient's: a new product, a price drop, or
    a product back in stock. Kept for owners who are away (hello's `away`).

    A digest when one run of changes matched the watch with several products: `product` is
    the first, `more` the next few, `total` how many in all. `seq` orders product alerts
    (its own space, apart from search alerts' positions); `id` is unique.
    """

    id: str
    seq: int
    watch: AlertWatch
    change: ProductChange
    product: ProductCard
    at: str
    total: int = 1
    more: list[ProductCard] = []


class Away(msgspec.Struct, frozen=True):
    """Product alerts that came while the user was away, newest first (a bounded list), and
    how many more there were. Shown once per user, whichever tab greets first."""

    alerts: list[ProductAlert]
    more: int = 0


# The shape of the socket's messages. 2: search alerts carry `found` products, never the
# searches' text. A client that knows an older protocol reloads (the page) or upgrades.
PROTOCOL = 2


class Hello(ServerMessage, tag="hello", frozen=True):
    """First message on every socket. `recent` lists this session's latest alerts (for the
    page's list after a reload); `watches` is None while Elasticsearch is unreachable. Alerts
    missed since the client's `after` position follow as ordinary alert messages; `recent`
    leaves those out. `last_seq`: the position to pass back as `after` on reconnecting,
    the newest of this user's own alerts the greeting covers (never a position of anyone
    else's). `away`: product alerts not yet shown to this user anywhere (None when there are
    none)."""

    coalesce_seconds: float
    watches: list[Watch] | None
    recent: list[Alert]
    last_seq: int
    away: Away | None = None
    protocol: int = PROTOCOL


class WatchTooBroad(ServerMessage, tag="watch_too_broad", frozen=True):
    """A watch of the recipient's matched so large a share of recent searches that its
    search alerts are paused until `until` (product alerts go on): narrow it to resume."""

    watch: AlertWatch
    share: float
    until: str


class WatchesChanged(ServerMessage, tag="watches_changed", frozen=True):
    watches: list[Watch]


class Pong(ServerMessage, tag="pong", frozen=True):
    pass


# --- WebSocket messages (client to server) ------------------------------------------------


class ClientMessage(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class Ping(ClientMessage, tag="ping", frozen=True):
    pass


# Everything a client may send, decoded by one Decoder and dispatched with `match`.
ClientMessages = Ping
