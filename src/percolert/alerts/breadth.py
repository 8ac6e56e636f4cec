"""Watches too broad to alert on: a watch that matches a large share of all searches is a
firehose by another name, whatever its words.

Each instance counts the searches it percolates and, per watch, how many of them matched it,
over periods of `period_seconds`. Once a period has seen `minimum_searches` and a watch has
matched more than `share` of them, the watch's search alerts pause until the end of the next
period (its product alerts go on): its owner is told once, with the share, and can narrow it.
A paused watch that stays broad pauses again. Counted per instance: behind a load balancer
each instance sees a fair sample of the searches, and a share is the same in every sample.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import msgspec

from percolert.watches.percolator import Match, SearchEvent


class BroadWatch(msgspec.Struct, frozen=True, kw_only=True):
    """A watch whose search alerts pause until `until` (epoch seconds)."""

    match: Match
    share: float
    until: float


class Breadth:
    def __init__(
        self,
        *,
        share: float,
        minimum_searches: int,
        period_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._share = share
        self._minimum = minimum_searches
        self._period = period_seconds
        self._clock = clock
        self._period_ends = clock() + period_seconds
        self._searches = 0
        self._matched: Counter[str] = Counter()
        self._paused: dict[str, float] = {}  # watch id -> until when

    def screen(
        self, found: list[tuple[SearchEvent, list[Match]]]
    ) -> tuple[list[tuple[SearchEvent, list[Match]]], list[BroadWatch]]:
        """Count a percolated batch; return it without the matches of paused watches, and
        the watches it paused (each once, at the match that tipped it)."""
        now = self._clock()
        if now >= self._period_ends:
            self._searches = 0
            self._matched.clear()
            self._period_ends = now + self._period
            self._paused = {w: until for w, until in self._paused.items() if until > now}
        paused: list[BroadWatch] = []
        screened: list[tuple[SearchEvent, list[Match]]] = []
        for event, matches in found:
            self._searches += 1
            kept: list[Match] = []
            for match in matches:
                self._matched[match.watch_id] += 1
                if self._paused.get(match.watch_id, 0.0) > now:
                    continue
                broad = self._broad(match.watch_id)
                if broad is None:
                    kept.append(match)
                    continue
                until = self._period_ends + self._period
                self._paused[match.watch_id] = until
                paused.append(BroadWatch(match=match, share=broad, until=until))
            screened.append((event, kept))
        return screened, paused

    def _broad(self, watch_id: str) -> float | None:
        """The share of this period's searches the watch matched, if that is too broad."""
        if self._searches < self._minimum:
            return None
        share = self._matched[watch_id] / self._searches
        return share if share > self._share else None

    @property
    def paused(self) -> int:
        """Watches whose search alerts are paused now."""
        now = self._clock()
        return sum(1 for until in self._paused.values() if until > now)
