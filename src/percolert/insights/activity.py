"""The search log's writer: what happened on this instance (searches, alerts delivered, alerts
followed to the shop, who is connected), buffered in memory and written in bulk once a second,
off the request path. A search only appends to a bounded buffer: the log never adds an
Elasticsearch round trip to a search, and an unavailable cluster costs the log (its oldest
entries, counted), never the searches.

Nothing written names a shopper: no session, account or customer id, only texts (redacted),
counts, the shop's default watches' ids and this instance's id. A shopper's own watch is
logged by its words (redacted) and a hash of them, never its id: its id leads to its owner in
the watches index, its words only to everyone who watches the same words.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import msgspec
from elastic_transport import TransportError
from elasticsearch import ApiError as ElasticsearchApiError
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import AlertWatch, Watch
from percolert.core.records import AlertRecord
from percolert.core.settings import Settings
from percolert.engine import bulk
from percolert.insights import searchlog
from percolert.insights.redaction import redacted

logger = logging.getLogger(__name__)

# Entries waiting to be written, at most; past it the oldest go (counted in `dropped`).
MAX_BUFFERED = 100_000
# Entries in one bulk request, at most.
_MAX_BATCH = 5_000
# How often the buffer is written, and how often this instance says who is connected.
FLUSH_SECONDS = 1.0
PRESENCE_SECONDS = 5.0
# Searches are counted by text and logged with each flush; alerts are counted by
# watch and logged with each presence. Either is logged early once this many keys are counted.
_MAX_COUNTED = 10_000
_RETENTION_SECONDS = 3_600.0
# Watch labels whose logged id and words are kept (a few hundred bytes each); past it, all
# are forgotten and worked out again.
_MAX_LOGGED_LABELS = 100_000


class Entry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One document of the search log (mappings/searchlog.json)."""

    kind: str
    at: int  # epoch milliseconds
    text: str | None = None
    results: int | None = None
    count: int | None = None
    watch_id: str | None = None
    label: str | None = None
    default: bool | None = None
    alerts: int | None = None
    shoppers: int | None = None
    sockets: int | None = None
    instance: str | None = None


class _WatchCount:
    __slots__ = ("alerts", "default", "label", "shoppers")

    def __init__(self, label: str, default: bool) -> None:
        self.label = label
        self.default = default
        self.alerts = 0
        self.shoppers = 0


def watch_label(watch: AlertWatch | Watch, *, phrase: bool = False) -> str:
    """How the demand view names a watch: its words (in quotes for a `phrase` watch), and
    its filters. An alert's watch does not say whether it is a phrase: the log's labels
    never quote."""
    label = f'"{watch.terms}"' if phrase else watch.terms
    if watch.category:
        label += f" in {watch.category}"
    if watch.max_price is not None:
        label += f" under {watch.max_price:g}"
    return label[:200]


def logged_watch(watch: AlertWatch | Watch, default: bool) -> tuple[str, str]:
    """The id and label the log counts `watch` under: a default watch's own (the shop's),
    a shopper's watch's redacted words and a hash of them (every shopper's watch of the same
    words counts together, and the log leads to no shopper)."""
    if default:
        return watch.id, watch_label(watch)
    return logged_words(watch_label(watch))


def logged_words(label: str) -> tuple[str, str]:
    """The id and label every shopper's watch labelled `label` is counted under."""
    words = redacted(label)
    return "words-" + hashlib.blake2b(words.encode(), digest_size=10).hexdigest(), words


