"""What a broker is: the coalescing windows, the positions and the publishing of alerts,
behind one interface (centrifuge's broker.go), with one file per backend — broker_memory.py
is the embedded one. The dispatcher (alerts.py) chooses who may hear of a search; the broker
decides what that search opens or folds, numbers the sendings and hands them to every
socket of their recipients. The hub stays local and knows no broker.

What crosses the interface is msgspec structs, so that a backend out of process can carry
them as they are. The parts only a shared backend needs (presence per connection and its
cut, replay of what other instances have not yet written, claims of follow-ups under a
lease) come with it: docs/design/multi-instance.md, §3, §6 and §7.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol

import msgspec

from percolert.core.messages import AlertWatch, ProductCard
from percolert.core.records import AlertRecord

# "memory": the embedded broker (always there); "up"/"down": the shared one, whether its
# Redis answers (readiness reports it).
BrokerStatus = Literal["memory", "up", "down"]


class BrokerUnavailable(Exception):
    """The shared broker cannot be reached now: nothing was decided or sent; try later."""


class TooManySockets(Exception):
    """The user already holds the most sockets allowed, on all instances together."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"too many open connections for this session: at most {limit}; close another tab"
        )
        self.limit = limit


class _Watched(msgspec.Struct, frozen=True, kw_only=True):
    """Of a watch: as alerts name it (its id, words and the filters that say which products
    fit it; a window keeps it for its follow-up)."""

    watch: AlertWatch

    @property
    def watch_id(self) -> str:
        return self.watch.id


class OwnedCandidate(_Watched, frozen=True, kw_only=True):
    """A user's own watch that matched a search they did not make (their first one)."""

    owner: str


class DefaultCandidate(_Watched, frozen=True, kw_only=True):
    """The first default watch that matched a search."""


