"""Who gets which alert, and coalescing — the dispatcher and hub on their own, with a
controlled clock (the end-to-end versions are in test_alerts.py)."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import anyio
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from percolert.alerts.dispatch import AlertDispatcher
from percolert.broker.base import BrokerStatus, BrokerUnavailable, Hits
from percolert.broker.memory import MemoryBroker
from percolert.core.records import AlertRecord
from percolert.realtime.frames import frame_text
from percolert.realtime.hub import Connection, Hub
from percolert.watches.percolator import Match, SearchEvent
from tests.broker.test_broker_memory import card
from tests.waiting import wait_until


class Numbering:
    """Stands in for the alert log: numbers alerts and keeps what would be written."""

    def __init__(self) -> None:
        self.logged: list[AlertRecord] = []

    def next_seq(self) -> int:
        return len(self.logged) + 1

    def append(self, record: AlertRecord) -> None:
        self.logged.append(record)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Inbox:
    """The sockets of a few users; collects what the hub queues for each."""

    def __init__(self, hub: Hub, *users: str) -> None:
        self.connections = {user: Connection(user, self._never, 100) for user in users}
        for connection in self.connections.values():
            hub.add(connection)

    async def _never(self, payload: str) -> None:
        raise AssertionError("not written in these tests")

    def take(self, user: str) -> list[dict[str, Any]]:
        queue = self.connections[user]._queue
        received = [json.loads(payload) for payload in queue]
        queue.clear()
        return received

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()


def event(label: str, searcher: str) -> SearchEvent:
    """A search that found one product, of sku `label` (its text too: never sent)."""
    return SearchEvent(text=label, searcher=searcher, at=1_700_000_000.0, products=(card(label),))


def found(alert: dict[str, Any]) -> list[str]:
    """The skus of the products an alert shows, in order."""
    return [product["sku"] for product in alert["found"]]


def dispatcher_for(hub: Hub, sink: Any, *, window_seconds: float, clock: Clock) -> AlertDispatcher:
    broker = MemoryBroker(hub, sink, window_seconds=window_seconds, clock=clock)
    return AlertDispatcher(broker, window_seconds=window_seconds)


KINDLE_OF_A = Match(watch_id="w-a", terms="kindle", owner="a")
DEFAULT = Match(watch_id="default-1", terms="iphone", owner=None)


@pytest.fixture
def setup() -> Any:
    hub = Hub()
    clock = Clock()
    inbox = Inbox(hub, "a", "b", "c")
    yield dispatcher_for(hub, Numbering(), window_seconds=2.0, clock=clock), inbox, clock
    inbox.close()


@pytest.mark.anyio
async def test_first_match_at_once_then_one_follow_up_per_window(setup: Any) -> None:
    dispatcher, inbox, clock = setup
    await dispatcher.dispatch(event("kindle one", "b"), [KINDLE_OF_A])
    assert [(m["count"], found(m)) for m in inbox.take("a")] == [(1, ["kindle one"])]
    for number in range(5):
        clock.now += 0.1
        await dispatcher.dispatch(event(f"kindle {number}", "c"), [KINDLE_OF_A])
    assert inbox.take("a") == []
    clock.now += 2.0
    await dispatcher.flush_due()
    # What the folded searches found, the latest first, at most three.
    assert [(m["count"], found(m)) for m in inbox.take("a")] == [
        (5, ["kindle 4", "kindle 3", "kindle 2"])
    ]
    clock.now += 2.1  # a quiet window closes without another alert
    await dispatcher.flush_due()
    assert inbox.take("a") == []
    await dispatcher.dispatch(event("kindle again", "b"), [KINDLE_OF_A])
    assert [m["count"] for m in inbox.take("a")] == [1]  # a new flood starts at once
    assert inbox.take("b") == []
    assert inbox.take("c") == []


@pytest.mark.anyio
async def test_an_alert_shows_only_what_its_watch_asks_for_and_never_the_text(
    setup: Any,
) -> None:
    """Each recipient is shown the products the searches found in their watch's category
    and at or under its price; the text typed reaches no one."""
    dispatcher, inbox, clock = setup
    cheap_readers = Match(
        watch_id="w-a", terms="kindle", owner="a", category="ereaders", max_price=100.0
    )
    everyone = Match(watch_id="default-1", terms="kindle", owner=None)

    def searched(text: str) -> SearchEvent:
        products = (
            card("basic", price=90.0),
            card("cover", category="cases", price=20.0),
            card("scribe", price=400.0),
            card("kids", price=100.0),
        )
        return SearchEvent(text=text, searcher="b", at=1_700_000_000.0, products=products)

    await dispatcher.dispatch(searched("kindle for alice@example.com"), [cheap_readers, everyone])
    [to_a] = inbox.take("a")
    [to_c] = inbox.take("c")
    assert (to_a["watch"]["category"], to_a["watch"]["max_price"]) == ("ereaders", 100.0)
    assert found(to_a) == ["basic", "kids"]
    assert found(to_c) == ["basic", "cover", "scribe"]  # no filter: the first three
    clock.now += 0.1
    await dispatcher.dispatch(searched("kindle 12 Elm St"), [cheap_readers])
    clock.now += 2.0
    await dispatcher.flush_due()
    [followup] = inbox.take("a")
    assert (followup["count"], found(followup)) == (1, ["basic", "kids"])
    for alert in (to_a, to_c, followup):
        assert "query" not in alert
        assert "alice@example.com" not in json.dumps(alert)
        assert "Elm St" not in json.dumps(alert)


@pytest.mark.anyio
async def test_own_searches_are_never_counted(setup: Any) -> None:
    dispatcher, inbox, clock = setup
    await dispatcher.dispatch(event("kindle", "a"), [KINDLE_OF_A])
    assert inbox.take("a") == []
    await dispatcher.dispatch(event("kindle", "b"), [KINDLE_OF_A])
    await dispatcher.dispatch(event("kindle", "a"), [KINDLE_OF_A])
    clock.now += 2.0
    await dispatcher.flush_due()
    assert [m["count"] for m in inbox.take("a")] == [1]  # b's search only; no follow-up


@pytest.mark.anyio
async def test_default_watch_excludes_the_searcher_and_they_get_the_next_at_once(
    setup: Any,
) -> None:
    dispatcher, inbox, clock = setup
    await dispatcher.dispatch(event("iphone 16", "a"), [DEFAULT])
    assert inbox.take("a") == []
    first_b, first_c = inbox.take("b"), inbox.take("c")
    assert [found(m) for m in first_b] == [found(m) for m in first_c] == [["iphone 16"]]
    assert first_b[0]["id"] == first_c[0]["id"]  # one alert, encoded once, sent to both

    clock.now += 0.5
    await dispatcher.dispatch(event("iphone 15", "b"), [DEFAULT])
    # a has had nothing in this window, so b's search reaches a at once; c waits.
    assert [(m["count"], found(m)) for m in inbox.take("a")] == [(1, ["iphone 15"])]
    assert inbox.take("c") == []
    clock.now += 0.5
    await dispatcher.dispatch(event("iphone pro", "c"), [DEFAULT])
    clock.now += 1.5
    await dispatcher.flush_due()
    # Follow-ups count only searches each user has not heard about and did not make.
    assert [(m["count"], found(m)) for m in inbox.take("a")] == [(1, ["iphone pro"])]
    assert [(m["count"], found(m)) for m in inbox.take("b")] == [(1, ["iphone pro"])]
    assert [(m["count"], found(m)) for m in inbox.take("c")] == [(1, ["iphone 15"])]


@pytest.mark.anyio
async def test_without_a_window_every_match_goes_out(setup: Any) -> None:
    _, inbox, clock = setup
    dispatcher = dispatcher_for(inbox_hub(inbox), Numbering(), window_seconds=0, clock=clock)
    for _ in range(3):
        await dispatcher.dispatch(event("kindle", "b"), [KINDLE_OF_A])
    assert [m["count"] for m in inbox.take("a")] == [1, 1, 1]


def inbox_hub(inbox: Inbox) -> Hub:
    hub = Hub()
    for connection in inbox.connections.values():
        hub.add(connection)
    return hub


@pytest.mark.anyio
async def test_a_full_queue_cuts_off_only_that_socket() -> None:
    hub = Hub()
    stalled = anyio.Event()
    written: list[str] = []

    async def never_returns(payload: str) -> None:
        await stalled.wait()

    async def records(payload: str) -> None:
        written.append(payload)

    slow = Connection("slow", never_returns, 3)
    fast = Connection("fast", records, 3)
    hub.add(slow)
    hub.add(fast)
    async with anyio.create_task_group() as tasks:
        slow_scope = anyio.CancelScope()
        fast_scope = anyio.CancelScope()

        async def run(connection: Connection, scope: anyio.CancelScope) -> None:
            with scope:
                await connection.write(scope)

        tasks.start_soon(run, slow, slow_scope)
        tasks.start_soon(run, fast, fast_scope)

        def fast_took(count: int) -> bool:
            return len(written) >= count

        for number in range(6):
            hub.send_to_all(f"message {number}")
            await wait_until(partial(fast_took, number + 1), what=f"fast to take {number}")
        assert slow.overflowed
        assert slow_scope.cancel_called
        assert not fast.overflowed
        assert written == [f"message {number}" for number in range(6)]
        fast_scope.cancel()
    slow.close()
    fast.close()


@pytest.mark.anyio
async def test_one_alert_per_person_per_search(setup: Any) -> None:
    dispatcher, inbox, _ = setup
    second_of_a = Match(watch_id="w-a2", terms="paperwhite", owner="a")
    other_default = Match(watch_id="default-2", terms="kindle", owner=None)
    await dispatcher.dispatch(
        event("kindle paperwhite iphone", "b"), [DEFAULT, KINDLE_OF_A, second_of_a, other_default]
    )
    # a hears through their own watch only; c through one default; b searched.
    assert [m["watch"]["id"] for m in inbox.take("a")] == ["w-a"]
    assert [m["watch"]["id"] for m in inbox.take("c")] == ["default-1"]
    assert inbox.take("b") == []


@pytest.mark.anyio
async def test_a_follow_up_never_counts_a_search_heard_of_through_ones_own_watch(
    setup: Any,
) -> None:
    """a's own "kindle" watch and the default "kindle" watch both match b's searches: a
    hears of each search once, through their own watch, follow-ups included."""
    dispatcher, inbox, clock = setup
    default_kindle = Match(watch_id="default-k", terms="kindle", owner=None)
    for text in ("kindle one", "kindle two", "kindle three"):
        await dispatcher.dispatch(event(text, "b"), [default_kindle, KINDLE_OF_A])
        clock.now += 0.1
    clock.now += 2.0
    await dispatcher.flush_due()
    assert [(m["watch"]["id"], m["count"], found(m)) for m in inbox.take("a")] == [
        ("w-a", 1, ["kindle one"]),
        ("w-a", 2, ["kindle three", "kindle two"]),
    ]
    assert [(m["watch"]["id"], m["count"], found(m)) for m in inbox.take("c")] == [
        ("default-k", 1, ["kindle one"]),
        ("default-k", 2, ["kindle three", "kindle two"]),
    ]
    assert inbox.take("b") == []


@pytest.mark.anyio
async def test_a_default_follow_up_counts_what_ones_own_watch_did_not(setup: Any) -> None:
    dispatcher, inbox, clock = setup
    default_kindle = Match(watch_id="default-k", terms="kindle", owner=None)
    paperwhite_of_a = Match(watch_id="w-pw", terms="kindle paperwhite", owner="a")
    searches = [
        ("kindle paperwhite", [default_kindle, paperwhite_of_a]),
        ("kindle oasis", [default_kindle]),
        ("kindle paperwhite signature", [default_kindle, paperwhite_of_a]),
    ]
    for text, matches in searches:
        await dispatcher.dispatch(event(text, "b"), matches)
        clock.now += 0.1
    clock.now += 2.0
    await dispatcher.flush_due()
    # Three searches, three alerts: two through a's own watch, one through the default.
    assert sorted((m["watch"]["id"], m["count"], found(m)) for m in inbox.take("a")) == [
        ("default-k", 1, ["kindle oasis"]),
        ("w-pw", 1, ["kindle paperwhite"]),
        ("w-pw", 1, ["kindle paperwhite signature"]),
    ]
    assert [(m["count"], found(m)) for m in inbox.take("c")] == [
        (1, ["kindle paperwhite"]),
        (2, ["kindle paperwhite signature", "kindle oasis"]),
    ]


@pytest.mark.anyio
async def test_no_alert_reaches_a_session_begun_after_a_search_it_counts() -> None:
    hub = Hub()
    clock = Clock()
    searched_at = 1_700_000_000.0
    inbox = Inbox(hub)
    for user, started in (("old", searched_at - 60), ("new", searched_at + 0.5)):
        connection = Connection(user, inbox._never, 100, session_started=started)
        inbox.connections[user] = connection
        hub.add(connection)
    dispatcher = dispatcher_for(hub, Numbering(), window_seconds=2.0, clock=clock)
    # The first goes out at once; the next two are folded into a follow-up, which counts a
    # search made before "new"'s session began.
    for offset in (0.0, 0.2, 1.0):
        search = SearchEvent(text="iphone", searcher="x", at=searched_at + offset)
        await dispatcher.dispatch(search, [DEFAULT])
    clock.now += 2.0
    await dispatcher.flush_due()
    assert [m["count"] for m in inbox.take("old")] == [1, 2]
    assert inbox.take("new") == []
    inbox.close()


class FrameSocket:
    """A socket with both paths: frames written at once (while `open`), and the ASGI-style
    send coroutine, which waits for `release` — everything lands in one ordered list."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.open = True
        self.release = anyio.Event()
        self.sending = anyio.Event()

    def write_frame(self, frame: bytes) -> bool:
        if not self.open:
            return False
        self.received.append(parse_text_frame(frame))
        return True

    async def send_text(self, payload: str) -> None:
        self.sending.set()
        await self.release.wait()
        self.received.append(payload)


