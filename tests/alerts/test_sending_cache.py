"""The stored sendings reads share (alerts/sending_cache.py): each fetched once for all who
want it at the same time, held a while and within a bound, dropped when a user is erased.
The alert log's reads through it run on a real node in test_alertlog.py."""

from __future__ import annotations

import anyio
import pytest

from percolert.alerts.sending_cache import SendingCache
from percolert.core.messages import AlertWatch
from percolert.core.records import AlertRecord

pytestmark = pytest.mark.anyio


def record(seq: int, *users: str) -> AlertRecord:
    return AlertRecord(
        seq=seq,
        at="2026-12-08T03:00:00.000+00:00",
        earliest_ms=0,
        watches={user: AlertWatch(id=f"{user}-w", terms="kindle") for user in users},
    )


class Store:
    """The stored log as the cache sees it: the sendings it holds, and each fetch asked of
    it; a fetch waits for `gate` when one is set, and the first `failures` fail."""

    def __init__(self, *records: AlertRecord) -> None:
        self.records = {each.seq: each for each in records}
        self.asked: list[list[int]] = []
        self.gate: anyio.Event | None = None
        self.failures = 0

    async def fetch(self, seqs: list[int]) -> list[AlertRecord]:
        self.asked.append(seqs)
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the cluster went away")
        return [self.records[seq] for seq in seqs if seq in self.records]


async def test_a_sending_is_fetched_once_and_then_read_from_the_cache() -> None:
    store = Store(record(1, "ann", "bob"), record(2, "bob"))
    cache = SendingCache()
    assert await cache.records([2, 1], store.fetch) == {1: store.records[1], 2: store.records[2]}
    assert await cache.records([1], store.fetch) == {1: store.records[1]}
    assert store.asked == [[2, 1]]
    assert (cache.fetched, cache.hits) == (2, 1)


async def test_a_sending_gone_from_the_log_is_left_out() -> None:
    store = Store(record(1, "ann"))
    cache = SendingCache()
    assert await cache.records([1, 7], store.fetch) == {1: store.records[1]}


async def test_concurrent_reads_of_one_sending_share_one_fetch() -> None:
    store = Store(record(1, "ann"), record(2, "bob"), record(3, "cy"))
    store.gate = anyio.Event()
    cache = SendingCache()
    answers: list[dict[int, AlertRecord]] = []

    async def read(seqs: list[int]) -> None:
        answers.append(await cache.records(seqs, store.fetch))

    async with anyio.create_task_group() as readers:
        readers.start_soon(read, [1, 2])
        await anyio.wait_all_tasks_blocked()
        readers.start_soon(read, [2, 3])
        await anyio.wait_all_tasks_blocked()
        store.gate.set()
    # The second reader fetched only what the first was not fetching, and waited for the rest.
    assert store.asked == [[1, 2], [3]]
    assert sorted(map(sorted, answers)) == [[1, 2], [2, 3]]


async def test_a_reader_whose_shared_fetch_failed_fetches_for_itself() -> None:
    store = Store(record(1, "ann"))
    store.gate = anyio.Event()
    store.failures = 1
    cache = SendingCache()
    answers: list[dict[int, AlertRecord]] = []

    async def first() -> None:
        with pytest.raises(ConnectionError):
            await cache.records([1], store.fetch)

    async def second() -> None:
        answers.append(await cache.records([1], store.fetch))

    async with anyio.create_task_group() as readers:
        readers.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        readers.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert answers == [{1: store.records[1]}]
    assert store.asked == [[1], [1]]


async def test_sendings_are_held_for_their_time_only() -> None:
    now = [0.0]
    store = Store(record(1, "ann"), record(2, "bob"))
    cache = SendingCache(seconds=30.0, clock=lambda: now[0])
    await cache.records([1], store.fetch)
    now[0] = 20.0
    await cache.records([2], store.fetch)
    now[0] = 31.0
    cache.sweep()
    assert len(cache) == 1  # the first's time is up, the second's not yet
    await cache.records([1, 2], store.fetch)
    assert store.asked == [[1], [2], [1]]


async def test_the_watches_held_stay_within_the_bound() -> None:
    store = Store(*(record(seq, *(f"u{seq}-{n}" for n in range(4))) for seq in range(10)))
    cache = SendingCache(max_watches=12)  # a sending of 4 recipients weighs 5
    await cache.records(range(10), store.fetch)
    assert len(cache) == 2
    await cache.records([8, 9], store.fetch)
    assert store.asked == [list(range(10))]  # the newest are the ones held


async def test_an_erased_user_is_dropped_with_every_sending_naming_them() -> None:
    store = Store(record(1, "ann", "bob"), record(2, "bob"), record(3, "cy"))
    cache = SendingCache()
    await cache.records([1, 2, 3], store.fetch)
    cache.forget("bob")
    assert len(cache) == 1
    await cache.records([1, 2, 3], store.fetch)
    assert store.asked == [[1, 2, 3], [1, 2]]
