"""The embedded broker, for one process: coalescing windows in a dict, positions from the
alert log, and delivery straight to the local hub (delivery.py).

Nothing here awaits: each call runs to its end without yielding, so a search's decisions,
the follow-ups ended on the way and the sendings they make are never interleaved with
another's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import msgspec

from percolert.broker.base import (
    Asked,
    BrokerStatus,
    DefaultCandidate,
    ErasureListener,
    Followup,
    Hits,
    OwnedCandidate,
    SearchFold,
    Sending,
    UserErased,
)
from percolert.core.messages import AlertWatch
from percolert.core.records import AlertRecord
from percolert.realtime.delivery import Deliverer, Delivery, DeliveryObserver
from percolert.realtime.hub import Hub


class AlertSink(Protocol):
    """Where sent alerts are recorded (the alert log), and who numbers them."""

    @property
    def last_seq(self) -> int: ...

    def next_seq(self) -> int: ...

    def append(self, record: AlertRecord) -> None: ...


class _Window:
    """Searches folded into one watch's window since its last alert, until `until`."""

    __slots__ = ("not_alerted", "pending", "until", "watch")

    def __init__(self, until: float, watch: AlertWatch) -> None:
        self.until = until
        self.watch = watch
        self.pending: list[SearchFold] = []
        # Default watches only: users who have had no alert of this watch in this window
        # (they were the searcher).
        self.not_alerted: set[str] = set()


class MemoryBroker:
    """Windows are keyed by (watch id, owner); owner None is a default watch's shared
    window. Whether an owner is worth an alert at all is the hub's `reachable`."""

    def __init__(
        self,
        hub: Hub,
        sink: AlertSink,
        *,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_erased: ErasureListener | None = None,
        on_delivered: DeliveryObserver | None = None,
        delivery: Deliverer | None = None,
    ) -> None:
        """`delivery`: where sendings go, and who is reachable (default: the hub's sockets)."""
        self._hub = hub
        self._on_erased = on_erased
        self._delivery = delivery or Delivery(hub, on_delivered)
        self._reachable = self._delivery.reachable
        self._sink = sink
        self._window = window_seconds
        self._clock = clock
        self._windows: dict[tuple[str, str | None], _Window] = {}

    @property
    def status(self) -> BrokerStatus:
        return "memory"

    async def connected(self, user: str, *, max_sockets: int | None = None) -> int:
        # Sendings are delivered as they are numbered, so the hub already has every later one.
        return self._sink.last_seq

    async def disconnected(self, user: str) -> None:
        return None

    async def hits(
        self, search: SearchFold, owned: list[OwnedCandidate], default: DefaultCandidate | None
    ) -> Hits:
        now = self._clock()
        due: list[Followup] = []
        covered = {search.searcher}
        immediate: list[OwnedCandidate] = []
        coalesced = 0
        for candidate in owned:
            if not self._reachable(candidate.owner):
                continue
            covered.add(candidate.owner)
            key: tuple[str, str | None] = (candidate.watch_id, candidate.owner)
            window = self._current(key, now, due)
            if window is None:
                immediate.append(candidate)
                if self._window > 0:
                    self._windows[key] = _Window(now + self._window, candidate.watch)
            else:
                window.pending.append(search)
                coalesced += 1
        if default is None:
            return Hits(
                immediate=immediate, covered=frozenset(covered), coalesced=coalesced, due=due
            )
        shared: tuple[str, str | None] = (default.watch_id, None)
        window = self._current(shared, now, due)
        if window is None:
            if self._window > 0:
                window = _Window(now + self._window, default.watch)
                window.not_alerted.add(search.searcher)
                self._windows[shared] = window
            return Hits(
                immediate=immediate,
                covered=frozenset(covered),
                to_everyone=True,
                coalesced=coalesced,
                due=due,
            )
        # Someone who was the searcher so far has had nothing yet: this one is their first.
        firsts = [user for user in window.not_alerted if user not in covered]
        window.not_alerted.difference_update(firsts)
        covered.update(firsts)
        window.pending.append(msgspec.structs.replace(search, skip=frozenset(covered)))
        return Hits(
            immediate=immediate,
            covered=frozenset(covered),
            firsts=firsts,
            coalesced=coalesced + 1,
            due=due,
        )

    async def hits_many(self, searches: list[Asked]) -> list[Hits]:
        return [await self.hits(*asked) for asked in searches]

    def _current(
        self, key: tuple[str, str | None], now: float, due: list[Followup]
    ) -> _Window | None:
        """The open window of `key`, after ending it if its time is up."""
        window = self._windows.get(key)
        if window is not None and now >= window.until:
            self._end(key, window, now, due)
            window = self._windows.get(key)
        return window

    def _end(
        self, key: tuple[str, str | None], window: _Window, now: float, due: list[Followup]
    ) -> None:
        """End a window: its follow-up is due if it folded anything, and the next starts."""
        _, owner = key
        pending = window.pending
        if not pending:
            del self._windows[key]
            return
        next_window = _Window(now + self._window, window.watch)
        due.append(
            Followup(
                watch=window.watch,
                owner=owner,
                events=pending,
                not_alerted=frozenset(window.not_alerted),
            )
        )
        if owner is None:
            # Whoever the follow-up cannot tell anything (they made or heard of every
            # search in it) and has had nothing of this watch is owed the next one at once.
            searched = Counter(event.searcher for event in pending)
            special = set(window.not_alerted)
            for event in pending:
                special |= event.skip
            for user in special:
                if all(user in event.skip for event in pending) and (
                    user in window.not_alerted or searched[user] == len(pending)
                ):
                    next_window.not_alerted.add(user)
        self._windows[key] = next_window

    async def claim_due(self, *, everything: bool = False) -> list[Followup]:
        now = self._clock()
        due: list[Followup] = []
        for key, window in list(self._windows.items()):
            if everything or now >= window.until:
                self._end(key, window, now, due)
        return due

    async def publish(
        self, sendings: list[Sending], *, guard: str | None = None
    ) -> list[AlertRecord]:
        # No claims here: a follow-up is ended by the one process that sends it.
        records = []
        for sending in sendings:
            record = sending.numbered(self._sink.next_seq())
            self._sink.append(record)
            self._delivery.deliver(record)
            records.append(record)
        return records

    async def unwritten(self, after: int, upto: int) -> list[AlertRecord]:
        return []  # every sending is in this process's log buffer until written

    async def notify_user(self, user: str, payload: str) -> None:
        self._delivery.deliver_user(user, payload)

    async def erase_user(self, user: str) -> UserErased:
        windows = searches = 0
        for key, window in list(self._windows.items()):
            if key[1] == user:
                del self._windows[key]
                windows += 1
                continue
            window.not_alerted.discard(user)
            for index, fold in enumerate(window.pending):
                if fold.searcher == user:
                    searches += 1
                if fold.searcher == user or user in fold.skip:
                    window.pending[index] = fold.without(user)
        sockets = self._delivery.erase(user)
        if self._on_erased is not None:
            self._on_erased(user)
        return UserErased(sockets=sockets, windows=windows, searches=searches)

    @property
    def open_windows(self) -> int:
        return len(self._windows)
