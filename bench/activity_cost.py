"""What the demand view's activity log costs per alert delivered (issue 26, part 2): every
alert a socket is sent is counted under its watch (`ActivityLog.delivered`), and a shopper's
watch is counted under its redacted words and a hash of them (`logged_watch`).

Two ways, in alternating rounds in one process, at equal work: `per-alert` works out the
watch's logged id for every delivery (as before 2026-12-07), `per-label` once per watch
label (`ActivityLog._logged`). The deliveries are those of the 1M-watch run's searches: each
reaches 125 shoppers whose watches are its one word (bench/harness.py's watches; `--terms`
gives a longer label, as a shopper's "kindle paperwhite signature edition").

    PYTHONPATH=. python bench/activity_cost.py [--words 400] [--recipients 125] [--rounds 7]

Prints CPU µs per 1,000 deliveries for each (median of the rounds) and their ratio."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from elasticsearch import AsyncElasticsearch

from percolert.core.messages import AlertWatch
from percolert.core.settings import Settings
from percolert.insights.activity import ActivityLog, _WatchCount, logged_watch


class _PerAlert(ActivityLog):
    """The count as it was: the watch's logged id worked out for every alert."""

    def _count(self, watch: AlertWatch, default: bool) -> _WatchCount:
        watch_id, label = logged_watch(watch, default)
        count = self._alerts.get(watch_id)
        if count is None:
            count = self._alerts[watch_id] = _WatchCount(label, default)
        return count


def deliveries(words: int, recipients: int, terms: str) -> list[AlertWatch]:
    """One search per word, each delivered to `recipients` owners' watches of that word."""
    return [
        AlertWatch(id=f"w{word}-{owner}", terms=terms.format(word=word))
        for word in range(words)
        for owner in range(recipients)
    ]


def measure(log: ActivityLog, sent: list[AlertWatch]) -> float:
    started = time.process_time()
    for watch in sent:
        log.delivered(watch, False, 1)
    return (time.process_time() - started) / len(sent) * 1e9  # µs per 1,000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--recipients", type=int, default=125)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--terms", default="word{word}", help="a watch's words, {word} its search's number"
    )
    args = parser.parse_args()
    settings = Settings(elasticsearch_url="http://127.0.0.1:9", state_dir=Path("/tmp"))
    client = AsyncElasticsearch("http://127.0.0.1:9")  # never asked: nothing is flushed
    sent = deliveries(args.words, args.recipients, args.terms)
    results: dict[str, list[float]] = {"per-alert": [], "per-label": []}
    for _ in range(args.rounds):
        for name, kind in (("per-alert", _PerAlert), ("per-label", ActivityLog)):
            log = kind(client, settings, lambda: (0, 0))
            results[name].append(measure(log, sent))
    medians = {name: statistics.median(times) for name, times in results.items()}
    print(
        f"{len(sent):,} deliveries ({args.words} searches x {args.recipients} shoppers), "
        f"watches like {sent[0].terms!r}"
    )
    for name, median in medians.items():
        rounds = ", ".join(f"{value:,.0f}" for value in results[name])
        print(f"{name}: {median:,.0f} µs per 1,000 deliveries (rounds: {rounds})")
    print(f"per-alert / per-label: {medians['per-alert'] / medians['per-label']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
