"""The alert log: every alert sent, kept in Elasticsearch so a socket that reconnects gets
what it missed, in order and without duplicates.

Alerts are logged by sending (`AlertRecord`): the owners one search alerts at once share
one position (`seq`) and one document, which names each recipient's watch; a default-watch
sending is one document for everyone but an excluded few. Positions increase across the
whole service and across restarts (microseconds since the epoch, bumped to stay strictly
increasing), and a user gets at most one alert per position. Writes are buffered and sent
in bulk; until a write is visible to search, replay reads the buffer as well. A sending
Elasticsearch refuses for good (not for load or an outage) is dropped, counted and logged,
so that it never holds up the ones behind it. A retention task drops alerts older than the
retention period.

A session gets no sending that counts a search made before the session began: each
sending is stored with the time of the earliest search it counts, and replay asks for
sendings no older than the session.

An erased user (`forget`) is taken out of the sendings not yet written, and for a while out
of those appended later: they were in flight when the user was erased. What is stored is
scrubbed by `alerts.personal`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, NamedTuple, Protocol, cast

import anyio
import msgspec
from elastic_transport import TransportError
from elasticsearch import ApiError as ElasticsearchApiError
from elasticsearch import AsyncElasticsearch

from percolert.alerts.sending_cache import SendingCache
from percolert.core.messages import Alert, AlertWatch, ProductCard
from percolert.core.records import AlertRecord
from percolert.core.times import iso_from_milliseconds, iso_from_seconds, milliseconds_from_iso
from percolert.engine import bulk, es
from percolert.engine.reads import DirectReads, Reads

logger = logging.getLogger(__name__)


_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")  # session ids (token_urlsafe): safe in a path


def epoch_ms(seconds: float) -> int:
    """Epoch seconds as whole epoch milliseconds (the precision Elasticsearch dates keep),
    rounded down."""
    return math.floor(seconds * 1000)


# How long appended sendings are scrubbed of an erased user: longer than what was in flight
# at the erasure takes to be numbered (a percolated batch, a window, a claimed follow-up,
# the mirror of an instance that died, which a survivor writes once it is reaped).
FORGET_SECONDS = 120.0


def _session_ms(seconds: float) -> int:
    # Session starts are whole milliseconds already (sessions.py): undo the division.
    return round(seconds * 1000)


# A resuming socket gets at most this many missed alerts (the newest).
REPLAY_LIMIT = 200


class Replay(NamedTuple):
    """Missed alerts to send a resuming socket, and whether they are all it missed."""

    alerts: list[Alert]
    complete: bool


class _Payload(msgspec.Struct, gc=False):
    """What a record says beyond who it reaches (not indexed). Documents of protocol 1 held
    the search text as `query`: never read, so never shown (they hold no `found`)."""

    count: int
    found: tuple[ProductCard, ...] = ()
    everyone: AlertWatch | None = None
    watches: dict[str, AlertWatch] = msgspec.field(default_factory=dict)
    at: str | None = None  # the record's `at`; absent from older documents (then `at` below)


class _Document(msgspec.Struct, gc=False):
    """A record as stored (mappings/alerts.json): who it reaches is indexed for replay, and
    `at` is the record's `earliest_ms`, which replay and retention filter on."""

    seq: int
    at: str
    recipients: list[str]
    everyone: bool
    excluded: tuple[str, ...]
    alert: _Payload

    @classmethod
    def of(cls, record: AlertRecord) -> _Document:
        return cls(
            seq=record.seq,
            at=iso_from_milliseconds(record.earliest_ms),
            recipients=list(record.watches),
            everyone=record.everyone is not None,
            excluded=record.excluded,
            alert=_Payload(
                count=record.count,
                found=record.found,
                everyone=record.everyone,
                watches=record.watches,
                at=record.at,
            ),
        )

    def record(self) -> AlertRecord:
        return AlertRecord(
            seq=self.seq,
            at=self.alert.at or self.at,
            earliest_ms=milliseconds_from_iso(self.at),
            count=self.alert.count,
            found=self.alert.found,
            watches=self.alert.watches,
            everyone=self.alert.everyone,
            excluded=self.excluded,
        )


def watches_path(user: str) -> str:
    """What a search fetches of a stored sending's watches to read `user`'s: their own (by
    path, for ids that are plain path segments, as session and account ids are)."""
    return f"alert.watches.{user}" if _PLAIN_ID.fullmatch(user) else "alert.watches"


