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
# How often a watch's e-mail may come to an owner who is away (core/offsite_settings.py).
Frequency = Literal["instant", "daily", "weekly", "off"]
# A product's sku: its document id, so it reaches Elasticsearch's URL, where one of dots
# only would name a path segment (`..`), not a document.
Sku = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^(?!\.+$)[A-Za-z0-9._-]+$")
]
# The changes of its product a product watch alerts on: never `new` (the product exists).
ProductWatchChange = Literal["back_in_stock", "price_drop"]


class WatchSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a shopper sends to watch for: words (`terms`), never query DSL, or one product
    (`sku`), exactly one of them ("" is no terms; the watches domain checks the rest).
    `notify` is a preference, not part of what the watch means: two watches differing only
    in it are duplicates. A product watch alerts of its product's changes `on` (both by
    default; at or under `max_price`, if given), never of searches."""

    terms: Terms = ""
    phrase: bool = False
    category: Category | None = None
    max_price: MaxPrice | None = None
    notify: Notify = "both"
    sku: Sku | None = None
    on: Annotated[list[ProductWatchChange], msgspec.Meta(min_length=1)] | None = None
    # E-mail when away: a preference as `notify` is (None: the account's choice).
    frequency: Frequency | None = None


class WatchUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """PATCH /api/watches/{id}: what may change of a watch after it is made (at least one)."""

    notify: Notify | None = None
    frequency: Frequency | None = None


class Watch(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    terms: str
    phrase: bool = False
    category: str | None = None
    max_price: float | None = None
    is_default: bool = False
    created_at: str = ""
    notify: Notify = "both"
    # A product watch's product and the changes it alerts on (its `terms`: the product's
    # name when the watch was made); None for a watch of words.
    sku: str | None = None
    on: list[ProductWatchChange] | None = None
    # How often its e-mail may come when the owner is away (None: the account's choice).
    frequency: Frequency | None = None


class WatchList(msgspec.Struct, frozen=True):
    watches: list[Watch]


class Categories(msgspec.Struct, frozen=True):
    categories: list[str]


# --- accounts ----------------------------------------------------------------------------


class RealtimeToken(msgspec.Struct, frozen=True, kw_only=True):
    """POST /api/realtime/token, with alerts delivered through Centrifugo: a connection token
    (HS256, `sub` the caller's user id) for Centrifugo's client, which subscribes the caller
    to their personal channel; ask again before `expires_at` (ISO 8601)."""

    token: str
    expires_at: str


class MergeReport(msgspec.Struct, frozen=True, kw_only=True):
    """POST /api/me/merge: of the anonymous session's own watches, how many moved into the
    account, were dropped as duplicates of the account's, or stay with the session: the
    account is at its cap (`over_cap`), or refuses them now (`refused`: a category the
    catalog no longer has, say)."""

    moved: int = 0
    duplicates: int = 0
    over_cap: int = 0
    refused: int = 0


class Erased(msgspec.Struct, frozen=True, kw_only=True):
    """What an erasure took away: documents of each index, the account's own coalescing
    windows, and the sockets it had open (on every instance)."""

    watches: int = 0
    alerts: int = 0
    product_alerts: int = 0
    seen_marks: int = 0
    product_notices: int = 0
    windows: int = 0
    sockets: int = 0
    outbox_events: int = 0  # off-site events (webhooks, e-mail) not sent or kept as a log


class ErasureReport(msgspec.Struct, frozen=True):
    """DELETE /api/admin/accounts/{id}."""

    erased: Erased


class ExportIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """Who the export is of: an anonymous session (and when it began) or a shop's account,
    known here only by the user id derived from the shop's customer id."""

    kind: Literal["anonymous", "account"]
    user_id: str
    session_started: str | None = None


class ExportSeenMark(msgspec.Struct, frozen=True):
    """Which product alerts were shown already: all at or below `upto` (less a window of
    late arrivals), and those named in `shown` (alert id to position)."""

    upto: int
    shown: dict[str, int]


class ExportContact(msgspec.Struct, frozen=True, kw_only=True):
    """An account's contact, as the shop gave it, and its e-mail preferences."""

    customer_id: str | None
    email: str | None
    frequency: Frequency | None
    timezone: str | None
    digest_hour: int | None


class ExportDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook or an e-mail about the account (its content is what `product_alerts` say)."""

    id: str
    channel: str
    type: str
    state: str
    created_at: str
    delivered_at: str | None = None


class DataExport(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/me/export: everything held of the caller. `alerts` are the alerts sent
    through their own watches, `product_alerts` theirs; each list newest first and at most
    `limit` long (`truncated` says whether one was cut). An account's `contact` and off-site
    `deliveries`, where the deployment sends any."""

    exported_at: str
    identity: ExportIdentity
    watches: list[Watch]
    alerts: list[Alert]
    product_alerts: list[ProductAlert]
    seen_mark: ExportSeenMark | None
    limit: int
    truncated: bool
    contact: ExportContact | None = None
    deliveries: list[ExportDelivery] = []


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
    sku: str | None = None  # a product watch's product


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
    none). `recovered`, on a socket opened with `after`: whether every alert missed since
    then follows (False: more were missed than are replayed, the newest 200 follow, or the
    log could not be read); None without `after`. As Centrifugo's `recovered`."""

    coalesce_seconds: float
    watches: list[Watch] | None
    recent: list[Alert]
    last_seq: int
    away: Away | None = None
    recovered: bool | None = None
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


class TokenExpiring(ServerMessage, tag="token_expiring", frozen=True):
    """The socket's token expires at `expires_at`: send a fresh one (an `auth` message for
    the same account) before then, or the socket closes (4401)."""

    expires_at: str


# --- WebSocket messages (client to server) ------------------------------------------------


class ClientMessage(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class Ping(ClientMessage, tag="ping", frozen=True):
    pass


# A JWT: a few hundred bytes, a few thousand with many claims.
TOKEN_MAX_LENGTH = 8192


class Auth(ClientMessage, tag="auth", frozen=True):
    """The shop's token for its customer: the first message of a socket opened with
    `?auth=token`, and again whenever the server says it is expiring."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=TOKEN_MAX_LENGTH)]


# Everything a client may send, decoded by one Decoder and dispatched with `match`.
ClientMessages = Ping | Auth
