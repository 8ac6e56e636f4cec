"""From matches to alerts: who receives what, and coalescing of repeats.

Recipients of a match are the watch's owner if they are connected or were a moment ago (the
hub's grace period; an alert for them is kept for their reconnect) — or, for a default
watch, every connected user — never the searcher. Per (recipient, watch) the first match
goes out at once; further matches within the window are folded into one follow-up alert
carrying their count (and the latest search text), sent when the window ends. A flood
therefore costs each recipient at most one alert per window and watch. Each alert is
encoded once and the same text goes to every recipient socket.

One alert per person per search holds for follow-ups too: a search a recipient heard of
through their own watch, or made, is not counted again in a default watch's follow-up.
An alert reaches no session begun after the earliest search it counts (a session that
begins during a window hears of its searches from the next alert on), and the search text
it carries is redacted (redaction.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Protocol

import anyio
import msgspec

from percolert.alertlog import AlertRecord, epoch_ms
from percolert.hub import Hub
from percolert.messages import AlertWatch
from percolert.percolator import Match, SearchEvent
from percolert.redaction import redact


class AlertSink(Protocol):
    """Where sent alerts are recorded (the alert log), and who numbers them."""

    def next_seq(self) -> int: ...

    def append(self, record: AlertRecord) -> None: ...


class _Window:
    """Matches of one watch since its last alert, until `until`."""

    __slots__ = ("not_alerted", "pending", "skip", "terms", "until")

    def __init__(self, until: float, terms: str) -> None:
        self.until = until
        self.terms = terms
        self.pending: list[SearchEvent] = []
        # Default watches only: for each pending event, who is not to hear of it in the
        # follow-up (its searcher, those told through their own watch, those sent it at
        # once); and users who have had no alert of this watch in this window (they were
        # the searcher).
        self.skip: list[set[str]] = []
        self.not_alerted: set[str] = set()


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


class AlertDispatcher:
    def __init__(
        self,
        hub: Hub,
        sink: AlertSink,
        *,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hub = hub
        self._sink = sink
        self._window = window_seconds
        self._clock = clock
        self._encoder = msgspec.json.Encoder()
        # Keyed by (watch id, owner); owner None is a default watch's shared window.
        self._windows: dict[tuple[str, str | None], _Window] = {}
        self.alerts = 0
        self.coalesced = 0

    def _send(
        self,
        query: str,
        count: int,
        at: float,
        watches: dict[str, AlertWatch] | None = None,
        *,
        since: float,
        everyone: AlertWatch | None = None,
        excluded: Collection[str] = (),
    ) -> None:
        """Number, record and send one sending about the search `query` made `at`, counting
        `count` searches made from `since` on: to each user in `watches` through their watch,
        or through `everyone` to every user but `excluded` — of sessions begun by `since`.
        Each alert is encoded once, for all of its recipient's sockets."""
        earliest_ms = epoch_ms(since)
        record = AlertRecord(
            seq=self._sink.next_seq(),
            at=_timestamp(at),
            earliest_ms=earliest_ms,
            query=redact(query),  # here, so that the log holds only what alerts show
            count=count,
            watches=watches or {},
            everyone=everyone,
            excluded=tuple(excluded),
        )
        self._sink.append(record)
        # The same comparison as replay's (whole milliseconds): a session begun later than
        # the earliest search counted gets this sending neither now nor on reconnect.
        sessions_since = earliest_ms / 1000
        if everyone is not None:
            self.alerts += 1
            self._hub.send_to_all(
                self._encoder.encode(record.alert(everyone)).decode(),
                exclude=excluded,
                since=sessions_since,
            )
            return
        self.alerts += len(record.watches)
        for user, watch in record.watches.items():
            self._hub.send_to_user(
                user, self._encoder.encode(record.alert(watch)).decode(), since=sessions_since
            )

    async def on_matches(self, event: SearchEvent, matches: list[Match]) -> None:
        self.dispatch(event, matches)

    def dispatch(self, event: SearchEvent, matches: list[Match]) -> None:
        """Alert the recipients of one search's matches: one alert per person per search.

        A user whose own watches match hears about it through the first of them; a default
        watch then reaches everyone else (the first matching default, if several do). The
        owners alerted at once share one sending (one position, one log document).
        """
        now = self._clock()
        covered = {event.searcher}  # never about one's own search
        defaults: list[Match] = []
        at_once: dict[str, AlertWatch] = {}
        for match in matches:
            if match.owner is None:
                defaults.append(match)
            elif match.owner not in covered and self._hub.reachable(match.owner):
                covered.add(match.owner)
                owned: tuple[str, str | None] = (match.watch_id, match.owner)
                window = self._current(owned, now)
                if window is None:
                    at_once[match.owner] = AlertWatch(id=match.watch_id, terms=match.terms)
                    if self._window > 0:
                        self._windows[owned] = _Window(now + self._window, match.terms)
                else:
                    window.pending.append(event)
                    self.coalesced += 1
        if at_once:
            self._send(event.text, 1, event.at, at_once, since=event.at)
        if defaults:
            shared: tuple[str, str | None] = (defaults[0].watch_id, None)
            window = self._current(shared, now)
            self._dispatch_default(shared, window, event, defaults[0], covered, now)

    def _current(self, key: tuple[str, str | None], now: float) -> _Window | None:
        """The open window of `key`, after ending it if its time is up."""
        window = self._windows.get(key)
        if window is not None and now >= window.until:
            self._flush(key, window, now)
            window = self._windows.get(key)
        return window

    def _dispatch_default(
        self,
        key: tuple[str, str | None],
        window: _Window | None,
        event: SearchEvent,
        match: Match,
        covered: set[str],
        now: float,
    ) -> None:
        watch = AlertWatch(id=match.watch_id, terms=match.terms)
        if window is None:
            self._send(event.text, 1, event.at, since=event.at, everyone=watch, excluded=covered)
            if self._window > 0:
                window = _Window(now + self._window, match.terms)
                window.not_alerted.add(event.searcher)
                self._windows[key] = window
            return
        # Someone who was the searcher so far has had nothing yet: this one is their first.
        firsts = [user for user in window.not_alerted if user not in covered]
        window.not_alerted.difference_update(firsts)
        covered.update(firsts)
        window.pending.append(event)
        window.skip.append(covered)
        self.coalesced += 1
        if firsts:
            self._send(event.text, 1, event.at, dict.fromkeys(firsts, watch), since=event.at)

    def _flush(self, key: tuple[str, str | None], window: _Window, now: float) -> None:
        """End a window: send the follow-up for what it folded, and start the next one."""
        watch_id, owner = key
        if not window.pending:
            del self._windows[key]
            return
        terms = window.terms
        watch = AlertWatch(id=watch_id, terms=terms)
        pending = window.pending
        latest = pending[-1]
        # Batches percolated side by side may finish out of order: the earliest is looked for.
        earliest = min(event.at for event in pending)
        if owner is not None:
            self._send(latest.text, len(pending), latest.at, {owner: watch}, since=earliest)
            self._windows[key] = _Window(now + self._window, terms)
            return
        special = set(window.not_alerted)
        for skip in window.skip:
            special |= skip
        self._send(
            latest.text,
            len(pending),
            latest.at,
            since=earliest,
            everyone=watch,
            excluded=special,
        )
        next_window = _Window(now + self._window, terms)
        searched = Counter(event.searcher for event in pending)
        for user in special:
            counted = [
                event for event, skip in zip(pending, window.skip, strict=True) if user not in skip
            ]
            if not counted:
                if user in window.not_alerted or searched[user] == len(pending):
                    next_window.not_alerted.add(user)
                continue
            last = counted[-1]
            since = min(event.at for event in counted)
            self._send(last.text, len(counted), last.at, {user: watch}, since=since)
        self._windows[key] = next_window

    @property
    def open_windows(self) -> int:
        """(recipient, watch) pairs whose repeats are being folded right now."""
        return len(self._windows)

    def flush_all(self) -> None:
        """Send every pending follow-up now (at shutdown)."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            window.until = now
            self._flush(key, window, now)

    def flush_due(self) -> None:
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now >= window.until:
                self._flush(key, window, now)

    async def run(self) -> None:
        """Send follow-ups as windows end, until cancelled."""
        tick = min(0.05, self._window / 4) if self._window > 0 else 0.05
        while True:
            await anyio.sleep(tick)
            self.flush_due()
