"""From matches to alerts: who receives what, and coalescing of repeats.

Recipients of a match are the watch's owner if they are connected or were a moment ago (the
hub's grace period; an alert for them is kept for their reconnect) — or, for a default
watch, every connected user — never the searcher. Per (recipient, watch) the first match
goes out at once; further matches within the window are folded into one follow-up alert
carrying their count (and the products their searches found), sent when the window ends.
A flood therefore costs each recipient at most one alert per window and watch. Each alert is
encoded once and the same text goes to every recipient socket.

An alert says what matched, never what was typed: the watch, how many searches, and the
products those searches found that fit the watch (its category and price). No pattern can
redact a stranger's name, address or phishing text, so search text never leaves percolation:
not in windows, not in the broker, not in the log.

One alert per person per search holds for follow-ups too: a search a recipient heard of
through their own watch, or made, is not counted again in a default watch's follow-up.
An alert reaches no session begun after the earliest search it counts (a session that
begins during a window hears of its searches from the next alert on).

The dispatcher chooses the candidates; the broker (broker.py) keeps the windows, decides
what each search opens or folds, numbers the sendings and delivers them: a percolated batch
at a time (one `hits_many` and one `publish` call for all its searches). While a shared
broker is unavailable, the searches with matches (and sendings it could not publish) wait
in a bounded spool, in order, and go out when it is back: alerts late, not lost. Windows
are decided then, on the broker's clock; a full spool drops its oldest, counted and logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

import anyio
import msgspec

from percolert.alerts.breadth import Breadth, BroadWatch
from percolert.alerts.log import epoch_ms
from percolert.broker.base import (
    Asked,
    Broker,
    BrokerUnavailable,
    DefaultCandidate,
    Followup,
    Hits,
    OwnedCandidate,
    SearchFold,
    Sending,
)
from percolert.core.messages import AlertWatch, ProductCard, WatchTooBroad
from percolert.core.records import AlertRecord, fitting
from percolert.core.times import iso_from_seconds, iso_to_microsecond
from percolert.watches.percolator import Match, SearchEvent

logger = logging.getLogger(__name__)

# At most this many waiting searches go to the broker in one call when it is back.
_DRAIN_BATCH = 64


def _found_in(events: list[SearchFold], watch: AlertWatch) -> tuple[ProductCard, ...]:
    """What a follow-up through `watch` shows: products its folded searches found that fit
    the watch, the latest search's first, each once."""
    products: dict[str, ProductCard] = {}
    for event in reversed(events):
        for product in event.found:
            products.setdefault(product.sku, product)
    return tuple(fitting(tuple(products.values()), watch))


def _sending(
    search: SearchFold,
    count: int,
    found: tuple[ProductCard, ...],
    *,
    since: float,
    watches: dict[str, AlertWatch] | None = None,
    everyone: AlertWatch | None = None,
    excluded: Iterable[str] = (),
) -> Sending:
    """One sending about `search`, counting `count` searches made from `since` on, which
    found `found`: to each user in `watches` through their watch, or through `everyone` to
    every user but `excluded` — of sessions begun by `since`."""
    return Sending(
        at=iso_to_microsecond(search.at),  # as the search's answer says it
        earliest_ms=epoch_ms(since),
        count=count,
        found=found,
        watches=watches or {},
        everyone=everyone,
        excluded=tuple(excluded),
    )


def followup_sendings(followup: Followup) -> list[Sending]:
    """The follow-up of an ended window: to its owner, the count and latest of what it
    folded; for a default watch, the same to everyone else, and to each user who heard of
    some of its searches otherwise, a count of only the others."""
    watch = followup.watch
    events = followup.events
    latest = events[-1]
    found = _found_in(events, watch)
    # Batches percolated side by side may finish out of order: the earliest is looked for.
    earliest = min(event.at for event in events)
    if followup.owner is not None:
        return [
            _sending(latest, len(events), found, since=earliest, watches={followup.owner: watch})
        ]
    special = set(followup.not_alerted)
    for event in events:
        special |= event.skip
    sendings = [
        _sending(latest, len(events), found, since=earliest, everyone=watch, excluded=special)
    ]
    for user in special:
        counted = [event for event in events if user not in event.skip]
        if counted:
            since = min(event.at for event in counted)
            sendings.append(
                _sending(
                    counted[-1],
                    len(counted),
                    _found_in(counted, watch),
                    since=since,
                    watches={user: watch},
                )
            )
    return sendings