def parse_text_frame(frame: bytes) -> str:
    """The text of one unmasked frame, read by the websockets library's own parser."""
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        parsed: Frame = done.value
    assert parsed.opcode is Opcode.TEXT
    assert parsed.fin
    assert not reader.buffer  # nothing left over
    return bytes(parsed.data).decode()


@pytest.mark.parametrize("text", ["", "ok", "é" * 100, "x" * 70_000])
def test_a_prepared_frame_is_the_text_in_one_frame(text: str) -> None:
    assert parse_text_frame(frame_text(text)) == text


@pytest.mark.anyio
async def test_direct_writes_keep_the_order_of_the_queue() -> None:
    hub = Hub()
    socket = FrameSocket()
    connection = Connection("a", socket.send_text, 10, write_frame=socket.write_frame)
    hub.add(connection)
    # Before the writer runs (the greeting is being sent) everything waits in the queue.
    hub.send_to_user("a", "1")
    assert socket.received == []
    assert list(connection._queue) == ["1"]
    async with anyio.create_task_group() as tasks:
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await connection.write(scope)

        tasks.start_soon(run)
        with anyio.fail_after(10):
            await socket.sending.wait()
        # "1" is being sent (the send waits): "2" must not overtake it.
        hub.send_to_user("a", "2")
        assert socket.received == []
        socket.release.set()
        await wait_until(lambda: len(socket.received) == 2, what="the queue to be sent")
        assert socket.received == ["1", "2"]
        # Nothing queued or in flight: written at once, without the writer.
        hub.send_to_user("a", "3")
        assert socket.received == ["1", "2", "3"]
        # A socket that cannot take a frame now (paused) gets it queued, and in order.
        socket.open = False
        hub.send_to_user("a", "4")
        socket.open = True
        hub.send_to_user("a", "5")
        await wait_until(lambda: len(socket.received) == 5, what="4 and 5 to be sent")
        assert socket.received == ["1", "2", "3", "4", "5"]
        scope.cancel()
    connection.close()