class ActivityLog:
    """`presence()`: this instance's connected shoppers and sockets, read every few seconds."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        settings: Settings,
        presence: Callable[[], tuple[int, int]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._settings = settings
        self._presence = presence
        self._clock = clock
        self._enabled = settings.search_log_days > 0
        self._instance = settings.instance_id or ""
        self._buffer: deque[Entry] = deque(maxlen=MAX_BUFFERED)
        # The days' indices known to exist (made by this writer or found made).
        self._days: set[str] = set()
        # Searches are counted by text, alerts by watch, and logged as one entry per text or
        # watch: a popular search repeated a hundred times a second is one entry a second, and
        # a search that alerts hundreds of owners writes no entry of its own.
        self._searches: dict[tuple[str, bool], list[int]] = {}
        self._alerts: dict[str, _WatchCount] = {}
        # What shoppers' watches are counted under, by their label (`logged_words`: a
        # redaction and a hash), worked out once per label instead of once per alert
        # delivered: a search reaching 125 shoppers watching its word redacted it 125 times.
        self._logged: dict[str, tuple[str, str]] = {}
        self._encoder = msgspec.json.Encoder()
        self.dropped = 0
        self.written = 0
        self.write_failures = 0

    def _now_ms(self) -> int:
        return math.floor(self._clock() * 1000)

    def _append(self, entry: Entry) -> None:
        if not self._enabled:
            return
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1  # the deque lets its oldest go
        self._buffer.append(entry)

    def searched(self, text: str, results: int) -> None:
        """A search of `text` found `results` products (the answer's total)."""
        if not self._enabled:
            return
        key = (redacted(text), results == 0)
        count = self._searches.get(key)
        if count is None:
            if len(self._searches) >= _MAX_COUNTED:
                self._count_out_searches()
            self._searches[key] = [1, results]
        else:
            count[0] += 1
            count[1] = max(count[1], results)

    def _count_out_searches(self) -> None:
        at = self._now_ms()
        counts, self._searches = self._searches, {}
        for (text, _), (searches, results) in counts.items():
            self._append(Entry(kind="search", at=at, text=text, count=searches, results=results))

    def _count(self, watch: AlertWatch, default: bool) -> _WatchCount:
        label = watch_label(watch)
        if default:
            watch_id = watch.id
        else:
            logged = self._logged.get(label)
            if logged is None:
                if len(self._logged) >= _MAX_LOGGED_LABELS:
                    self._logged.clear()
                logged = self._logged[label] = logged_words(label)
            watch_id, label = logged
        count = self._alerts.get(watch_id)
        if count is None:
            if len(self._alerts) >= _MAX_COUNTED:
                self._count_out()
            count = self._alerts[watch_id] = _WatchCount(label, default)
        return count

    def published(self, records: list[AlertRecord]) -> None:
        """Sendings this instance published (each is published by one instance only): one
        alert for each watch they go through."""
        if not self._enabled:
            return
        for record in records:
            if record.everyone is not None:
                self._count(record.everyone, True).alerts += 1
                continue
            for watch in {watch.id: watch for watch in record.watches.values()}.values():
                self._count(watch, False).alerts += 1

    def delivered(self, watch: AlertWatch, default: bool, shoppers: int) -> None:
        """This instance delivered an alert of `watch` to `shoppers` shoppers (its own)."""
        if self._enabled:
            self._count(watch, default).shoppers += shoppers

    def product_alert_delivered(self, watch: AlertWatch, default: bool, shoppers: int) -> None:
        """A product alert of `watch` went live to its owner here: a product alert has one
        recipient and is not published as sendings are, so it counts where it is shown."""
        if self._enabled:
            count = self._count(watch, default)
            count.alerts += 1
            count.shoppers += shoppers

    def _count_out(self) -> None:
        """The alerts counted since the last time, as one entry per watch."""
        at = self._now_ms()
        counts, self._alerts = self._alerts, {}
        for watch_id, count in counts.items():
            self._append(
                Entry(
                    kind="alert",
                    at=at,
                    watch_id=watch_id,
                    label=count.label,
                    default=count.default,
                    alerts=count.alerts,
                    shoppers=count.shoppers,
                    instance=self._instance,
                )
            )

    def visited(self, watch: AlertWatch | Watch, *, default: bool) -> None:
        """A shopper followed an alert of `watch` to the shop."""
        watch_id, _ = logged_watch(watch, default)
        self._append(
            Entry(kind="visit", at=self._now_ms(), watch_id=watch_id, default=default, count=1)
        )

    def roll_up(self, *, presence: bool = True) -> None:
        """Log what was counted since the last time (and, with `presence`, who is connected
        here now)."""
        if presence:
            self._present()
            self._count_out()
        self._count_out_searches()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        """One bulk request of what is buffered; what failed for the cluster's sake goes back
        to the front, what Elasticsearch refused for good is dropped and counted."""
        if not self._buffer:
            return
        batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), _MAX_BATCH))]
        again: list[Entry] = batch
        try:
            again = await self._write(batch)
        except (TransportError, ElasticsearchApiError) as error:
            self.write_failures += 1
            logger.warning(
                "writing %d search log entries failed, will retry: %s", len(batch), error
            )
        finally:
            room = MAX_BUFFERED - len(self._buffer)
            if len(again) > room:
                self.dropped += len(again) - room
                again = again[len(again) - room :]
            self._buffer.extendleft(reversed(again))

    async def _write(self, batch: list[Entry]) -> list[Entry]:
        body = bytearray()
        for entry in batch:
            index = searchlog.index_at(self._settings, entry.at)
            if index not in self._days:
                await searchlog.create_day(self._client, index)
                self._days.add(index)
            body += b'{"index":{"_index":%s}}\n' % self._encoder.encode(index)
            body += self._encoder.encode(entry)
            body += b"\n"
        response = await self._client.bulk(
            operations=cast(Any, bytes(body)),  # the transport sends NDJSON bytes as is
            filter_path=["errors", "items.*.status", "items.*.error.type"],
        )
        answer = response.body
        if not answer.get("errors"):
            self.written += len(batch)
            return []
        again = []
        for entry, item in zip(batch, answer.get("items", []), strict=False):
            result = next(iter(item.values()))
            if int(result.get("status", 0)) < 300:
                self.written += 1
            elif bulk.worth_retrying(result):
                again.append(entry)
            elif (result.get("error") or {}).get("type") == "index_not_found_exception":
                # The day's index went (deleted by hand) on a cluster that makes none on a
                # first write: made again on the retry.
                self._days.discard(searchlog.index_at(self._settings, entry.at))
                again.append(entry)
            else:
                self.dropped += 1
                logger.warning("the search log refused an entry: %s", result.get("error"))
        return again

    def _present(self) -> None:
        shoppers, sockets = self._presence()
        self._append(
            Entry(
                kind="presence",
                at=self._now_ms(),
                shoppers=shoppers,
                sockets=sockets,
                instance=self._instance,
            )
        )

    async def run(self) -> None:
        """Write the buffer every second, say who is connected every few, and delete the
        days past the retention every hour."""
        if not self._enabled:
            await anyio.sleep_forever()
        try:
            await searchlog.ensure_template(self._client, self._settings)
        except (TransportError, ElasticsearchApiError) as error:
            # `percolert setup` puts it too; without it a day's index would be mapped by guess.
            logger.warning("search log: could not put its index template: %s", error)
        next_presence = next_retention = 0.0
        try:
            while True:
                now = time.monotonic()
                self.roll_up(presence=now >= next_presence)
                if now >= next_presence:
                    next_presence = now + PRESENCE_SECONDS
                await self.flush()
                if now >= next_retention:
                    next_retention = now + _RETENTION_SECONDS
                    try:
                        await searchlog.delete_expired(
                            self._client, self._settings, datetime.fromtimestamp(self._clock(), UTC)
                        )
                    except (TransportError, ElasticsearchApiError) as error:
                        logger.warning("search log: deleting old days failed: %s", error)
                await anyio.sleep(FLUSH_SECONDS)
        finally:
            self.roll_up(presence=False)
            self._count_out()
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await self.flush()  # what the last second logged, at shutdown
