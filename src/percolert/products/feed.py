"""Live product alerts: every server tails the `product_alerts` index and sends each new
alert to its recipient's sockets held here; a new socket's greeting shows what its user
missed ("while you were away") and decides which live alerts the socket still needs.

Product alerts are written by other processes (`percolert ingest`, any instance's admin
API) and are kept: this instance only reads. Each writer numbers its alerts above the
index's maximum, but two writers' documents can become visible out of position order
(the one with the lower position may finish its bulk write later). So the tail reads a
window reaching `OVERLAP_MICROS` below the highest position seen (or the present, if
later) and remembers the ids it handled within that window: nothing is missed and
nothing sent twice. With several instances each one tails on its own; each holds
different sockets.

A product alert is shown to a user once: live on each socket open when this instance
finds it (which raises the user's seen mark first), or in the `away` of the greeting that
wins moving the mark. A socket being greeted holds live product alerts until its greeting
knows the mark: those at or below it were shown already (in this greeting's `away`, live
elsewhere, or by another tab's greeting); the others follow the hello.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Iterable
from functools import partial
from typing import Any

import anyio
import elasticsearch
import msgspec
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import Away, ProductAlert
from percolert.core.settings import Settings
from percolert.engine import indices
from percolert.engine.reads import DirectReads, Reads
from percolert.products.alerts import VISIBLE_WITHIN_MICROS, StoredProductAlert, max_seq
from percolert.products.away import decode_alerts, missed_product_alerts
from percolert.products.seen import Mark, SeenMarks
from percolert.products.shown import ShownAlerts
from percolert.realtime.delivery import DeliveryObserver
from percolert.realtime.frames import frame_text
from percolert.realtime.hub import Connection, Hub

logger = logging.getLogger(__name__)

# How far below the highest position seen, or the present, the tail keeps reading
# (positions are microseconds of the writers' clocks).
OVERLAP_MICROS = VISIBLE_WITHIN_MICROS
# Positions read per search of the window.
PAGE = 1000

_ES_ERRORS = (TransportError, elasticsearch.ApiError)


class _Gate:
    """Which live product alerts one socket still takes. `held`: the socket is being
    greeted; what comes meanwhile waits here. Then only alerts `shown` does not cover pass
    (None: all)."""

    def __init__(self) -> None:
        self.held: list[tuple[str, int, str, bytes]] | None = []
        self.shown: Mark | None = None


class _Entry(msgspec.Struct, frozen=True):
    id: str
    seq: int
    user: str


class ProductFeed:
    def __init__(
        self,
        client: AsyncElasticsearch,
        settings: Settings,
        hub: Hub,
        seen: SeenMarks,
        shown: ShownAlerts | None = None,
        on_delivered: DeliveryObserver | None = None,
    ) -> None:
        self._client = client
        self._reads = DirectReads(client)
        # Told of each alert sent live to one socket or more here (the demand view counts it).
        self._on_delivered = on_delivered
        self._alias = indices.alias_for(settings, "product_alerts")
        self._retention_days = settings.product_alert_retention_days
        self._poll_seconds = settings.product_alert_poll_seconds
        self._hub = hub
        self._seen = seen
        # Told of every alert written to a socket (off-site delivery leaves those alone).
        self._shown = shown
        # The highest position seen; None until the start position is read.
        self._high: int | None = None
        # Ids handled (sent, or nobody here to send them to) in the window, with positions.
        self._handled: dict[str, int] = {}
        self._woken = anyio.Event()
        self._gates: weakref.WeakKeyDictionary[Connection, _Gate] = weakref.WeakKeyDictionary()
        self._encoder = msgspec.json.Encoder()
        # Product alert messages queued to sockets; tail reads that failed.
        self.delivered = 0
        self.failures = 0

    @property
    def started(self) -> bool:
        """Whether the start position is known: alerts stored from now on are sent live."""
        return self._high is not None

    def wake(self) -> None:
        """Look for new alerts at once (a writer in this process has just stored some)."""
        self._woken.set()

    async def run(self) -> None:
        while True:
            self._woken = anyio.Event()
            try:
                await self.tick()
            except _ES_ERRORS as error:
                # The next tick reads the same window again: nothing is lost meanwhile.
                self.failures += 1
                logger.warning("reading new product alerts failed, retrying: %s", error)
            with anyio.move_on_after(self._poll_seconds):
                await self._woken.wait()

    async def tick(self) -> None:
        if self._high is None:
            # Alerts stored before the start are for greetings; those becoming visible
            # later (within the window) are new.
            high = await max_seq(self._client, self._alias)
            window = await self._window(_floor(high))
            self._handled = {entry.id: entry.seq for entry in window}
            self._high = high
            return
        window = await self._window(_floor(self._high))
        new = [entry for entry in window if entry.id not in self._handled]
        if new:
            wanted = [entry.id for entry in new if self._hub.connections(entry.user)]
            await self._deliver(await self._fetch(wanted))
            for entry in new:
                self._handled[entry.id] = entry.seq
            self._high = max(self._high, max(entry.seq for entry in new))
        floor = _floor(self._high)
        self._handled = {id_: seq for id_, seq in self._handled.items() if seq >= floor}

    async def _window(self, floor: int) -> list[_Entry]:
        """Ids, positions and recipients of the alerts at or above `floor`, in position
        order: doc values only, the alerts themselves are fetched for recipients here."""
        entries: dict[str, _Entry] = {}
        start = floor
        while True:
            response = await self._client.search(
                index=self._alias,
                query={"range": {"seq": {"gte": start}}},
                sort=[{"seq": "asc"}],
                size=PAGE,
                source=False,
                docvalue_fields=[{"field": "seq"}, {"field": "user"}],
                track_total_hits=False,
            )
            hits = response["hits"]["hits"]
            self._take(hits, entries)
            last = int(hits[-1]["fields"]["seq"][0]) if hits else start
            if len(hits) < PAGE:
                return sorted(entries.values(), key=lambda entry: (entry.seq, entry.id))
            if last == start:
                # A page of one position throughout (a run's alerts may share one): read
                # that position through, then go on above it.
                await self._one_position(start, entries)
                start += 1
            else:
                # The next page starts at the last position again (positions may tie across
                # writers, and a tie may straddle pages).
                start = last

    async def _one_position(self, seq: int, entries: dict[str, _Entry]) -> None:
        """Every alert at position `seq`, in pages ordered within a point in time (by the
        shard's own document order, so that ties have an order and none is skipped)."""
        opened = await self._client.open_point_in_time(index=self._alias, keep_alive="1m")
        pit = opened["id"]
        try:
            after: list[Any] | None = None
            while True:
                response = await self._client.search(
                    pit={"id": pit, "keep_alive": "1m"},
                    query={"term": {"seq": seq}},
                    sort=[{"_shard_doc": "asc"}],
                    size=PAGE,
                    source=False,
                    docvalue_fields=[{"field": "seq"}, {"field": "user"}],
                    track_total_hits=False,
                    search_after=after,
                )
                hits = response["hits"]["hits"]
                pit = response.get("pit_id", pit)
                self._take(hits, entries)
                if len(hits) < PAGE:
                    return
                after = hits[-1]["sort"]
        finally:
            # Closed even when the tick is cancelled, briefly: else it lingers a minute.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(2),
                contextlib.suppress(*_ES_ERRORS),
            ):
                await self._client.close_point_in_time(id=pit)

    @staticmethod
    def _take(hits: list[dict[str, Any]], entries: dict[str, _Entry]) -> None:
        for hit in hits:
            fields = hit["fields"]
            entries[hit["_id"]] = _Entry(
                id=hit["_id"], seq=int(fields["seq"][0]), user=fields["user"][0]
            )

    async def _fetch(self, ids: list[str]) -> list[StoredProductAlert]:
        found: list[StoredProductAlert] = []
        for start in range(0, len(ids), PAGE):
            response = await self._client.mget(index=self._alias, ids=ids[start : start + PAGE])
            found.extend(
                decode_alerts(doc["_source"] for doc in response["docs"] if doc.get("found"))
            )
        return sorted(found, key=lambda stored: (stored.alert.seq, stored.alert.id))

    async def _deliver(self, alerts: list[StoredProductAlert]) -> None:
        # First raise the marks of users with a socket taking alerts live, so that a greeting
        # after the alert arrived does not list it again.
        marks: dict[str, dict[str, int]] = {}
        for stored in alerts:
            if any(self._live(connection) for connection in self._hub.connections(stored.user)):
                marks.setdefault(stored.user, {})[stored.alert.id] = stored.alert.seq
        try:
            await self._seen.raise_to(marks)
        except _ES_ERRORS as error:
            # Sent anyway: a later greeting may list it again, which is better than not at all.
            logger.warning("raising product-seen marks failed: %s", error)
        for stored in alerts:
            payload = self._encoder.encode(stored.alert).decode()
            frame = frame_text(payload)
            taken = False
            for connection in self._hub.connections(stored.user):
                taken |= self._offer(
                    connection, stored.user, stored.alert.id, stored.alert.seq, payload, frame
                )
            if taken and self._on_delivered is not None:
                self._on_delivered(stored.alert.watch, False, 1)

    def _live(self, connection: Connection) -> bool:
        gate = self._gates.get(connection)
        return gate is None or gate.held is None

    def _offer(
        self,
        connection: Connection,
        user: str,
        alert_id: str,
        seq: int,
        payload: str,
        frame: bytes,
    ) -> bool:
        gate = self._gates.get(connection)
        if gate is not None:
            if gate.held is not None:
                gate.held.append((alert_id, seq, payload, frame))
                return False
            if gate.shown is not None and gate.shown.covers(alert_id, seq):
                return False
        on_sent = None if self._shown is None else partial(self._shown.shown, user, alert_id)
        taken = connection.offer(payload, frame, on_sent=on_sent)
        self.delivered += taken
        return taken

    def hold(self, connection: Connection) -> None:
        """Before the socket joins the hub: its live product alerts wait for its greeting."""
        self._gates[connection] = _Gate()

    def _release(self, connection: Connection, shown: Mark | None) -> dict[str, int]:
        """The greeting knows the mark: send what was held that it does not cover; returns
        what was sent (ids by position)."""
        gate = self._gates.get(connection)
        if gate is None or gate.held is None:
            return {}
        held, gate.held = gate.held, None
        gate.shown = shown
        return {
            alert_id: seq
            for alert_id, seq, payload, frame in held
            if self._offer(connection, connection.user, alert_id, seq, payload, frame)
        }

    def greeted(self, user: str, away: Away) -> None:
        """The greeting listing `away` was written to a socket of `user`: those were shown."""
        if self._shown is not None:
            for alert in away.alerts:
                self._shown.shown(user, alert.id)

    async def greet(
        self, user: str, connection: Connection, reads: Reads | None = None
    ) -> Away | None:
        """The `away` of a new socket's hello: the product alerts the user's mark does not
        cover, if this greeting wins moving the mark past them (else None, as when there are
        none or Elasticsearch fails). Then the socket takes the live product alerts the
        mark does not cover. The mark and the alerts are read through `reads` (those of
        the greetings asked at once together)."""
        reads = reads or self._reads
        away: Away | None = None
        shown: Mark | None = None
        try:
            mark = await self._seen.read(user, reads)
            shown = mark
            missed = await missed_product_alerts(
                reads, self._alias, user, mark, retention_days=self._retention_days
            )
            if missed is not None:
                moved = await self._seen.claim(user, mark, missed.covered)
                if moved is not None:
                    shown = moved
                    if missed.alerts:
                        away = Away(alerts=_alerts(missed.alerts), more=missed.more)
        except _ES_ERRORS as error:
            logger.warning("greeting without product alerts, Elasticsearch failed: %s", error)
        sent = self._release(connection, shown)
        if sent:
            # Came while every socket of the user was being greeted: nobody marked them.
            try:
                await self._seen.raise_to({user: sent})
            except _ES_ERRORS as error:
                logger.warning("raising a product-seen mark failed: %s", error)
        return away


def _floor(high: int) -> int:
    """The lowest position an alert not yet visible can have: below the highest seen (a
    writer that numbered earlier may finish later), but never further back than the present
    (this process's clock, in step with the writers' as theirs are with each other): after
    a burst and a quiet spell, a poll does not read the whole burst again."""
    return max(high, time.time_ns() // 1000) - OVERLAP_MICROS


def _alerts(stored: Iterable[StoredProductAlert]) -> list[ProductAlert]:
    return [entry.alert for entry in stored]