def source_for(user: str) -> dict[str, list[str]]:
    """What a search fetches of each stored sending to make `user`'s alert of it: the
    sending's own fields and, of every recipient's watch, only the user's."""
    return {
        "includes": [
            "seq",
            "at",
            "recipients",
            "everyone",
            "excluded",
            "alert.found",
            "alert.count",
            "alert.everyone",
            "alert.at",
            watches_path(user),
        ]
    }


# What a search fetches of a stored sending to hold it whole (sending_cache.py): every
# recipient's part, for the reads of each of them.
WHOLE_SOURCE = {"includes": ["seq", "at", "recipients", "everyone", "excluded", "alert"]}


def record_from_source(source: dict[str, Any]) -> AlertRecord:
    """A sending as the index stores it (its `_source`, or the part of it a search asked for)."""
    return msgspec.convert(source, _Document).record()


# Compatibility shim, removed in 0.2.0: by then every deployment has run `percolert setup`
# on alerts v2, and v1 documents are past the log's retention anyway.
def upgrade_v1(document_id: str, source: dict[str, Any]) -> dict[str, Any]:
    """alerts v1 (one document per recipient, the whole alert stored) as a v2 record."""
    alert = source["alert"]
    recipient = source.get("recipient")
    payload: dict[str, Any] = {"count": alert["count"]}  # never the search text
    if recipient is None:
        payload["everyone"] = alert["watch"]
    else:
        payload["watches"] = {recipient: alert["watch"]}
    return {
        "seq": source["seq"],
        "at": source["at"],
        "recipients": [] if recipient is None else [recipient],
        "everyone": recipient is None,
        "excluded": source.get("excluded", []),
        "alert": payload,
    }


class Mirror(Protocol):
    """Where the sendings of every instance of a shared service wait until their maker has
    written them (a shared broker's mirrors, broker_redis.py): replay reads it beside this
    process's own buffer."""

    async def unwritten(self, after: int, upto: int) -> list[AlertRecord]: ...

    async def written(self, seqs: list[int]) -> None:
        """This process's sendings at `seqs` are visible to search now."""
        ...


