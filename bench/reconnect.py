"""Reconnect recovery: what the sockets that the load client dropped and resumed (a round
of tools/wsload/reconnect.go) missed, and what they got twice.

For each dropped socket, against the step's searches that reach it (`expected`):

- **expected while away**: those it had not received before the drop whose search was sent
  before it was greeted again: what its resumption owed it;
- **received after resuming**: of those, the ones it received on its new connection,
  replayed by the greeting or live;
- **missed**: expected and never received on that socket, before the drop or after;
- **twice**: alerts received more than once on that socket over the whole run (by seq, else
  by search), however they came: nothing is deduplicated on the way.

`recovered` counts the sockets whose server said it recovered their stream (`recovered:
true` in Centrifugo's connect reply and in Percolert's hello); None where no server said."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# wsload's record marks for a dropped socket (reconnect.go).
DROPPED, RESUMED, UNRESUMED, ROUND = "!dropped", "!resumed", "!unresumed", "!round"


@dataclass(frozen=True)
class Arrival:
    """An alert on a dropped socket: its search, when it arrived, its seq, the connection
    it came on (0 the first) and whether that connection's greeting replayed it."""

    search: str
    at: float
    seq: int
    connection: int
    replayed: bool


@dataclass
class DroppedSocket:
    """One socket a round drops, as its record lines tell it."""

    dropped_at: float | None = None
    resumed_at: float | None = None
    recovered: bool | None = None  # the server's word on it, where its protocol has one
    unresumed: bool = False
    arrivals: list[Arrival] = field(default_factory=list)


@dataclass
class Counts:
    """What a round's dropped sockets add up to (see the module's docstring)."""

    dropped: int = 0
    resumed: int = 0
    recovered: int | None = None
    complete: int = 0  # resumed and missed nothing
    expected_away: int = 0
    received_after: int = 0
    missed: int = 0
    twice: int = 0
    replayed: int = 0


@dataclass
class Recovery(Counts):
    """A round's sockets summed, with the times behind its percentiles."""

    replayed_ms: list[float] = field(default_factory=list)  # search sent -> replayed alert
    away_ms: list[float] = field(default_factory=list)  # dropped -> greeted again


def read_record(
    lines: Iterable[str], search_of: Mapping[str, str]
) -> tuple[dict[int, DroppedSocket], int | None]:
    """The dropped sockets' lines of a record, by socket, and how many sockets the round
    reports it dropped (None before its `!round` line). `search_of` names the search an
    alert's `at` was made by, as rig.Subscribers.arrivals does."""
    sockets: dict[int, DroppedSocket] = {}
    dropped: int | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue  # a socket no round drops
        mark, at, number, socket, tag = fields[:5]
        if mark == ROUND:
            dropped = (dropped or 0) + int(number)
            continue
        state = sockets.setdefault(int(socket), DroppedSocket())
        connection, _, word = tag[1:].partition("+")
        if mark == DROPPED:
            state.dropped_at = float(at)
        elif mark == RESUMED:
            state.resumed_at = float(at)
            state.recovered = None if not word else word == "recovered"
        elif mark == UNRESUMED:
            state.unresumed = True
        elif not mark.startswith("!"):
            search = search_of.get(mark, mark)
            replayed = tag.startswith("r")
            state.arrivals.append(
                Arrival(search, float(at), int(number), int(connection), replayed)
            )
    return sockets, dropped


def recovery(
    sockets: Mapping[int, DroppedSocket],
    expected: Callable[[int], set[str]],
    sent: Mapping[str, float],
) -> Recovery:
    """The sockets that were dropped, summed: `expected(socket)` is the step's searches
    that reach it, `sent` when each search of the step was sent. One round a run, as the
    harness runs them: a socket's first connection is the one before its drop."""
    summed = Recovery()
    said = 0
    for socket, state in sorted(sockets.items()):
        if state.dropped_at is None:
            continue
        summed.dropped += 1
        reach = expected(socket)
        before = {a.search for a in state.arrivals if a.connection == 0}
        after = {a.search for a in state.arrivals if a.connection > 0}
        back = state.resumed_at if state.resumed_at is not None else float("inf")
        away = {search for search in reach - before if sent[search] < back}
        missed = len(reach - before - after)
        summed.expected_away += len(away)
        summed.received_after += len(away & after)
        summed.missed += missed
        copies = Counter(a.seq or a.search for a in state.arrivals)
        summed.twice += sum(1 for count in copies.values() if count > 1)
        replayed = [a for a in state.arrivals if a.replayed]
        summed.replayed += len(replayed)
        summed.replayed_ms += [(a.at - sent[a.search]) * 1000 for a in replayed if a.search in sent]
        if state.resumed_at is not None:
            summed.resumed += 1
            if not missed:
                summed.complete += 1
            summed.away_ms.append((state.resumed_at - state.dropped_at) * 1000)
        if state.recovered is not None:
            said += state.recovered
            summed.recovered = said
    return summed


@dataclass
class Outcome(Counts):
    """A reconnect step's result as its Step carries it (bench/harness.py): the plan's share
    and time away, the Recovery's counts, and its times as percentiles (`gap_ms`: dropped
    -> greeted again). `recovered` is None where the protocol has no word for it."""

    share: float = 0.0
    away_s: float = 0.0
    replayed_alert_ms: dict[str, float] = field(default_factory=dict)
    gap_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        plan: Plan,
        summed: Recovery,
        percentiles: Callable[[list[float]], dict[str, float]],
    ) -> Outcome:
        return cls(
            **{count.name: getattr(summed, count.name) for count in fields(Counts)},
            share=plan.share,
            away_s=plan.away_s,
            replayed_alert_ms=percentiles(summed.replayed_ms),
            gap_ms=percentiles(summed.away_ms),
        )

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> Outcome | None:
        """From a saved step: its `reconnect` object, or the flat `reconnect_*` fields of
        the reports written before it (None for a rate step)."""
        nested = saved.get("reconnect")
        if nested is not None:
            return cls(**nested)
        if not saved.get("reconnect_share"):
            return None
        flat = {
            name.removeprefix("reconnect_"): value
            for name, value in saved.items()
            if name.startswith("reconnect_") or name == "replayed_alert_ms"
        }
        return cls(**flat)


@dataclass(frozen=True)
class Plan:
    """A design run's reconnect step: `share` of its sockets dropped, each away `away_s`
    seconds, at `rate` searches a second (None: the design's first rate)."""

    share: float
    away_s: float
    rate: float | None = None

    def spec(self, seconds: float) -> dict[str, float]:
        """wsload's `reconnect` for a step of `seconds`: the drops from 30 % into it, spread
        over a tenth of it, so that every socket is back well before its end."""
        return {
            "share": self.share,
            "delay_s": round(0.3 * seconds, 3),
            "spread_s": round(0.1 * seconds, 3),
            "away_s": self.away_s,
        }
