"""The Redis broker's scripts decide as the embedded broker does: the same searches, handed
to both, open, fold and end the same windows (a real redis-server)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import pytest
import redis
from prometheus_client import CollectorRegistry

from percolert.alerts.dispatch import AlertDispatcher, followup_sendings
from percolert.broker import redis as redis_broker
from percolert.broker.base import (
    Asked,
    BrokerUnavailable,
    DefaultCandidate,
    Followup,
    Hits,
    OwnedCandidate,
    SearchFold,
    Sending,
)
from percolert.broker.memory import MemoryBroker
from percolert.broker.redis import RedisBroker
from percolert.core.messages import AlertWatch
from percolert.core.metrics import BrokerMetrics
from percolert.core.records import AlertRecord
from percolert.core.settings import Settings
from percolert.dev.redisnode import RedisNode
from percolert.realtime.hub import Connection, Hub
from percolert.watches.percolator import Match, SearchEvent
from tests.broker.test_broker_memory import card, skus
from tests.servers import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

WINDOW = 60.0  # nothing ends on its own in these tests: windows end by claim_due(everything)


class Log:
    def __init__(self, last: int = 0) -> None:
        self.logged: list[AlertRecord] = []
        self.last = last

    @property
    def last_seq(self) -> int:
        return self.last

    def next_seq(self) -> int:
        self.last += 1
        return self.last

    def append(self, record: AlertRecord) -> None:
        self.logged.append(record)

    async def max_seq(self) -> int:
        return self.last

    async def store(self, records: list[AlertRecord]) -> bool:
        self.logged += records
        return True


def _settings(redis_url: str) -> Settings:
    return Settings(
        index_prefix=f"pt-{uuid.uuid4().hex[:10]}", coalesce_seconds=WINDOW, redis_url=redis_url
    )


async def _redis_broker(redis_url: str, log: Log) -> RedisBroker:
    broker = RedisBroker(_settings(redis_url), Hub(), log, url=redis_url, instance_id="one")
    await broker.start()
    return broker


def _decisions(hits: Hits) -> tuple[object, ...]:
    return (
        [c.owner for c in hits.immediate],
        hits.covered,
        hits.to_everyone,
        sorted(hits.firsts),
        hits.coalesced,
    )


def _ended(followups: list[Followup]) -> list[tuple[object, ...]]:
    return sorted(
        (
            f.watch_id,
            f.owner or "",
            f.watch.terms,
            f.watch.category or "",
            f.watch.max_price or 0.0,
            [(skus(e.found), e.at, e.searcher, e.skip) for e in f.events],
            f.not_alerted,
        )
        for f in followups
    )


async def test_windows_open_fold_and_end_as_in_the_embedded_broker(redis_url: str) -> None:
    memory = MemoryBroker(Hub(), Log(), window_seconds=WINDOW)
    shared = await _redis_broker(redis_url, Log())
    default = DefaultCandidate(watch=AlertWatch(id="d", terms="phone"))
    other = DefaultCandidate(watch=AlertWatch(id="e", terms="phone"))
    # A watch's filters go into its window and come back with its follow-up.
    mine = OwnedCandidate(
        watch=AlertWatch(id="w1", terms="phone case", category="cases", max_price=20.0), owner="u1"
    )
    theirs = OwnedCandidate(watch=AlertWatch(id="w2", terms="phone"), owner="u2")
    at = time.time()

    def search(n: int, searcher: str) -> SearchFold:
        return SearchFold(found=(card(f"phone {n}"),), at=at + n / 1000, searcher=searcher)

    steps: list[tuple[SearchFold, list[OwnedCandidate], DefaultCandidate | None]] = [
        (search(1, "s1"), [], default),  # opens the default window: to everyone
        (search(2, "s1"), [], default),  # folded; s1 had nothing of it: still owed
        (search(3, "s2"), [mine], default),  # u1 at once; s1's first alert of the window
        (search(4, "s2"), [mine, theirs], default),  # u1 folded, u2 at once
        (search(5, "u1"), [theirs], None),  # u2 folded
        # Another default watch: x opens its window, s1 makes every search folded into it,
        # so s1 is owed the next window's first alert (x's search in the second round).
        (search(6, "x"), [], other),
        (search(7, "s1"), [], other),
        (search(8, "s1"), [], other),
    ]
    try:
        for round_ in range(2):  # the second round runs in the windows the first one's end began
            for fold, owned, candidate in steps:
                expected = await memory.hits(fold, owned, candidate)
                got = await shared.hits(fold, owned, candidate)
                assert _decisions(got) == _decisions(expected), (round_, skus(fold.found))
            expected_end = await memory.claim_due(everything=True)
            got_end = await shared.claim_due(everything=True)
            assert _ended(got_end) == _ended(expected_end), round_
            assert len(got_end) == 4
            [ended_mine] = [f for f in got_end if f.owner == "u1"]
            assert ended_mine.watch == mine.watch
        assert shared.open_windows == memory.open_windows == 4
        await memory.claim_due(everything=True)
        await shared.claim_due(everything=True)  # nothing folded since: every window closes
        assert shared.open_windows == memory.open_windows == 0
    finally:
        await shared.close()


async def test_positions_increase_from_above_the_logs_last(redis_url: str) -> None:
    ahead = int(time.time() * 1_000_000) + 10**12
    log = Log(last=ahead)
    broker = await _redis_broker(redis_url, log)
    watch = AlertWatch(id="w", terms="q")
    sending = Sending(at="2026-01-01T00:00:00.000+00:00", earliest_ms=0, found=(card("q"),))
    try:
        first = await broker.publish([sending, sending])
        second = await broker.publish(
            [Sending(at=sending.at, earliest_ms=0, found=(card("q"),), everyone=watch)]
        )
        seqs = [record.seq for record in [*first, *second]]
        assert seqs == sorted(set(seqs))
        assert seqs[0] > ahead
        assert [record.seq for record in log.logged] == seqs  # in this instance's log
        assert await broker.connected("someone") == seqs[-1]  # the cut: the last position
    finally:
        await broker.close()


async def test_a_lapsed_instance_is_reaped_and_its_users_count_as_having_left_then(
    redis_url: str,
) -> None:
    """Presence: a user is reachable while any instance holds a socket of theirs; when that
    instance stops beating it is reaped, and its users count as having left when it lapsed:
    reachable within the grace, not after it."""
    settings = _settings(redis_url)
    brokers = {
        # The first to start sets the restart window (everyone reachable): none here.
        name: RedisBroker(
            msgspec.structs.replace(settings, reconnect_grace_seconds=grace),
            Hub(),
            Log(),
            url=redis_url,
            instance_id=name,
        )
        for name, grace in (("quiet", 0.0), ("one", 600.0), ("two", 600.0), ("strict", 10.0))
    }
    raw = redis.Redis.from_url(redis_url)
    key = f"percolert:{{{settings.index_prefix}}}"
    search = SearchFold(found=(card("phone"),), at=time.time(), searcher="s")

    async def alerted(broker: str, owner: str) -> bool:
        owned = [
            OwnedCandidate(watch=AlertWatch(id=f"w-{uuid.uuid4().hex}", terms="phone"), owner=owner)
        ]
        hits = await brokers[broker].hits(search, owned, None)
        return [c.owner for c in hits.immediate] == [owner]

    try:
        for broker in brokers.values():
            await broker.start()
        await brokers["two"].connected("u")
        assert await alerted("one", "u")  # held by another instance
        assert not await alerted("one", "v")  # never seen: not worth an alert
        # "two" stopped beating 40 s ago: the next beat of any instance reaps it.
        raw.zadd(f"{key}:inst", {"two": int(time.time() * 1000) - 40_000})
        await brokers["one"].beat()
        assert raw.zscore(f"{key}:inst", "two") is None
        assert not raw.exists(f"{key}:at:two")
        assert await alerted("one", "u")  # left ~45 s ago: within a 600 s grace
        assert not await alerted("strict", "u")  # but not within 10 s
    finally:
        raw.close()
        for broker in brokers.values():
            await broker.close()


class _Gap:
    """One broker reading its inbox (`run`), with one socket of user "u" in its hub."""

    def __init__(self, redis_url: str) -> None:
        self.settings = _settings(redis_url)
        self.hub = Hub()
        self.sent: list[str] = []
        self.socket = Connection("u", self._send, queue_size=100)
        self.registry = CollectorRegistry()
        self.broker = RedisBroker(
            self.settings,
            self.hub,
            Log(),
            url=redis_url,
            instance_id="one",
            observer=BrokerMetrics(self.registry),
            resync_delay=0.0,
        )
        self.raw = redis.Redis.from_url(redis_url)
        self.meta = f"percolert:{{{self.settings.index_prefix}}}:meta"

    async def _send(self, text: str) -> None:
        self.sent.append(text)

    async def publish(self, label: str) -> int:
        """An alert to "u" about a search that found one product, `label`."""
        watch = {"u": AlertWatch(id="w", terms="q")}
        sending = Sending(at="2026-01-01T00:00:00.000+00:00", earliest_ms=0, found=(card(label),))
        [record] = await self.broker.publish([msgspec.structs.replace(sending, watches=watch)])
        return record.seq

    @property
    def gaps(self) -> float:
        """Gaps the broker detected, whatever their cause (its metric)."""
        return sum(
            sample.value
            for metric in self.registry.collect()
            if metric.name == "percolert_broker_gaps"
            for sample in metric.samples
            if sample.name == "percolert_broker_gaps_total"
        )

    def epoch(self) -> bytes:
        value = self.raw.hget(self.meta, "epoch")
        assert isinstance(value, bytes)
        return value


@asynccontextmanager
async def _reading(redis_url: str) -> AsyncIterator[_Gap]:
    gap = _Gap(redis_url)
    await gap.broker.start()
    gap.hub.add(gap.socket)
    gap.socket.release(await gap.broker.connected("u"))
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(gap.broker.run)
            tasks.start_soon(gap.socket.write, anyio.CancelScope())
            yield gap
            tasks.cancel_scope.cancel()
    finally:
        gap.raw.close()
        await gap.broker.close()


def _labels(gap: _Gap) -> list[str]:
    """What each alert the socket got found (its one product's sku), in order."""
    return [",".join(product["sku"] for product in json.loads(text)["found"]) for text in gap.sent]


async def test_the_inbox_keeps_only_what_its_reader_has_not_read(redis_url: str) -> None:
    """Read entries are trimmed at the next heartbeat: an inbox does not grow to its bound."""
    async with _reading(redis_url) as gap:
        inbox = f"percolert:{{{gap.settings.index_prefix}}}:inbox:one"
        for number in range(5):
            await gap.publish(f"q{number}")
        await wait_until(lambda: len(gap.sent) == 5, what="the five alerts")
        await gap.broker.beat()
        # The last one read goes too (it may name an erased user): the reader resumes after
        # its id all the same.
        assert gap.raw.xlen(inbox) == 0
        await gap.publish("later")
        await wait_until(lambda: _labels(gap)[-1] == "later", what="an alert after the trim")


async def test_a_missing_inbox_entry_resyncs_the_sockets(redis_url: str) -> None:
    """An entry of the inbox lost (its count `n` skipped): the socket takes nothing live
    after the gap and is closed for a resync; its page replays from the log."""
    async with _reading(redis_url) as gap:
        await gap.publish("before")
        await wait_until(lambda: _labels(gap) == ["before"], what="the first alert")
        gap.raw.hincrby(gap.meta, "n:one", 1)  # an entry the reader never sees
        await gap.publish("after")
        await wait_until(lambda: gap.socket.resynced, what="the socket to resync")
        assert gap.gaps == 1
        assert _labels(gap) == ["before"]  # the page's last alert stays the one before


async def test_a_counter_below_what_an_instance_saw_starts_a_new_epoch(redis_url: str) -> None:
    """Regression guard (centrifugo#664): a failover that lost the tail leaves the counter
    below positions already handed out; the next script raises it above them under a new
    epoch, and the reader resyncs."""
    async with _reading(redis_url) as gap:
        seen = await gap.publish("before")
        epoch = gap.epoch()
        gap.raw.hset(gap.meta, "seq", seen - 1000)  # the replica's older counter
        assert await gap.publish("after") > seen
        assert gap.epoch() != epoch
        await wait_until(lambda: gap.socket.resynced, what="the socket to resync")
        assert gap.gaps == 1


async def test_redis_emptied_starts_a_new_epoch_above_the_old_positions(redis_url: str) -> None:
    async with _reading(redis_url) as gap:
        seen = await gap.publish("before")
        epoch = gap.epoch()
        for key in gap.raw.scan_iter(f"percolert:{{{gap.settings.index_prefix}}}:*"):
            gap.raw.delete(key)
        assert await gap.publish("after") > seen
        assert gap.epoch() != epoch
        await wait_until(lambda: gap.socket.resynced, what="the socket to resync")
        assert gap.gaps == 1


async def test_a_claimed_follow_up_whose_claimer_never_publishes_is_claimed_again_and_sent_once(
    redis_url: str,
) -> None:
    """A claim is held under a lease: if the claimer dies before publishing, another
    instance's sweeper claims the follow-up again when the lease lapses, and only the holder
    of the current claim can send it: once."""
    settings = _settings(redis_url)
    logs = {"one": Log(), "two": Log()}
    one, two = (
        RedisBroker(settings, Hub(), logs[name], url=redis_url, instance_id=name)
        for name in ("one", "two")
    )
    raw = redis.Redis.from_url(redis_url)
    key = f"percolert:{{{settings.index_prefix}}}"
    owned = [OwnedCandidate(watch=AlertWatch(id="w", terms="phone"), owner="u")]
    default = DefaultCandidate(watch=AlertWatch(id="d", terms="phone"))
    at = time.time()
    try:
        await one.start()
        await two.start()
        for n in range(3):  # s1 opens both windows, then folds twice into each
            search = SearchFold(found=(card(f"phone {n}"),), at=at + n, searcher="s1")
            await one.hits(search, owned, default)
        claimed = await one.claim_due(everything=True)
        assert sorted(f.owner or "" for f in claimed) == ["", "u"]
        assert all(f.token for f in claimed)
        assert await two.claim_due() == []  # held under the lease
        # "one" dies here, before publishing: its leases lapse.
        raw.zadd(f"{key}:leases", {f.token: 0 for f in claimed})
        again = await two.claim_due()
        assert _ended(again) == _ended(claimed)  # the same follow-ups, whole
        assert {f.token for f in again}.isdisjoint(f.token for f in claimed)
        for stale in claimed:  # "one" was only slow: its publish finds its claim gone
            assert await one.publish(followup_sendings(stale), guard=stale.token) == []
        for followup in again:
            records = await two.publish(followup_sendings(followup), guard=followup.token)
            assert records
            assert await two.publish(followup_sendings(followup), guard=followup.token) == []
        assert logs["one"].logged == []
        assert sorted(r.count for r in logs["two"].logged) == [2, 2]
        assert await one.claim_due() == await two.claim_due() == []
        assert raw.keys(f"{key}:f:*") == []
        assert raw.zcard(f"{key}:leases") == 0
    finally:
        raw.close()
        await one.close()
        await two.close()


def _sending_to_u() -> Sending:
    return Sending(
        at="2026-01-01T00:00:00.000+00:00",
        earliest_ms=0,
        found=(card("q"),),
        watches={"u": AlertWatch(id="w", terms="q")},
    )


async def test_unwritten_sendings_are_read_from_each_makers_mirror_until_written(
    redis_url: str,
) -> None:
    settings = _settings(redis_url)
    one = RedisBroker(settings, Hub(), Log(), url=redis_url, instance_id="one")
    two = RedisBroker(settings, Hub(), Log(), url=redis_url, instance_id="two")
    sending = _sending_to_u()
    try:
        await one.start()
        await two.start()
        first = await one.publish([sending, sending])
        second = await two.publish([sending])
        made = sorted([*first, *second], key=lambda r: r.seq)
        seqs = [r.seq for r in made]
        assert sorted(await two.unwritten(0, seqs[-1]), key=lambda r: r.seq) == made
        assert [r.seq for r in await two.unwritten(seqs[0], seqs[1])] == [seqs[1]]
        assert await one.unwritten(seqs[-1], seqs[-1] + 10) == []
        await one.written([r.seq for r in first])
        assert await two.unwritten(0, seqs[-1]) == second
    finally:
        await one.close()
        await two.close()


async def _all_at_once(
    broker: RedisBroker, ranges: list[tuple[int, int]]
) -> list[list[AlertRecord]]:
    found: list[list[AlertRecord]] = [[] for _ in ranges]

    async def read(number: int) -> None:
        after, upto = ranges[number]
        found[number] = sorted(await broker.unwritten(after, upto), key=lambda r: r.seq)

    async with anyio.create_task_group() as readers:
        for number in range(len(ranges)):
            readers.start_soon(read, number)
    return found


def _mirror_reads(raw: redis.Redis) -> int:
    stats = raw.info("commandstats")
    return int(stats.get("cmdstat_xrevrange", {}).get("calls", 0))


async def test_unwritten_asked_at_once_reads_each_mirror_once_for_all(redis_url: str) -> None:
    """A reconnect storm's greetings: the mirrors are read once for those asking at once,
    and each gets exactly what it would have alone."""
    settings = _settings(redis_url)
    one = RedisBroker(settings, Hub(), Log(), url=redis_url, instance_id="one")
    two = RedisBroker(settings, Hub(), Log(), url=redis_url, instance_id="two")
    raw = redis.Redis.from_url(redis_url)
    sending = _sending_to_u()
    try:
        await one.start()
        await two.start()
        made = [*await one.publish([sending] * 3), *await two.publish([sending] * 3)]
        seqs = sorted(r.seq for r in made)
        ranges = [
            (0, seqs[-1]),
            (seqs[1], seqs[4]),
            (seqs[2], seqs[2]),
            (0, seqs[0]),
            (seqs[5], seqs[5] + 9),
        ]
        alone = [sorted(await two.unwritten(a, u), key=lambda r: r.seq) for a, u in ranges]
        assert [len(records) for records in alone] == [6, 3, 0, 1, 0]
        before = _mirror_reads(raw)
        assert await _all_at_once(two, ranges) == alone
        # The first alone (nothing else was waiting), the other four together: two reads
        # of each of the two mirrors, where one each would have made ten.
        assert _mirror_reads(raw) - before == 4
    finally:
        raw.close()
        await one.close()
        await two.close()


async def test_unwritten_asked_at_once_past_a_reads_reach_is_read_range_by_range(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a mirror holds more than one read takes (its newest REPLAY_COUNT), a range read
    over all would leave out what a lower range alone gets: each is read on its own."""
    monkeypatch.setattr(redis_broker, "REPLAY_COUNT", 2)
    settings = _settings(redis_url)
    one = RedisBroker(settings, Hub(), Log(), url=redis_url, instance_id="one")
    sending = _sending_to_u()
    try:
        await one.start()
        seqs = [r.seq for r in await one.publish([sending] * 3)]
        ranges = [(seqs[2], seqs[2] + 1), (0, seqs[2]), (0, seqs[0])]
        alone = [sorted(await one.unwritten(a, u), key=lambda r: r.seq) for a, u in ranges]
        assert [[r.seq for r in records] for records in alone] == [[], seqs[1:], seqs[:1]]
        assert await _all_at_once(one, ranges) == alone
    finally:
        await one.close()


async def test_a_reaped_instances_unwritten_sendings_are_written_by_a_survivor(
    redis_url: str,
) -> None:
    settings = _settings(redis_url)
    logs = {"dead": Log(), "alive": Log()}
    dead, alive = (
        RedisBroker(settings, Hub(), logs[name], url=redis_url, instance_id=name)
        for name in ("dead", "alive")
    )
    raw = redis.Redis.from_url(redis_url)
    key = f"percolert:{{{settings.index_prefix}}}"
    sending = Sending(at="2026-01-01T00:00:00.000+00:00", earliest_ms=0, found=(card("q"),))
    try:
        await dead.start()
        await alive.start()
        records = await dead.publish([sending, sending, sending])
        await dead.written([records[0].seq])  # the first reached the log before the kill
        await alive.write_orphans()
        assert logs["alive"].logged == []  # not reaped yet: nothing to take over
        raw.zadd(f"{key}:inst", {"dead": int(time.time() * 1000) - 40_000})
        await alive.beat()  # reaps "dead": its mirror becomes an orphan
        assert await alive.unwritten(0, records[-1].seq) != []  # still replayable
        await alive.write_orphans()
        assert logs["alive"].logged == records[1:]
        assert not raw.exists(f"{key}:log:dead")
        assert raw.zcard(f"{key}:orphans") == 0
        assert await alive.unwritten(0, records[-1].seq) == []
    finally:
        raw.close()
        await dead.close()
        await alive.close()


async def test_a_batch_costs_one_hits_and_one_publish_call_and_alerts_as_one_by_one(
    redis_url: str,
) -> None:
    """A percolated batch is decided in one `hits` script call and published in one
    `publish` call, and gives the alerts (and follow-ups) that dispatching its searches one
    by one gives: a window the batch's first search opens folds its later ones."""
    phone = Match(watch_id="w1", terms="phone", owner="u1")
    case = Match(watch_id="w2", terms="phone case", owner="u2")
    everyone = Match(watch_id="d", terms="phone", owner=None)
    at = time.time()

    def event(n: int, searcher: str) -> SearchEvent:
        return SearchEvent(
            text=f"phone {n}",
            searcher=searcher,
            at=at + n / 1000,
            products=(card(f"phone {n}"),),
        )

    batch = [
        (event(1, "s1"), [phone, everyone]),  # u1 at once, the default to everyone
        (event(2, "s2"), [phone, case, everyone]),  # u1 folded, u2 at once, s1's first
        (event(3, "s3"), []),  # nothing matched
        (event(4, "u1"), [case]),  # u2 folded
        (event(5, "s1"), [everyone, phone]),  # all folded
    ]
    logs: list[list[AlertRecord]] = []
    calls: list[tuple[float | None, float | None]] = []
    for batched in (True, False):
        log, registry = Log(), CollectorRegistry()
        settings = _settings(redis_url)
        broker = RedisBroker(
            settings,
            Hub(),
            log,
            url=redis_url,
            instance_id="one",
            observer=BrokerMetrics(registry),
        )
        dispatcher = AlertDispatcher(broker, window_seconds=WINDOW)
        try:
            await broker.start()
            for user in ("u1", "u2", "s1", "s2", "s3"):
                await broker.connected(user)
            if batched:
                await dispatcher.on_batch(batch)
            else:
                for searched, matches in batch:
                    await dispatcher.on_matches(searched, matches)
            calls.append(
                tuple(  # type: ignore[arg-type]
                    registry.get_sample_value(
                        "percolert_broker_round_trip_seconds_count", {"op": op}
                    )
                    for op in ("hits", "publish")
                )
            )
            await dispatcher.flush_all()  # the follow-ups of the windows the batch folded into
        finally:
            await broker.close()
        logs.append([msgspec.structs.replace(record, seq=0) for record in log.logged])
    assert calls == [(1.0, 1.0), (4.0, 2.0)]  # one by one: two searches were all folded
    batched_log, one_by_one_log = logs
    assert batched_log == one_by_one_log
    summary = [
        (skus(r.found), r.count, sorted(r.watches), r.everyone is not None) for r in batched_log
    ]
    assert summary[:4] == [
        (["phone 1"], 1, ["u1"], False),
        (["phone 1"], 1, [], True),
        (["phone 2"], 1, ["u2"], False),
        (["phone 2"], 1, ["s1"], False),
    ]
    assert len(summary) > 4  # and the follow-ups of the folded searches


async def test_hits_many_decides_as_that_many_hits_one_after_another(redis_url: str) -> None:
    memory = MemoryBroker(Hub(), Log(), window_seconds=WINDOW)
    shared = await _redis_broker(redis_url, Log())
    default = DefaultCandidate(watch=AlertWatch(id="d", terms="phone"))
    mine = OwnedCandidate(watch=AlertWatch(id="w1", terms="phone case"), owner="u1")
    theirs = OwnedCandidate(watch=AlertWatch(id="w2", terms="phone"), owner="u2")
    at = time.time()

    def search(n: int, searcher: str) -> SearchFold:
        return SearchFold(found=(card(f"phone {n}"),), at=at + n / 1000, searcher=searcher)

    batch = [
        Asked(search(1, "s1"), [], default),
        Asked(search(2, "s1"), [], default),
        Asked(search(3, "s2"), [mine], default),
        Asked(search(4, "s2"), [mine, theirs], default),
        Asked(search(5, "u1"), [theirs], None),
        Asked(search(6, "u2"), [], None),
    ]
    try:
        for user in ("u1", "u2"):
            await shared.connected(user)
        expected = [await memory.hits(*asked) for asked in batch]
        got = await shared.hits_many(batch)
        assert [_decisions(hits) for hits in got] == [_decisions(hits) for hits in expected]
        assert _ended(await shared.claim_due(everything=True)) == _ended(
            await memory.claim_due(everything=True)
        )
        assert await shared.hits_many([]) == []
    finally:
        await shared.close()


async def test_a_full_redis_is_met_as_an_outage(tmp_path: Path) -> None:
    """With `noeviction`, a full Redis refuses every write: the dispatcher is told the broker
    is unavailable (it spools the search) rather than handed an error that drops it."""
    node = RedisNode(tmp_path)
    state, _ = node.start(free_port())
    broker = RedisBroker(_settings(state.url), Hub(), Log(), url=state.url, instance_id="one")
    raw = redis.Redis.from_url(state.url)
    sending = Sending(at="2026-01-01T00:00:00.000+00:00", earliest_ms=0, found=(card("q"),))
    try:
        await broker.start()
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", 1)  # below what it holds already: every write refused
        with pytest.raises(BrokerUnavailable):
            await broker.publish([sending])
        assert broker.status == "down"
    finally:
        raw.close()
        await broker.close()
        node.stop()