class AlertLog:
    def __init__(
        self,
        client: AsyncElasticsearch,
        alias: str,
        *,
        flush_seconds: float = 0.1,
        retention: timedelta = timedelta(hours=24),
        max_buffered: int = 200_000,
        max_batch: int = 50_000,
        clock: Any = time.time,
        cache: SendingCache | None = None,
    ) -> None:
        """`cache`: the stored sendings reads share (sending_cache.py); one of its own
        by default."""
        self._client = client
        self._reads = DirectReads(client)
        self._alias = alias
        self._flush_seconds = flush_seconds
        self._retention = retention
        self._max_buffered = max_buffered
        self._max_batch = max_batch
        self._clock = clock
        # Positions are time-based, so "now" is above every alert of an earlier run: a client
        # told this position before the first alert of this run resumes from the right place.
        self._last_seq = int(clock() * 1_000_000)
        # Appended, not yet visible to search: waiting to be written, and being written.
        self._buffer: list[AlertRecord] = []
        self._writing: list[AlertRecord] = []
        self._encoder = msgspec.json.Encoder()
        self.write_failures = 0
        self.rejected = 0  # sendings Elasticsearch refused for good, dropped
        self._mirror: Mirror | None = None
        # Erased users, until when appended sendings are scrubbed of them (`forget`).
        self._forgotten: dict[str, float] = {}
        # Mirrored sendings dropped unwritten (they named only erased users).
        self._unmirrored: list[int] = []
        # Set when the write in flight is done.
        self._written: anyio.Event | None = None
        self.cache = cache if cache is not None else SendingCache()

    def mirrored_by(self, mirror: Mirror) -> None:
        """Replay also reads what other instances have not yet written, and `mirror` hears
        what this one has written (set once, before the log runs)."""
        self._mirror = mirror

    @property
    def last_seq(self) -> int:
        return self._last_seq

    async def max_seq(self) -> int:
        """The highest position handed out so far: this process's, or the log's last (when
        Elasticsearch cannot say, this process's: µs time, above every earlier run's)."""
        try:
            response = await self._client.search(
                index=self._alias, size=1, sort=[{"seq": "desc"}], source_includes=["seq"]
            )
        except (TransportError, ElasticsearchApiError) as error:
            logger.warning("reading the alert log's last position failed: %s", error)
            return self._last_seq
        hits = response["hits"]["hits"]
        return max([self._last_seq, *(int(hit["_source"]["seq"]) for hit in hits)])

    def next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, int(self._clock() * 1_000_000))
        return self._last_seq

    def append(self, record: AlertRecord) -> None:
        if self._forgotten:
            scrubbed = self._scrubbed(record)
            if scrubbed is None:
                return
            record = scrubbed
        self._buffer.append(record)
        self._bound()

    def forget(self, user: str) -> bool:
        """`user` was erased: take them out of the sendings not yet written, and out of
        those appended for the next `FORGET_SECONDS`. True if a write in flight names them
        (once it is done, `until_written`, the stored log must be scrubbed again)."""
        self._forgotten[user] = self._clock() + FORGET_SECONDS
        self.cache.forget(user)
        kept = []
        for record in self._buffer:
            scrubbed = record.without(user)
            if scrubbed is None:
                self._unmirrored.append(record.seq)
            else:
                kept.append(scrubbed)
        self._buffer = kept
        return any(record.names(user) for record in self._writing)

    def _scrubbed(self, record: AlertRecord) -> AlertRecord | None:
        now = self._clock()
        self._forgotten = {user: until for user, until in self._forgotten.items() if until > now}
        for user in self._forgotten:
            without = record.without(user)
            if without is None:
                self._unmirrored.append(record.seq)
                return None
            record = without
        return record

    def _scrub_all(self, records: list[AlertRecord]) -> list[AlertRecord]:
        if not self._forgotten:
            return records
        return [scrubbed for record in records if (scrubbed := self._scrubbed(record))]

    async def until_written(self) -> None:
        """Return once the write in flight now, if any, is done (written or put back)."""
        if self._writing and self._written is not None:
            await self._written.wait()

    def _bound(self) -> None:
        excess = len(self._buffer) + len(self._writing) - self._max_buffered
        if excess > 0:
            # Elasticsearch has been unreachable for long; keep memory bounded.
            dropped = min(excess, len(self._buffer))
            del self._buffer[:dropped]
            logger.warning("alert log buffer full: %d sendings will not be recoverable", dropped)

    async def flush(self) -> None:
        """Write what is buffered; it stays replayable (in `_writing`) until it is visible.

        One bulk request per flush, whatever its size: each request waits for a refresh
        (about a second), so writing in chunks of 500 capped the log at ~500 alerts a second
        and let the buffer grow under load. The body is encoded here in one go and the
        response cut to each item's status (and error): flushing through the client's bulk
        helper took a quarter of the server's samples under load, mostly its JSON encoding and
        the parsing of a ~200-byte result per alert (docs/benchmarks/).
        What failed for the cluster's sake (no answer, 429, 5xx, a write block) goes back to
        the front of the buffer for the next flush: documents are keyed by `seq`, so writing
        one again is harmless. What Elasticsearch refused for good (any other 4xx: the
        document itself) would be refused forever and hold up everything behind it: it is
        dropped, counted and logged.
        """
        if self._unmirrored and self._mirror is not None:
            # Never to be written: nothing else drops them from the mirror.
            dropped, self._unmirrored = self._unmirrored, []
            await self._mirror.written(dropped)
        if self._writing or not self._buffer:
            return  # one write at a time
        batch = self._buffer[: self._max_batch]
        del self._buffer[: len(batch)]
        self._writing = batch
        written = self._written = anyio.Event()
        again = batch
        try:
            again = await self._write(batch)
            if self._mirror is not None:
                # Visible to search now (refresh=wait_for): replay finds these in the log.
                kept = {record.seq for record in again}
                await self._mirror.written([r.seq for r in batch if r.seq not in kept])
        except (TransportError, ElasticsearchApiError) as error:
            self.write_failures += 1
            logger.warning(
                "writing %d sendings to the alert log failed, will retry: %s", len(batch), error
            )
        finally:
            # Also when cancelled: what was not written is written at the next flush (what
            # it names of users erased meanwhile taken out).
            self._writing = []
            self._buffer[:0] = self._scrub_all(again)
            self._bound()
            written.set()

    async def _write(self, batch: list[AlertRecord]) -> list[AlertRecord]:
        """One bulk request, waiting until it is visible to search; returns the sendings to
        write again."""
        body = bytearray()
        for record in batch:
            body += b'{"index":{"_id":"%d"}}\n' % record.seq
            body += self._encoder.encode(_Document.of(record))
            body += b"\n"
        response = await self._client.bulk(
            index=self._alias,
            operations=cast(Any, bytes(body)),  # the transport sends NDJSON bytes as is
            refresh="wait_for",
            filter_path=[
                "errors",
                "items.*.status",
                "items.*.error.type",
                "items.*.error.reason",
            ],
        )
        return self._sort_out(batch, response.body)

    async def store(self, records: list[AlertRecord]) -> bool:
        """Write sendings this process did not make (a dead instance's, from its mirror) at
        once: True when each is visible to search (or refused for good), False when some
        are to be written again later. Documents are keyed by `seq`: writing one that is
        already there changes nothing."""
        records = self._scrub_all(records)
        for start in range(0, len(records), self._max_batch):
            try:
                if await self._write(records[start : start + self._max_batch]):
                    return False
            except (TransportError, ElasticsearchApiError) as error:
                self.write_failures += 1
                logger.warning("writing another instance's sendings failed: %s", error)
                return False
        return True

    def _sort_out(self, batch: list[AlertRecord], body: dict[str, Any]) -> list[AlertRecord]:
        """From a bulk answer: the sendings to write again; those refused for good are
        counted and logged."""
        if not body.get("errors"):
            return []
        items = body.get("items", [])
        if len(items) != len(batch):
            self.write_failures += 1
            logger.warning("the alert log's bulk answer does not match its request: will retry")
            return batch
        again: list[AlertRecord] = []
        again_error: Any = None
        refused: list[tuple[AlertRecord, Any]] = []
        for record, item in zip(batch, items, strict=True):
            result = next(iter(item.values()))
            if result.get("status", 0) < 300:
                continue
            if bulk.worth_retrying(result):
                again.append(record)
                again_error = again_error or result.get("error")
            else:
                refused.append((record, result.get("error")))
        if again:
            self.write_failures += 1
            logger.warning(
                "writing %d of %d sendings to the alert log failed, will retry: %s",
                len(again),
                len(batch),
                again_error,
            )
        if refused:
            self.rejected += len(refused)
            record, error = refused[0]
            logger.error(
                "the alert log refused %d sendings for good, dropped (not replayable); "
                "the first, seq %d: %s",
                len(refused),
                record.seq,
                error,
            )
        return again

    async def prune(self) -> None:
        cutoff = iso_from_seconds(time.time() - self._retention.total_seconds())
        await es.delete_older(self._client, self._alias, cutoff)

    async def run(self) -> None:
        """Flush every `flush_seconds` and prune every ten minutes, until cancelled; a
        cancelled run still writes what is buffered (bounded by the caller's deadline)."""
        next_prune = 0.0
        try:
            while True:
                await anyio.sleep(self._flush_seconds)
                await self.flush()
                self.cache.sweep()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 600
                    try:
                        await self.prune()
                    except (TransportError, ElasticsearchApiError) as error:
                        logger.warning("pruning the alert log failed: %s", error)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                while self._buffer:
                    before = len(self._buffer)
                    await self.flush()
                    if len(self._buffer) >= before:
                        break

    def _stream_query(
        self, user: str, extra: list[dict[str, Any]], everyone_since_ms: int | None = None
    ) -> dict[str, Any]:
        # Default watches' sendings, for everyone: since `everyone_since_ms` when given.
        everyone: list[dict[str, Any]] = [{"term": {"everyone": True}}]
        if everyone_since_ms is not None:
            everyone.append({"range": {"at": {"gte": everyone_since_ms, "format": "epoch_millis"}}})
        return {
            "bool": {
                "filter": [
                    {
                        "bool": {
                            "should": [
                                {"term": {"recipients": user}},
                                {
                                    "bool": {
                                        "filter": everyone,
                                        "must_not": [{"term": {"excluded": user}}],
                                    }
                                },
                            ],
                            "minimum_should_match": 1,
                        }
                    },
                    *extra,
                ]
            }
        }

    async def _read(
        self,
        user: str,
        since_ms: int,
        extra: list[dict[str, Any]],
        limit: int,
        everyone_since_ms: int | None = None,
        reads: Reads | None = None,
    ) -> list[Alert]:
        """Which stored sendings reach `user` is asked of Elasticsearch (their positions
        only); the sendings themselves come from the cache, each one missing there fetched
        whole once for all who want it (sending_cache.py)."""
        # In the body: a user id is never part of a URL, which the client logs.
        session = {"range": {"at": {"gte": since_ms, "format": "epoch_millis"}}}
        body = {
            "query": self._stream_query(user, [session, *extra], everyone_since_ms),
            "sort": [{"seq": "desc"}],
            "size": limit,
            "_source": False,
        }
        read = reads or self._reads
        response = await read.search(self._alias, body)
        seqs = [int(hit["sort"][0]) for hit in response["hits"]["hits"]]

        async def fetch(missing: list[int]) -> list[AlertRecord]:
            whole = await read.search(
                self._alias,
                {
                    "query": {"terms": {"seq": missing}},
                    "size": len(missing),
                    "_source": WHOLE_SOURCE,
                },
            )
            return [record_from_source(hit["_source"]) for hit in whole["hits"]["hits"]]

        held = await self.cache.records(seqs, fetch)
        return _alerts_for(user, (held[seq] for seq in seqs if seq in held))

    async def _unwritten(
        self, user: str, after: int, upto: int, wanted: Callable[[AlertRecord], bool]
    ) -> list[Alert]:
        """The user's alerts among the sendings not yet visible to search: in this
        process's buffer, and (shared service) in the mirrors of every instance.

        Taken before Elasticsearch is read, never after: a sending leaves here only once
        a search can see it, so each one is in this list or in the read that follows —
        whereas a flush completing during the read would take it out of both.
        """
        records = [r for part in (self._writing, self._buffer) for r in part if wanted(r)]
        if self._mirror is not None:
            records += (r for r in await self._mirror.unwritten(after, upto) if wanted(r))
        return _alerts_for(user, records)

    async def missed(
        self,
        user: str,
        after: int,
        upto: int,
        *,
        since: float,
        everyone_since: float | None = None,
        limit: int = REPLAY_LIMIT,
    ) -> list[Alert]:
        """The user's alerts with after < seq <= upto, oldest first (the newest `limit`):
        `replay` without whether that is all of them."""
        replay = await self.replay(
            user, after, upto, since=since, everyone_since=everyone_since, limit=limit
        )
        return replay.alerts

    async def replay(
        self,
        user: str,
        after: int,
        upto: int,
        *,
        since: float,
        everyone_since: float | None = None,
        limit: int = REPLAY_LIMIT,
        reads: Reads | None = None,
    ) -> Replay:
        """The user's alerts with after < seq <= upto, oldest first (the newest `limit`),
        leaving out any that counts a search made before `since` (epoch seconds: when the
        user's session began) and, with `everyone_since`, default watches' alerts counting
        a search made before then (an account's own history is its own; the news of default
        watches starts when it came); and whether that is every one of them (one more is
        read to tell)."""
        since_ms = _session_ms(since)
        everyone_ms = None if everyone_since is None else _session_ms(everyone_since)
        unwritten = await self._unwritten(
            user,
            after,
            upto,
            lambda r: after < r.seq <= upto and _since(r, user, since_ms, everyone_ms),
        )
        positions = {"range": {"seq": {"gt": after, "lte": upto}}}
        stored = await self._read(user, since_ms, [positions], limit + 1, everyone_ms, reads)
        alerts = _merge(stored, unwritten, limit + 1)
        return Replay(alerts[-limit:], complete=len(alerts) <= limit)

    async def recent(
        self,
        user: str,
        upto: int,
        *,
        since: float,
        everyone_since: float | None = None,
        limit: int = 20,
        reads: Reads | None = None,
    ) -> list[Alert]:
        """The user's newest alerts with seq <= upto about searches made since `since` (epoch
        seconds: when the user's session began; `everyone_since` as for `missed`), oldest
        first. A greeting passes the position from which its socket gets alerts live, so
        none is listed and then sent again; and `reads`, which sends the reads of the
        greetings asked at once together."""
        since_ms = _session_ms(since)
        everyone_ms = None if everyone_since is None else _session_ms(everyone_since)
        unwritten = await self._unwritten(
            user, 0, upto, lambda r: r.seq <= upto and _since(r, user, since_ms, everyone_ms)
        )
        stored = await self._read(
            user, since_ms, [{"range": {"seq": {"lte": upto}}}], limit, everyone_ms, reads
        )
        return _merge(stored, unwritten, limit)


def _since(record: AlertRecord, user: str, since_ms: int, everyone_ms: int | None) -> bool:
    """Whether the record counts only searches made late enough for `user`."""
    if record.earliest_ms < since_ms:
        return False
    own = user in record.watches
    return own or everyone_ms is None or record.earliest_ms >= everyone_ms


def _alerts_for(user: str, records: Iterable[AlertRecord]) -> list[Alert]:
    """The user's alert in each record that reaches them."""
    return [alert for record in records if (alert := record.alert_for(user)) is not None]


def _merge(stored: list[Alert], unwritten: list[Alert], limit: int) -> list[Alert]:
    by_seq = {alert.seq: alert for alert in stored}
    by_seq.update((alert.seq, alert) for alert in unwritten)
    return [by_seq[seq] for seq in sorted(by_seq)[-limit:]]
