"""The alert log: every alert sent, kept in Elasticsearch so a socket that reconnects gets
what it missed, in order and without duplicates.

Each alert has a position (`seq`), increasing across the whole service and across restarts
(microseconds since the epoch, bumped to stay strictly increasing). A recipient's stream is
the alerts addressed to them plus the default-watch alerts addressed to everyone but an
excluded few — those are stored once, not once per user. Writes are buffered and sent in
bulk; until a write is visible to search, replay reads the buffer as well. A retention task
drops alerts older than the retention period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import anyio
import msgspec
from elastic_transport import TransportError
from elasticsearch import ApiError as ElasticsearchApiError
from elasticsearch import AsyncElasticsearch

from percolert.messages import Alert

logger = logging.getLogger("percolert.alertlog")


class LoggedAlert(msgspec.Struct, frozen=True, kw_only=True, gc=False):  # see messages.Alert
    seq: int
    recipient: str | None = None  # None: everyone but `excluded`
    excluded: tuple[str, ...] = ()
    at: str
    alert: Alert

    def reaches(self, user: str) -> bool:
        if self.recipient is not None:
            return self.recipient == user
        return user not in self.excluded


class _Document(msgspec.Struct, gc=False):
    """An alert as stored (mappings/alerts.json)."""

    seq: int
    recipient: str | None
    everyone: bool
    excluded: tuple[str, ...]
    at: str
    alert: Alert

    @classmethod
    def of(cls, entry: LoggedAlert) -> _Document:
        return cls(
            seq=entry.seq,
            recipient=entry.recipient,
            everyone=entry.recipient is None,
            excluded=entry.excluded,
            at=entry.at,
            alert=entry.alert,
        )


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
        self._buffer: list[LoggedAlert] = []
        self._encoder = msgspec.json.Encoder()
        self.write_failures = 0

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, int(self._clock() * 1_000_000))
        return self._last_seq

    def append(self, entry: LoggedAlert) -> None:
        self._buffer.append(entry)
        if len(self._buffer) > self._max_buffered:
            # Elasticsearch has been unreachable for long; keep memory bounded.
            dropped = len(self._buffer) - self._max_buffered
            del self._buffer[:dropped]
            logger.warning("alert log buffer full: %d alerts will not be recoverable", dropped)

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
        for entry in batch:
            body += b'{"index":{"_id":"%d"}}\n' % entry.seq
            body += self._encoder.encode(_Document.of(entry))
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
            logger.warning("writing %d alerts to the log failed, will retry: %s", len(batch), error)
            return
        if response.body.get("errors"):
            self.write_failures += 1
            first = response.body["items"][0]
            logger.warning(
                "writing %d alerts to the log failed in part, will retry: %s",
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
                                {"term": {"recipient": user}},
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

    async def _read(self, user: str, extra: list[dict[str, Any]], limit: int) -> list[LoggedAlert]:
        response = await self._client.search(
            index=self._alias,
            query=self._stream_query(user, extra),
            sort=[{"seq": "desc"}],
            size=limit,
        )
        return [msgspec.convert(hit["_source"], LoggedAlert) for hit in response["hits"]["hits"]]

    def _buffered(self, user: str) -> list[LoggedAlert]:
        return [entry for entry in self._buffer if entry.reaches(user)]

    async def missed(self, user: str, after: int, upto: int, limit: int = 200) -> list[LoggedAlert]:
        """The user's alerts with after < seq <= upto, oldest first (the newest `limit`)."""
        stored = await self._read(user, [{"range": {"seq": {"gt": after, "lte": upto}}}], limit)
        return _merge(stored, self._buffered(user), lambda seq: after < seq <= upto, limit)

    async def recent(self, user: str, since: float, limit: int = 20) -> list[LoggedAlert]:
        """The user's newest alerts since `since` (epoch seconds), oldest first."""
        since_iso = datetime.fromtimestamp(since, UTC).isoformat()
        stored = await self._read(user, [{"range": {"at": {"gte": since_iso}}}], limit)
        low = int(since * 1_000_000)
        return _merge(stored, self._buffered(user), lambda seq: seq >= low, limit)


def _merge(
    stored: list[LoggedAlert], buffered: Collection[LoggedAlert], wanted: Any, limit: int
) -> list[LoggedAlert]:
    by_seq = {entry.seq: entry for entry in stored}
    for entry in buffered:
        if wanted(entry.seq):
            by_seq[entry.seq] = entry
    return [by_seq[seq] for seq in sorted(by_seq)[-limit:]]
