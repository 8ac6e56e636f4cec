"""Stored sendings read lately, kept a short while for the reads of other users.

One sending names every recipient of a search: 250 of the benchmark's 10k sockets, so
its document runs to tens of KB. A greeting reads the user's newest alerts and what they
missed, and each hit cost Elasticsearch a parse of that whole document to cut out the
user's part; a storm of resuming sockets asks for the same recent sendings over and over
(at 1M watches and 10k sockets, 1,000 sockets resuming spent ~0.9 s of Elasticsearch time
per second fetching). So the log asks Elasticsearch which sendings reach the user (positions
only), takes those it holds here, and fetches each missing sending once, whole, however many
greetings want it at the same time.

Bounded by the watches the held sendings name (a sending counts one more), each kept at most
`seconds` after it was read: a record that a later erasure scrubbed from the stored log
(`alerts.personal`) lingers here no longer than that, and only its own recipients are ever
given their part of it (`AlertRecord.alert_for`)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import anyio

from percolert.core.records import AlertRecord

Fetch = Callable[[list[int]], Awaitable[list[AlertRecord]]]


class SendingCache:
    def __init__(
        self,
        *,
        max_watches: int = 100_000,
        seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_watches = max_watches
        self._seconds = seconds
        self._clock = clock
        # Oldest first: seq -> (until when it is kept, the record).
        self._held: OrderedDict[int, tuple[float, AlertRecord]] = OrderedDict()
        self._watches = 0
        # Sendings being fetched now: a read wanting one waits for that fetch.
        self._fetching: dict[int, anyio.Event] = {}
        self.hits = 0
        self.fetched = 0

    def __len__(self) -> int:
        return len(self._held)

    async def records(self, seqs: Iterable[int], fetch: Fetch) -> dict[int, AlertRecord]:
        """The sendings at `seqs` that are still stored, by seq: from here, or fetched (each
        at most once at a time across concurrent callers). A sending gone meanwhile (the
        retention ran, or an erasure left nobody in it) is left out."""
        found: dict[int, AlertRecord] = {}
        missing: list[int] = []
        awaited: list[tuple[int, anyio.Event]] = []
        for seq in seqs:
            record = self._get(seq)
            if record is not None:
                found[seq] = record
                self.hits += 1
            elif (event := self._fetching.get(seq)) is not None:
                awaited.append((seq, event))
            else:
                missing.append(seq)
        if missing:
            found |= await self._fetch(missing, fetch)
        late: list[int] = []
        for seq, event in awaited:
            await event.wait()
            record = self._get(seq)
            if record is None:
                late.append(seq)  # that fetch failed or was cancelled: fetched here
            else:
                found[seq] = record
                self.hits += 1
        if late:
            found |= await self._fetch(late, fetch)
        return found

    async def _fetch(self, seqs: list[int], fetch: Fetch) -> dict[int, AlertRecord]:
        # Claimed while on their way: a read wanting one of them meanwhile waits for this.
        event = anyio.Event()
        for seq in seqs:
            self._fetching[seq] = event
        try:
            records = await fetch(seqs)
        finally:
            for seq in seqs:
                if self._fetching.get(seq) is event:
                    del self._fetching[seq]
            event.set()
        self.fetched += len(records)
        for record in records:
            self._put(record)
        return {record.seq: record for record in records}

    def forget(self, user: str) -> None:
        """`user` was erased: drop what names them."""
        for seq in [seq for seq, (_, record) in self._held.items() if record.names(user)]:
            self._drop(seq)

    def sweep(self) -> None:
        """Drop what has been held past its time (held in the order it was put, so the
        oldest are first)."""
        now = self._clock()
        while self._held:
            seq, (until, _) = next(iter(self._held.items()))
            if until >= now:
                return
            self._drop(seq)

    def _get(self, seq: int) -> AlertRecord | None:
        held = self._held.get(seq)
        if held is None:
            return None
        until, record = held
        if until < self._clock():
            self._drop(seq)
            return None
        return record

    def _put(self, record: AlertRecord) -> None:
        if record.seq in self._held:
            self._drop(record.seq)
        self.sweep()
        self._held[record.seq] = (self._clock() + self._seconds, record)
        self._watches += _weight(record)
        while self._watches > self._max_watches and self._held:  # the oldest put go first
            self._drop(next(iter(self._held)))

    def _drop(self, seq: int) -> None:
        _, record = self._held.pop(seq)
        self._watches -= _weight(record)


def _weight(record: AlertRecord) -> int:
    return len(record.watches) + len(record.excluded) + 1
