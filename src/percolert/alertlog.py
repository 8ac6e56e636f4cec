"""The alert log: every alert sent, kept in Elasticsearch so a socket that reconnects gets
what it missed, in order and without duplicates.

Alerts are logged by sending (`AlertRecord`): the owners one search alerts at once share
one position (`seq`) and one document, which names each recipient's watch; a default-watch
sending is one document for everyone but an excluded few. Positions increase across the
whole service and across restarts (microseconds since the epoch, bumped to stay strictly
increasing), and a user gets at most one alert per position. Writes are buffered and sent
in bulk; until a write is visible to search, replay reads the buffer as well. A retention
task drops alerts older than the retention period.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import anyio
import msgspec
from elastic_transport import TransportError
from elasticsearch import ApiError as ElasticsearchApiError
from elasticsearch import AsyncElasticsearch

from percolert.messages import Alert, AlertWatch

logger = logging.getLogger("percolert.alertlog")


_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")  # session ids (token_urlsafe): safe in a path


def alert_id(seq: int, watch_id: str) -> str:
    """An alert's id: a user gets at most one alert per position and watch."""
    return f"{seq}-{watch_id}"


class AlertRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):  # see messages.Alert
    """The alerts of one sending, logged as one document: the same search text at one
    position (`seq`) to each recipient in `watches`, through the watch of theirs that
    matched — or through the default watch `everyone` to every user but `excluded`.

    One document per sending rather than per recipient: a popular search reaches many
    subscribers at once, and writing a document for each of them was most of what the log
    cost Elasticsearch (docs/benchmarks/README.md).
    """

    seq: int
    at: str
    query: str
    count: int = 1
    watches: dict[str, AlertWatch] = msgspec.field(default_factory=dict)
    everyone: AlertWatch | None = None
    excluded: tuple[str, ...] = ()

    def watch_for(self, user: str) -> AlertWatch | None:
        watch = self.watches.get(user)
        if watch is None and self.everyone is not None and user not in self.excluded:
            return self.everyone
        return watch

    def alert(self, watch: AlertWatch) -> Alert:
        return Alert(
            id=alert_id(self.seq, watch.id),
            seq=self.seq,
            watch=watch,
            query=self.query,
            count=self.count,
            at=self.at,
        )

    def alert_for(self, user: str) -> Alert | None:
        watch = self.watch_for(user)
        return None if watch is None else self.alert(watch)


class _Payload(msgspec.Struct, gc=False):
    """What a record says beyond who it reaches (not indexed)."""

    query: str
    count: int
    everyone: AlertWatch | None = None
    watches: dict[str, AlertWatch] = msgspec.field(default_factory=dict)


class _Document(msgspec.Struct, gc=False):
    """A record as stored (mappings/alerts.json): who it reaches is indexed for replay."""

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
            at=record.at,
            recipients=list(record.watches),
            everyone=record.everyone is not None,
            excluded=record.excluded,
            alert=_Payload(
                query=record.query,
                count=record.count,
                everyone=record.everyone,
                watches=record.watches,
            ),
        )

    def record(self) -> AlertRecord:
        return AlertRecord(
            seq=self.seq,
            at=self.at,
            query=self.alert.query,
            count=self.alert.count,
            watches=self.alert.watches,
            everyone=self.alert.everyone,
            excluded=self.excluded,
        )