def _candidates(
    event: SearchEvent, matches: list[Match]
) -> tuple[list[OwnedCandidate], DefaultCandidate | None]:
    """Each owner's first matching watch (never the searcher's own), and the first default."""
    owners = {event.searcher}  # never about one's own search
    owned: list[OwnedCandidate] = []
    default: DefaultCandidate | None = None
    for match in matches:
        if match.owner is None:
            if default is None:
                default = DefaultCandidate(watch=match.watch)
        elif match.owner not in owners:
            owners.add(match.owner)
            owned.append(OwnedCandidate(watch=match.watch, owner=match.owner))
    return owned, default


def _compose(search: SearchFold, default: DefaultCandidate | None, hits: Hits) -> list[Sending]:
    """One search's sendings, in the order of their positions: each owned window's
    follow-up that ended, the owners alerted at once, the default window's follow-up, then
    the default watch's alert."""
    sendings = [
        sending
        for followup in hits.due
        if followup.owner is not None
        for sending in followup_sendings(followup)
    ]
    if hits.immediate:
        at_once = {candidate.owner: candidate.watch for candidate in hits.immediate}
        sendings.append(_sending(search, 1, search.found, since=search.at, watches=at_once))
    sendings.extend(
        sending
        for followup in hits.due
        if followup.owner is None
        for sending in followup_sendings(followup)
    )
    if default is not None:
        watch = default.watch
        if hits.to_everyone:
            sendings.append(
                _sending(
                    search, 1, search.found, since=search.at, everyone=watch, excluded=hits.covered
                )
            )
        elif hits.firsts:
            firsts: dict[str, AlertWatch] = dict.fromkeys(hits.firsts, watch)
            sendings.append(_sending(search, 1, search.found, since=search.at, watches=firsts))
    return sendings


class _Search(NamedTuple):
    """A search with matches, kept until the broker is back."""

    event: SearchEvent
    matches: list[Match]


