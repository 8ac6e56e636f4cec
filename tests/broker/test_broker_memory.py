"""The embedded broker's own contract: windows, positions from the alert log, and delivery to
the local hub (the dispatcher's use of it is in test_dispatch.py, end to end in
test_alerts.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch

from percolert.alerts.dispatch import followup_sendings
from percolert.alerts.log import AlertLog
from percolert.broker.base import DefaultCandidate, OwnedCandidate, SearchFold, Sending
from percolert.broker.memory import MemoryBroker
from percolert.core.messages import AlertWatch, ProductCard
from percolert.core.records import AlertRecord
from percolert.realtime.hub import Connection, Hub

pytestmark = pytest.mark.anyio

WINDOW = 2.0
KINDLE_OF_A = OwnedCandidate(watch=AlertWatch(id="w-a", terms="kindle"), owner="a")
DEFAULT = DefaultCandidate(watch=AlertWatch(id="default-1", terms="iphone"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Numbering:
    def __init__(self) -> None:
        self.logged: list[AlertRecord] = []

    @property
    def last_seq(self) -> int:
        return len(self.logged)

    def next_seq(self) -> int:
        return len(self.logged) + 1

    def append(self, record: AlertRecord) -> None:
        self.logged.append(record)


async def _never(payload: str) -> None:
    raise AssertionError("not written in these tests")


def connect(hub: Hub, user: str) -> Connection:
    connection = Connection(user, _never, 100)
    hub.add(connection)
    return connection


def queued(connection: Connection) -> list[Any]:
    """What the hub queued for a socket whose writer does not run."""
    return [json.loads(payload) for payload in connection._queue]


def card(label: str, *, category: str = "ereaders", price: float = 99.0) -> ProductCard:
    """A product whose sku (and name) is `label`: what a search, or a sending, found."""
    return ProductCard(sku=label, product_name=label, price=price, category=category, brand="acme")


def skus(products: tuple[ProductCard, ...] | list[ProductCard]) -> list[str]:
    return [product.sku for product in products]


def search(label: str, searcher: str, at: float = 1_700_000_000.0) -> SearchFold:
    """A search that found one product, `label`."""
    return SearchFold(found=(card(label),), at=at, searcher=searcher)


def sending(label: str, user: str) -> Sending:
    return Sending(
        at="2023-11-14T22:13:20.000+00:00",
        earliest_ms=0,
        found=(card(label),),
        watches={user: AlertWatch(id="w-" + user, terms="kindle")},
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(clock: Clock) -> MemoryBroker:
    return MemoryBroker(Hub(), Numbering(), window_seconds=WINDOW, clock=clock)


async def test_a_window_gives_one_immediate_alert_then_one_follow_up_with_the_count(
    broker: MemoryBroker, clock: Clock
) -> None:
    first = await broker.hits(search("kindle one", "b"), [KINDLE_OF_A], None)
    assert first.immediate == [KINDLE_OF_A]
    assert first.covered == {"a", "b"}
    assert broker.open_windows == 1
    for number in range(3):
        clock.now += 0.1
        folded = await broker.hits(search(f"kindle {number}", "c"), [KINDLE_OF_A], None)
        assert folded.immediate == []
        assert folded.coalesced == 1
    assert await broker.claim_due() == []  # not over yet
    clock.now += WINDOW
    [followup] = await broker.claim_due()
    assert (followup.owner, followup.watch_id, followup.watch.terms) == ("a", "w-a", "kindle")
    assert [skus(event.found) for event in followup.events] == [
        ["kindle 0"],
        ["kindle 1"],
        ["kindle 2"],
    ]
    [follow_up_sending] = followup_sendings(followup)
    # What the folded searches found, the latest search's first.
    assert follow_up_sending.count == 3
    assert skus(follow_up_sending.found) == ["kindle 2", "kindle 1", "kindle 0"]
    # The next window started with the follow-up; quiet, it ends with nothing due.
    assert broker.open_windows == 1
    clock.now += WINDOW
    assert await broker.claim_due() == []
    assert broker.open_windows == 0
    again = await broker.hits(search("kindle again", "b"), [KINDLE_OF_A], None)
    assert again.immediate == [KINDLE_OF_A]


async def test_an_ended_window_is_due_before_the_search_that_finds_it_ended(
    broker: MemoryBroker, clock: Clock
) -> None:
    await broker.hits(search("kindle one", "b"), [KINDLE_OF_A], None)
    await broker.hits(search("kindle two", "b"), [KINDLE_OF_A], None)
    clock.now += WINDOW
    hits = await broker.hits(search("kindle three", "b"), [KINDLE_OF_A], None)
    assert [skus(followup.events[-1].found) for followup in hits.due] == [["kindle two"]]
    assert hits.immediate == []  # folded into the window the follow-up started
    assert hits.coalesced == 1


async def test_a_default_window_reaches_everyone_once_and_the_searcher_next(
    broker: MemoryBroker, clock: Clock
) -> None:
    first = await broker.hits(search("iphone 16", "x"), [], DEFAULT)
    assert first.to_everyone
    assert first.covered == {"x"}
    clock.now += 0.5
    second = await broker.hits(search("iphone 15", "y"), [], DEFAULT)
    assert not second.to_everyone
    assert second.firsts == ["x"]  # x had nothing of this window: x made its first search
    assert second.coalesced == 1
    clock.now += 0.5
    third = await broker.hits(search("iphone pro", "y"), [], DEFAULT)
    assert third.firsts == []
    clock.now += WINDOW
    [followup] = await broker.claim_due()
    assert followup.owner is None
    assert [(skus(event.found), set(event.skip)) for event in followup.events] == [
        (["iphone 15"], {"x", "y"}),
        (["iphone pro"], {"y"}),
    ]
    everyone, *to_x = followup_sendings(followup)
    assert (everyone.count, skus(everyone.found), set(everyone.excluded)) == (
        2,
        ["iphone pro", "iphone 15"],
        {"x", "y"},
    )
    # x heard of "iphone 15" at once: its follow-up counts, and shows, only the other search.
    assert [(set(s.watches), s.count, skus(s.found)) for s in to_x] == [({"x"}, 1, ["iphone pro"])]
    # y made every search of the window: y has had nothing of it, and hears the next at once.
    fourth = await broker.hits(search("iphone mini", "z"), [], DEFAULT)
    assert fourth.firsts == ["y"]


async def test_owners_who_are_not_reachable_open_no_window(clock: Clock) -> None:
    hub = Hub(grace_seconds=10, clock=clock)
    clock.now += 61  # past the restart window, when anyone may be reconnecting
    broker = MemoryBroker(hub, Numbering(), window_seconds=WINDOW, clock=clock)
    hits = await broker.hits(search("kindle", "b"), [KINDLE_OF_A], None)
    assert hits.immediate == []
    assert hits.covered == {"b"}
    assert broker.open_windows == 0


async def test_every_window_ends_at_shutdown(broker: MemoryBroker, clock: Clock) -> None:
    await broker.hits(search("kindle one", "b"), [KINDLE_OF_A], None)
    await broker.hits(search("kindle two", "b"), [KINDLE_OF_A], None)
    assert await broker.claim_due() == []
    [followup] = await broker.claim_due(everything=True)
    assert [skus(event.found) for event in followup.events] == [["kindle two"]]


@pytest.fixture
async def client(elasticsearch_url: str) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(elasticsearch_url)
    yield client
    await client.close()


async def test_positions_come_from_the_alert_log_and_increase(
    client: AsyncElasticsearch,
) -> None:
    hub = Hub()
    socket = connect(hub, "a")
    log = AlertLog(client, "unused")  # nothing is flushed: only its numbering and buffer
    broker = MemoryBroker(hub, log, window_seconds=WINDOW)
    start = log.last_seq
    records = await broker.publish([sending(f"kindle {n}", "a") for n in range(3)])
    records += await broker.publish([sending("kindle 3", "a")])
    seqs = [record.seq for record in records]
    assert seqs == sorted(set(seqs))
    assert seqs[0] > start
    assert log.last_seq == seqs[-1]
    assert [
        (alert["seq"], [product["sku"] for product in alert["found"]]) for alert in queued(socket)
    ] == [(record.seq, [f"kindle {n}"]) for n, record in enumerate(records)]
    assert all("query" not in alert for alert in queued(socket))
    socket.close()


async def test_notify_user_reaches_every_socket_of_the_user() -> None:
    hub = Hub()
    broker = MemoryBroker(hub, Numbering(), window_seconds=WINDOW)
    first, second, other = connect(hub, "a"), connect(hub, "a"), connect(hub, "b")
    await broker.notify_user("a", '{"type": "watches_changed", "watches": []}')
    assert queued(first) == queued(second) == [{"type": "watches_changed", "watches": []}]
    assert queued(other) == []
    for connection in (first, second, other):
        connection.close()