class SearchFold(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a window keeps of one search: what it found that alerts may show (products,
    never the text typed), when it was made and by whom, and — in a default watch's window —
    who is not to hear of it again in the follow-up (its searcher, those told through their
    own watch or at once)."""

    found: tuple[ProductCard, ...] = ()
    at: float
    searcher: str
    skip: frozenset[str] = frozenset()

    def without(self, user: str) -> SearchFold:
        """This search with `user` forgotten (erased): no longer its searcher (it still
        counts for the window's owner, by nobody), nor among those it skips (no follow-up
        is made for them)."""
        return msgspec.structs.replace(
            self, searcher="" if self.searcher == user else self.searcher, skip=self.skip - {user}
        )


class Followup(_Watched, frozen=True, kw_only=True):
    """A window that ended with searches folded into it: its follow-up is due. `owner` is
    None for a default watch's shared window; `not_alerted` (default windows only) are the
    users who had no alert of the watch in the window because they were its searchers.
    `token`: a shared broker's claim on it (publish it with `guard=token`: it goes out once,
    whichever instance claimed it last); empty in the embedded one."""

    owner: str | None
    events: list[SearchFold]
    not_alerted: frozenset[str] = frozenset()
    token: str = ""


class Asked(NamedTuple):
    """One search put to the broker: its fold and its candidates (`Broker.hits_many`)."""

    search: SearchFold
    owned: list[OwnedCandidate]
    default: DefaultCandidate | None


class Hits(msgspec.Struct, frozen=True, kw_only=True):
    """The broker's decisions for one search.

    `immediate`: owners whose window opened, to be alerted now. `covered`: the searcher and
    every reachable owner, whom the default watch's alert skips. `to_everyone`: the default
    watch's window opened, so its alert goes to everyone but `covered` now; otherwise
    `firsts` are the users who hear of it now (they had nothing of that window yet).
    `coalesced`: how many (recipient, watch) windows folded the search in. `due`: windows
    that had ended when this search came, in the order their follow-ups go out (each owned
    one before the immediate alert, the default one before the default's alert)."""

    immediate: list[OwnedCandidate]
    covered: frozenset[str]
    to_everyone: bool = False
    firsts: list[str] = []
    coalesced: int = 0
    due: list[Followup] = []


class Sending(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An `AlertRecord` before it has a position."""

    at: str
    earliest_ms: int
    count: int = 1
    found: tuple[ProductCard, ...] = ()
    watches: dict[str, AlertWatch] = {}
    everyone: AlertWatch | None = None
    excluded: tuple[str, ...] = ()

    def numbered(self, seq: int) -> AlertRecord:
        return AlertRecord(
            seq=seq,
            at=self.at,
            earliest_ms=self.earliest_ms,
            count=self.count,
            found=self.found,
            watches=self.watches,
            everyone=self.everyone,
            excluded=self.excluded,
        )


class UserErased(msgspec.Struct, frozen=True, kw_only=True):
    """What a broker forgot of an erased user: their sockets it knew open (on every
    instance), their own coalescing windows, and their searches folded into other users'
    windows (kept for those users' counts, without who made them)."""

    sockets: int = 0
    windows: int = 0
    searches: int = 0


# Told, on each instance, of a user erased (after the user's sockets there were closed):
# what the instance keeps of them beside the broker goes too (its unwritten alert log, say).
ErasureListener = Callable[[str], None]


class Broker(Protocol):
    @property
    def status(self) -> BrokerStatus:
        """Whether the broker works now; while it is "down", `hits`, `claim_due` and
        `publish` raise `BrokerUnavailable`."""
        ...

    async def connected(self, user: str, *, max_sockets: int | None = None) -> int:
        """A socket of `user` opened here: count them reachable and return the cut, the
        last position the socket's greeting replays (later ones reach it live). A shared
        broker raises TooManySockets when the user already holds `max_sockets` on all
        instances together (registering nothing); one process counts its own at the door."""
        ...

    async def disconnected(self, user: str) -> None:
        """A socket of `user` here closed (it is already out of the hub)."""
        ...

    async def hits(
        self, search: SearchFold, owned: list[OwnedCandidate], default: DefaultCandidate | None
    ) -> Hits:
        """Decide, for one search, which of its reachable candidates hear of it now and
        which windows fold it in; end the windows of these candidates that are over."""
        ...

    async def hits_many(self, searches: list[Asked]) -> list[Hits]:
        """`hits` for several searches at once (a percolated batch), in order: the same
        decisions as that many `hits` calls one after another, in one round trip to a shared
        broker. All or nothing: `BrokerUnavailable` means none of them was decided."""
        ...

    async def claim_due(self, *, everything: bool = False) -> list[Followup]:
        """End the windows that are over (all of them, at shutdown) and return those whose
        follow-up is due; the next window of each starts now."""
        ...

    async def publish(
        self, sendings: list[Sending], *, guard: str | None = None
    ) -> list[AlertRecord]:
        """Number each sending, record it in the alert log and deliver it to every open
        socket of its recipients, in order; returns the records. `guard`: the token of the
        claimed follow-up these sendings are; if that claim is no longer held (another
        instance took it over and sent it), nothing is sent and [] is returned."""
        ...

    async def unwritten(self, after: int, upto: int) -> list[AlertRecord]:
        """Sendings with after < seq <= upto that instances (this one included) made and
        have not yet written to the alert log, newest first; [] with one process, whose log
        buffer holds them all. Read before the log itself: a sending leaves here only once
        the log shows it."""
        ...

    async def notify_user(self, user: str, payload: str) -> None:
        """Send a ready-made message to every open socket of `user`."""
        ...

    async def erase_user(self, user: str) -> UserErased:
        """Forget everything kept of `user` (their presence, their coalescing windows, their
        searches in other users' windows: who made them) and close their sockets on every
        instance (the hub's ACCOUNT_ERASED), each instance's erasure listener told. A shared
        broker raises `BrokerUnavailable` while it cannot reach them all."""
        ...

    @property
    def open_windows(self) -> int:
        """(recipient, watch) pairs whose repeats are being folded right now."""
        ...