class AlertDispatcher:
    """Alerts through a broker; `window_seconds` (the broker's window) paces the checks for
    ended windows; `spool` bounds what waits while the broker is unavailable."""

    def __init__(
        self,
        broker: Broker,
        *,
        window_seconds: float,
        spool: int = 100_000,
        breadth: Breadth | None = None,
        on_published: Callable[[list[AlertRecord]], None] | None = None,
    ) -> None:
        self._broker = broker
        # Told of the sendings this instance published (the search log counts them).
        self._on_published = on_published
        self._window = window_seconds
        # Pauses watches that match too large a share of searches (None: no bound).
        self.breadth = breadth
        self._encoder = msgspec.json.Encoder()
        self.alerts = 0
        self.coalesced = 0
        # Searches (and sendings) waiting for the broker, oldest first.
        self._spool: deque[_Search | list[Sending]] = deque()
        self._spool_bound = spool
        self._draining = False
        self.spool_dropped = 0

    @property
    def spooled(self) -> int:
        return len(self._spool)

    async def on_matches(self, event: SearchEvent, matches: list[Match]) -> None:
        await self.on_batch([(event, matches)])

    async def on_batch(self, found: list[tuple[SearchEvent, list[Match]]]) -> None:
        """The searches of a percolated batch, in order (the percolator's callback)."""
        if self.breadth is not None:
            found, paused = self.breadth.screen(found)
            for broad in paused:
                await self._paused(broad)
        searches = [_Search(event, matches) for event, matches in found if matches]
        if not searches:
            return
        if self._spool or self._draining or self._broker.status == "down":
            for search in searches:
                self._keep(search)  # behind the ones already waiting
            return
        try:
            await self.dispatch_many(searches)
        except BrokerUnavailable:
            for search in searches:
                self._keep(search)

    async def _paused(self, broad: BroadWatch) -> None:
        """Tell a too-broad watch's owner (an admin, through the log, for a default watch)."""
        match = broad.match
        logger.warning(
            "%s watch %s matched %.0f%% of recent searches: its search alerts pause until %s",
            "default" if match.owner is None else "a shopper's",
            match.watch_id,
            broad.share * 100,
            iso_from_seconds(broad.until),
        )
        if match.owner is None:
            return
        notice = WatchTooBroad(
            watch=match.watch,
            share=round(broad.share, 3),
            until=iso_from_seconds(broad.until),
        )
        with contextlib.suppress(BrokerUnavailable):
            await self._broker.notify_user(match.owner, self._encoder.encode(notice).decode())

    def _keep(self, item: _Search | list[Sending], *, first: bool = False) -> None:
        if not self._spool:
            logger.warning("the broker is unavailable: alerts wait until it is back")
        if first:
            self._spool.appendleft(item)
        else:
            self._spool.append(item)
        if len(self._spool) > self._spool_bound:
            self._spool.popleft()
            self.spool_dropped += 1
            if self.spool_dropped % 10_000 == 1:
                logger.error(
                    "broker spool full (%d): dropped the oldest waiting search, %d so far",
                    self._spool_bound,
                    self.spool_dropped,
                )

    async def _drain(self) -> None:
        """Dispatch what waited, in order, while the broker takes it."""
        sent = 0
        self._draining = True
        try:
            while self._spool and self._broker.status != "down":
                item = self._spool.popleft()
                if isinstance(item, _Search):
                    # Consecutive waiting searches go out together, as a percolated batch.
                    batch = [item]
                    while self._spool and len(batch) < _DRAIN_BATCH:
                        following = self._spool[0]
                        if not isinstance(following, _Search):
                            break
                        self._spool.popleft()
                        batch.append(following)
                    try:
                        await self.dispatch_many(batch)
                    except BrokerUnavailable:
                        self._spool.extendleft(reversed(batch))
                        break
                    sent += len(batch)
                else:
                    await self._publish(item)  # puts it back first if it fails
                    sent += 1
        finally:
            self._draining = False
        if sent:
            logger.info("the broker is back: sent %d waiting searches, %d wait", sent, self.spooled)

    async def dispatch(self, event: SearchEvent, matches: list[Match]) -> None:
        """Alert the recipients of one search's matches: one alert per person per search.

        A user whose own watches match hears about it through the first of them; a default
        watch then reaches everyone else (the first matching default, if several do). The
        owners alerted at once share one sending (one position, one log document).
        """
        await self.dispatch_many([_Search(event, matches)])

    async def dispatch_many(self, searches: Iterable[_Search]) -> None:
        """`dispatch` for several searches, in order, as that many calls would, but with one
        `hits_many` and one `publish` for them all: a shared broker's round trips per batch,
        not per search. `BrokerUnavailable`: nothing of them was decided or sent."""
        asked: list[Asked] = []
        for event, matches in searches:
            owned, default = _candidates(event, matches)
            if owned or default is not None:
                # Its products, not its text: windows and the log hold only what alerts show.
                search = SearchFold(found=event.products, at=event.at, searcher=event.searcher)
                asked.append(Asked(search, owned, default))
        if not asked:
            return
        decided = await self._broker.hits_many(asked)
        sendings: list[Sending] = []
        for (search, _, default), hits in zip(asked, decided, strict=True):
            self.coalesced += hits.coalesced
            sendings += _compose(search, default, hits)
        await self._publish(sendings)

    async def _publish(self, sendings: list[Sending], *, guard: str | None = None) -> None:
        if not sendings:
            return
        try:
            records = await self._broker.publish(sendings, guard=guard)
        except BrokerUnavailable:
            if guard is None:
                # Their windows are decided already: they go out first when the broker is back.
                self._keep(sendings, first=True)
            # A claimed follow-up stays claimed in Redis: when its lease lapses, whichever
            # instance claims it again sends it (kept here, it could go out twice).
            return
        for record in records:
            self.alerts += 1 if record.everyone is not None else len(record.watches)
        if self._on_published is not None:
            self._on_published(records)

    @property
    def open_windows(self) -> int:
        """(recipient, watch) pairs whose repeats are being folded right now."""
        return self._broker.open_windows

    async def _follow_up(self, *, everything: bool) -> None:
        try:
            followups = await self._broker.claim_due(everything=everything)
        except BrokerUnavailable:
            return  # the windows stay in the broker: claimed when it is back
        if not any(followup.token for followup in followups):
            await self._publish([s for f in followups for s in followup_sendings(f)])
            return
        # Claimed follow-ups go out each with its own claim (exactly once across instances).
        for followup in followups:
            await self._publish(followup_sendings(followup), guard=followup.token or None)

    async def flush_all(self) -> None:
        """Send what waited for the broker and every pending follow-up now (at shutdown)."""
        await self._drain()
        if self._spool:
            logger.error(
                "stopping with the broker unavailable: the alerts of %d waiting searches are lost",
                len(self._spool),
            )
        await self._follow_up(everything=True)

    async def flush_due(self) -> None:
        await self._follow_up(everything=False)

    async def run(self) -> None:
        """Send follow-ups as windows end, until cancelled."""
        tick = min(0.05, self._window / 4) if self._window > 0 else 0.05
        while True:
            await anyio.sleep(tick)
            if self._spool and self._broker.status != "down":
                await self._drain()
            await self.flush_due()