@pytest.mark.anyio
async def test_alerts_are_made_only_for_owners_who_are_connected_or_just_left() -> None:
    clock = Clock()
    hub = Hub(grace_seconds=60, clock=clock)
    numbering = Numbering()
    dispatcher = dispatcher_for(hub, numbering, window_seconds=0, clock=clock)
    inbox = Inbox(hub, "a", "b")
    inbox.close()
    of = [Match(watch_id=f"w-{user}", terms="kindle", owner=user) for user in "abcd"]

    async def recipients() -> list[str]:
        before = len(numbering.logged)
        await dispatcher.dispatch(event("kindle", "searcher"), of)
        return sorted(user for record in numbering.logged[before:] for user in record.watches)

    # Just after a (re)start anyone may be reconnecting: every owner's alert is kept.
    assert await recipients() == ["a", "b", "c", "d"]
    clock.now += 50
    hub.remove(inbox.connections["a"])  # a's last tab closes; b stays
    clock.now += 11
    assert await recipients() == ["a", "b"]  # c and d have not come; a left 11 s ago
    clock.now += 50
    assert await recipients() == ["b"]  # a has been gone longer than the grace period
    hub.add(Connection("c", inbox._never, 10))
    assert await recipients() == ["b", "c"]


def test_departures_are_forgotten_after_the_grace_period() -> None:
    clock = Clock()
    hub = Hub(grace_seconds=60, clock=clock)
    inbox = Inbox(hub, "a", "b")
    inbox.close()
    hub.remove(inbox.connections["a"])
    clock.now += 61
    hub.remove(inbox.connections["b"])  # a closing socket is when old departures go
    assert set(hub._left_at) == {"b"}
    assert not hub.reachable("a")
    assert hub.reachable("b")


