"""Watches too broad to alert on: the share of searches a watch may match, and its pause.
The counting is a pure function of the matches and the clock; the end-to-end test runs a
real server and real sockets."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from percolert.alerts.breadth import Breadth
from percolert.core.settings import Settings
from percolert.watches.percolator import Match, SearchEvent
from tests.servers import run_server
from tests.shoppers import Shopper

BROAD = Match(watch_id="w-broad", terms="phone", owner="alice")
NARROW = Match(watch_id="w-narrow", terms="kindle oasis", owner="bob")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def searches(count: int, *matching: Match) -> list[tuple[SearchEvent, list[Match]]]:
    return [(SearchEvent(text="", searcher="carol"), list(matching)) for _ in range(count)]


def test_a_watch_matching_more_than_its_share_pauses_once_the_minimum_is_seen() -> None:
    clock = Clock()
    breadth = Breadth(share=0.5, minimum_searches=10, period_seconds=60, clock=clock)
    # Nine searches, all matching the broad watch: below the minimum, nothing is judged.
    kept, paused = breadth.screen(searches(9, BROAD))
    assert paused == []
    assert all(matches == [BROAD] for _, matches in kept)
    # The tenth tips it: 10 of 10.
    kept, paused = breadth.screen(searches(1, BROAD) + searches(1, NARROW))
    assert [(broad.match, broad.share) for broad in paused] == [(BROAD, 1.0)]
    assert [matches for _, matches in kept] == [[], [NARROW]]
    assert breadth.paused == 1
    # Paused: its matches are dropped, and it is not announced again.
    kept, paused = breadth.screen(searches(5, BROAD, NARROW))
    assert paused == []
    assert all(matches == [NARROW] for _, matches in kept)


def test_a_watch_within_its_share_is_never_paused() -> None:
    breadth = Breadth(share=0.5, minimum_searches=10, period_seconds=60, clock=Clock())
    for _ in range(20):
        kept, paused = breadth.screen(searches(1, NARROW) + searches(2))  # a third
        assert paused == []
        assert kept[0][1] == [NARROW]


def test_the_pause_ends_after_the_next_period() -> None:
    clock = Clock()
    breadth = Breadth(share=0.5, minimum_searches=4, period_seconds=60, clock=clock)
    _, paused = breadth.screen(searches(4, BROAD))
    [broad] = paused
    assert broad.until == pytest.approx(1_000 + 120)
    clock.now += 61  # a new period: counts start again, the pause holds
    kept, _ = breadth.screen(searches(1, BROAD) + searches(3))
    assert kept[0][1] == []
    clock.now += 60  # past the pause: the watch alerts again until it is judged broad anew
    kept, paused = breadth.screen(searches(1, BROAD))
    assert (kept[0][1], paused) == ([BROAD], [])
    assert breadth.paused == 0


WINDOW = 0.5


@pytest.fixture(scope="module")
def server(catalog_settings: Settings) -> Iterator[str]:
    settings = msgspec.structs.replace(
        catalog_settings,
        coalesce_seconds=WINDOW,
        broad_watch_share=0.5,
        broad_watch_min_searches=6,
        broad_watch_period_seconds=3600,
    )
    with run_server(settings) as url:
        yield url


@pytest.mark.anyio
async def test_the_owner_of_a_too_broad_watch_is_told_and_its_search_alerts_pause(
    server: str,
) -> None:
    async with Shopper(server) as owner, Shopper(server) as searcher:
        broad = await owner.watch("phone")
        narrow = await owner.watch("kindle")
        socket = await owner.connect()
        await searcher.search("kindle oasis")
        await searcher.search("zebra")  # matches no watch: a search all the same
        for text in ("phone case", "phone charger", "phone stand", "phone grip", "phone"):
            await searcher.search(text)  # the sixth search tips it: 4 of 6 matched "phone"
        notice = None
        while (message := await socket.receive()) is not None:
            if message["type"] == "watch_too_broad":
                notice = message
                break
        assert notice is not None
        assert notice["watch"] == {"id": broad["id"], "terms": "phone"}
        # Every search counts, one that matched no watch too (else: 5 of 6, a search later).
        assert notice["share"] == pytest.approx(4 / 6, abs=0.001)
        # Paused: its searches alert nobody now; the narrow watch still does.
        await searcher.search("phone holder")
        alerts = await owner.alerts_before_marker(socket, searcher)
        await searcher.search("kindle paperwhite")
        later = await owner.alerts_before_marker(socket, searcher)
        # At most the follow-up of the window open before the pause (folding the searches
        # that tipped it), whenever its window ends; nothing of the search after the pause.
        of_broad = [alert for alert in alerts + later if alert["watch"]["id"] == broad["id"]]
        assert len(of_broad) <= 1
        assert all(alert["count"] >= 2 for alert in of_broad)
        assert {alert["watch"]["id"] for alert in later} - {broad["id"]} <= {narrow["id"]}
