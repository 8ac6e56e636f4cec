"""Records shared between layers: what one sending of alerts is, as the broker carries it,
the log stores it and the hub delivers it. A plain struct, so that a broker out of process
carries it as it is, and neither the broker nor the hub needs the log to know it."""

from __future__ import annotations

import msgspec

from percolert.core.messages import ALERT_FOUND_LIMIT, Alert, AlertWatch, ProductCard


def fits(product: ProductCard, watch: AlertWatch) -> bool:
    """Whether `product` is one the watch asks for: in its category, at or under its price."""
    if watch.category is not None and product.category != watch.category:
        return False
    return watch.max_price is None or product.price <= watch.max_price


def fitting(found: tuple[ProductCard, ...], watch: AlertWatch) -> list[ProductCard]:
    """What an alert through `watch` shows of the products its searches found."""
    shown = [product for product in found if fits(product, watch)]
    return shown[:ALERT_FOUND_LIMIT]


def alert_id(seq: int, watch_id: str) -> str:
    """An alert's id: a user gets at most one alert per position and watch."""
    return f"{seq}-{watch_id}"


class AlertRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):  # see messages.Alert
    """The alerts of one sending, logged as one document: at one position (`seq`), to each
    recipient in `watches` through the watch of theirs that matched — or through the default
    watch `everyone` to every user but `excluded`. `found`: products the searches it counts
    found (catalog data, never their text), of which each alert shows those fitting its
    watch. `at` is when the (latest) search it tells of was made; `earliest_ms` when the
    earliest search it counts was (they differ for a follow-up): no session begun after that
    gets it.

    One document per sending rather than per recipient: a popular search reaches many
    subscribers at once, and writing a document for each of them was most of what the log
    cost Elasticsearch (docs/benchmarks/README.md).
    """

    seq: int
    at: str
    earliest_ms: int
    count: int = 1
    found: tuple[ProductCard, ...] = ()
    watches: dict[str, AlertWatch] = msgspec.field(default_factory=dict)
    everyone: AlertWatch | None = None
    excluded: tuple[str, ...] = ()

    def watch_for(self, user: str) -> AlertWatch | None:
        watch = self.watches.get(user)
        if watch is None and self.everyone is not None and user not in self.excluded:
            return self.everyone
        return watch

    def alert(self, watch: AlertWatch) -> Alert:
        return Alert(
            id=alert_id(self.seq, watch.id),
            seq=self.seq,
            watch=watch,
            count=self.count,
            at=self.at,
            found=fitting(self.found, watch),
        )

    def alert_for(self, user: str) -> Alert | None:
        watch = self.watch_for(user)
        return None if watch is None else self.alert(watch)

    def names(self, user: str) -> bool:
        """Whether the sending names `user`: as a recipient, or as excluded from everyone."""
        return user in self.watches or user in self.excluded

    def without(self, user: str) -> AlertRecord | None:
        """The sending with `user` taken out (their account was erased); None when it was
        theirs alone."""
        if not self.names(user):
            return self
        watches = {recipient: w for recipient, w in self.watches.items() if recipient != user}
        if not watches and self.everyone is None:
            return None
        excluded = tuple(other for other in self.excluded if other != user)
        return msgspec.structs.replace(self, watches=watches, excluded=excluded)