class Unavailable(MemoryBroker):
    """The embedded broker, made "down" (as a shared broker whose Redis is away) at will."""

    down = False

    @property
    def status(self) -> BrokerStatus:
        return "down" if self.down else "memory"

    async def hits(self, *args: Any, **kwargs: Any) -> Hits:
        if self.down:
            raise BrokerUnavailable
        return await super().hits(*args, **kwargs)


@pytest.mark.anyio
async def test_matches_wait_in_order_while_the_broker_is_down_and_the_oldest_overflow() -> None:
    hub, clock = Hub(), Clock()
    sink: Any = Numbering()
    broker = Unavailable(hub, sink, window_seconds=0.0, clock=clock)
    dispatcher = AlertDispatcher(broker, window_seconds=0.0, spool=3)
    inbox = Inbox(hub, "a")
    broker.down = True
    for n in range(5):
        await dispatcher.on_matches(event(f"kindle {n}", "b"), [KINDLE_OF_A])
    assert (dispatcher.spooled, dispatcher.spool_dropped) == (3, 2)
    assert inbox.take("a") == []
    broker.down = False
    await dispatcher.flush_all()  # drains what waited, as `run` does when the broker is back
    assert [found(alert) for alert in inbox.take("a")] == [["kindle 2"], ["kindle 3"], ["kindle 4"]]
    assert dispatcher.spooled == 0
    inbox.close()
