"""Garbage collection in the server: long-lived objects frozen out of full collections,
cyclic garbage among them found again by a compaction once the frozen set has grown enough,
and closed alert sockets that leave no cyclic garbage at all."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from percolert.server.gcpolicy import YOUNG_THRESHOLD, GcPolicy
from percolert.server.wsprotocol import FrameWritingProtocol
from tests.shoppers import Shopper
from tests.waiting import wait_until


class Node:
    def __init__(self) -> None:
        self.partner: Node | None = None


def cycles(count: int) -> list[Node]:
    nodes = []
    for _ in range(count):
        a, b = Node(), Node()
        a.partner, b.partner = b, a
        nodes.append(a)
    return nodes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def process_gc() -> Iterator[None]:
    """The policy changes process-wide state: put it back for the other tests."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc.collect()


@pytest.mark.usefixtures("process_gc")
def test_frozen_garbage_waits_for_a_compaction() -> None:
    clock = Clock()
    policy = GcPolicy(freeze_seconds=60, compact_growth=10.0, clock=clock)
    policy.start()
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    started_frozen = gc.get_freeze_count()
    assert started_frozen > 0

    alive = cycles(1000)
    clock.now = 59
    policy.tick()
    assert gc.get_freeze_count() < started_frozen + 2000  # not yet a minute
    clock.now = 60
    policy.tick()
    assert gc.get_freeze_count() >= started_frozen + 2000
    assert policy.compactions == 0  # grown, but far from 10x

    probe = weakref.ref(alive[0])
    del alive  # cyclic garbage now, but frozen: full collections do not see it
    gc.collect()
    assert probe() is not None

    policy.compact()
    assert probe() is None
    assert policy.compactions == 1


@pytest.mark.usefixtures("process_gc")
def test_a_tick_compacts_once_the_frozen_set_has_doubled_and_not_too_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted: list[int] = []
    count_frozen = gc.get_freeze_count

    def counting() -> int:  # walks the whole frozen set: only when a compaction may run
        counted.append(count_frozen())
        return counted[-1]

    clock = Clock()
    policy = GcPolicy(freeze_seconds=1, compact_growth=1.0, compact_seconds=60, clock=clock)
    policy.start()
    garbage = cycles(gc.get_freeze_count())  # twice as many objects again
    probe = weakref.ref(garbage[0])
    clock.now = 1
    policy.tick()  # not counted until frozen: this tick freezes them
    assert policy.compactions == 0
    del garbage
    gc.collect()
    assert probe() is not None
    monkeypatch.setattr(gc, "get_freeze_count", counting)
    clock.now = 59
    policy.tick()  # grown enough, but the last compaction (the start) was under a minute ago
    assert policy.compactions == 0
    assert probe() is not None
    assert counted == []
    clock.now = 60
    policy.tick()
    assert policy.compactions == 1
    assert probe() is None
    clock.now = 61
    policy.tick()
    clock.now = 120
    policy.tick()  # a minute later: counted, but not grown
    assert len(counted) == 4  # at 60 (and twice by the compaction, for its log), at 120
    assert policy.compactions == 1


def protocols() -> list[FrameWritingProtocol]:
    """The server's socket protocols still in memory (the test server runs in this process)."""
    return [item for item in gc.get_objects() if isinstance(item, FrameWritingProtocol)]


@pytest.mark.anyio
async def test_closed_alert_sockets_leave_no_cyclic_garbage(server: str) -> None:
    """Freed by reference counting as they close: under the policy above, cyclic garbage
    waits for a compaction, and a socket's protocol would hold all its buffers."""
    earlier: weakref.WeakSet[FrameWritingProtocol] = weakref.WeakSet(protocols())
    async with Shopper(server) as shopper:
        for _ in range(20):
            await shopper.connect()

    def all_closed() -> bool:
        """The server has seen each of these sockets through (app done, connection lost):
        what is left of one now is either freed already or cyclic garbage."""
        ours = [protocol for protocol in protocols() if protocol not in earlier]
        return all(protocol._asgi_done and protocol.disconnected for protocol in ours)

    await wait_until(all_closed, what="the server's side of each close")
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        left = [item for item in gc.garbage if isinstance(item, FrameWritingProtocol)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