def upgrade_v1(document_id: str, source: dict[str, Any]) -> dict[str, Any]:
    """alerts v1 (one document per recipient, the whole alert stored) as a v2 record."""
    alert = source["alert"]
    recipient = source.get("recipient")
    payload: dict[str, Any] = {"query": alert["query"], "count": alert["count"]}
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
    ) -> None:
        self._client = client
        self._alias = alias
        self._flush_seconds = flush_seconds
        self._retention = retention
        self._max_buffered = max_buffered
        self._max_batch = max_batch
        self._clock = clock
        # Positions are time-based, so "now" is above every alert of an earlier run: a client
        # told this position before the first alert of this run resumes from the right place.
        self._last_seq = int(clock() * 1_000_000)
        # Appended, not yet visible to search (being written or waiting to be).
        self._buffer: list[AlertRecord] = []
        self._encoder = msgspec.json.Encoder()
        self.write_failures = 0

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, int(self._clock() * 1_000_000))
        return self._last_seq

    def append(self, record: AlertRecord) -> None:
        self._buffer.append(record)
        if len(self._buffer) > self._max_buffered:
            # Elasticsearch has been unreachable for long; keep memory bounded.
            dropped = len(self._buffer) - self._max_buffered
            del self._buffer[:dropped]
            logger.warning("alert log buffer full: %d sendings will not be recoverable", dropped)

    async def flush(self) -> None:
        """Write what is buffered; it stays buffered (and replayable) until it is visible.

        One bulk request per flush, whatever its size: each request waits for a refresh
        (about a second), so writing in chunks of 500 capped the log at ~500 alerts a second
        and let the buffer grow under load. The body is encoded here in one go and the
        response cut to its errors: flushing through the client's bulk helper took a quarter of
        the server's samples under load, mostly its JSON encoding and the parsing of a
        ~200-byte result per alert (docs/benchmarks/).
        All or nothing: documents are keyed by `seq`, so writing a batch again is harmless.
        """
        batch = self._buffer[: self._max_batch]
        if not batch:
            return
        body = bytearray()
        for record in batch:
            body += b'{"index":{"_id":"%d"}}\n' % record.seq
            body += self._encoder.encode(_Document.of(record))
            body += b"\n"
        try:
            response = await self._client.bulk(
                index=self._alias,
                operations=cast(Any, bytes(body)),  # the transport sends NDJSON bytes as is
                refresh="wait_for",
                filter_path=["errors", "items.*.error"],
            )
        except (TransportError, ElasticsearchApiError) as error:
            self.write_failures += 1
            logger.warning(
                "writing %d sendings to the alert log failed, will retry: %s", len(batch), error
            )
            return
        if response.body.get("errors"):
            self.write_failures += 1
            first = response.body["items"][0]
            logger.warning(
                "writing %d sendings to the alert log failed in part, will retry: %s",
                len(batch),
                next(iter(first.values()))["error"],
            )
            return
        del self._buffer[: len(batch)]

    async def prune(self) -> None:
        cutoff = datetime.now(UTC) - self._retention
        await self._client.delete_by_query(
            index=self._alias,
            query={"range": {"at": {"lt": cutoff.isoformat()}}},
            conflicts="proceed",
            wait_for_completion=False,
        )

    async def run(self) -> None:
        """Flush every `flush_seconds` and prune every ten minutes, until cancelled; a
        cancelled run still writes what is buffered (bounded by the caller's deadline)."""
        next_prune = 0.0
        try:
            while True:
                await anyio.sleep(self._flush_seconds)
                await self.flush()
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

    def _stream_query(self, user: str, extra: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "bool": {
                "filter": [
                    {
                        "bool": {
                            "should": [
                                {"term": {"recipients": user}},
                                {
                                    "bool": {
                                        "filter": [{"term": {"everyone": True}}],
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

    async def _read(self, user: str, extra: list[dict[str, Any]], limit: int) -> list[Alert]:
        # A record lists every recipient's watch; only this user's is fetched (by path, so
        # only for ids that are plain path segments, as session ids are). In the body: a
        # user id is never part of a URL, which the client logs.
        watches = f"alert.watches.{user}" if _PLAIN_ID.fullmatch(user) else "alert.watches"
        response = await self._client.search(
            index=self._alias,
            query=self._stream_query(user, extra),
            sort=[{"seq": "desc"}],
            size=limit,
            source={
                "includes": [
                    "seq",
                    "at",
                    "recipients",
                    "everyone",
                    "excluded",
                    "alert.query",
                    "alert.count",
                    "alert.everyone",
                    watches,
                ]
            },
        )
        records = (
            msgspec.convert(hit["_source"], _Document).record() for hit in response["hits"]["hits"]
        )
        return _alerts_for(user, records)

    def _buffered(self, user: str) -> list[Alert]:
        return _alerts_for(user, self._buffer)

    async def missed(self, user: str, after: int, upto: int, limit: int = 200) -> list[Alert]:
        """The user's alerts with after < seq <= upto, oldest first (the newest `limit`)."""
        stored = await self._read(user, [{"range": {"seq": {"gt": after, "lte": upto}}}], limit)
        return _merge(stored, self._buffered(user), lambda seq: after < seq <= upto, limit)

    async def recent(self, user: str, since: float, limit: int = 20) -> list[Alert]:
        """The user's newest alerts since `since` (epoch seconds), oldest first."""
        since_iso = datetime.fromtimestamp(since, UTC).isoformat()
        stored = await self._read(user, [{"range": {"at": {"gte": since_iso}}}], limit)
        low = int(since * 1_000_000)
        return _merge(stored, self._buffered(user), lambda seq: seq >= low, limit)


def _alerts_for(user: str, records: Iterable[AlertRecord]) -> list[Alert]:
    """The user's alert in each record that reaches them."""
    return [alert for record in records if (alert := record.alert_for(user)) is not None]


def _merge(
    stored: list[Alert], buffered: Collection[Alert], wanted: Any, limit: int
) -> list[Alert]:
    by_seq = {alert.seq: alert for alert in stored}
    for alert in buffered:
        if wanted(alert.seq):
            by_seq[alert.seq] = alert
    return [by_seq[seq] for seq in sorted(by_seq)[-limit:]]
