"""Search events in, matching watches out: events are percolated in batches, off the
request path.

A search hands its event to `submit`, which never waits. Workers take whatever events are
queued (up to the batch size) and send them in one `_msearch` request, one single-document
percolation per event. At low load a batch is one event and goes out at once; under load
batches grow by themselves while a request is in flight. (One percolation of several
documents cost Elasticsearch more CPU per event and more time per batch, measured in
`bench/percolate_variants.py`; likely because telling which document each watch matched
checks every matched query against each document again.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from elastic_transport import TransportError
from elasticsearch import ApiError as ElasticsearchApiError
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import AlertWatch, ProductCard, ProductChange
from percolert.core.text import TextNormalizer
from percolert.engine.es import ElasticsearchProblem
from percolert.watches import product_watch
from percolert.watches.reachability import REACHABLE_FILTER
from percolert.watches.store import category_price

logger = logging.getLogger(__name__)

# More matching watches than this for one search are not delivered (logged); a search that
# matches so many individual watches is far outside what alerts are for. A catalog change
# (many shoppers watching one popular product) reads on, a page of this many at a time.
_MAX_MATCHES = 10_000

# What percolation returns of each matching watch: its id, terms, owner and max price, read
# from doc values by an aggregation rather than as hits (the sources named as `Match`'s
# fields, so that each bucket's key decodes as one). Hits cost a fetch phase, which reads each
# hit's stored fields (its `_id`) and runs every matched query once more (to name the
# matching document): twice the Elasticsearch CPU and wall time per search at 100k watches
# (bench/percolate_variants.py), most of it the stored fields. A watch without these doc
# values (a watch index behind mapping v3, which `percolert setup` migrates) is not found.
# Four sources rather than one doc value joining all four: at 100k watches (~760 matches a
# product, ~160 a search of 1-2 words) a composite over one such key ran at 160-200 products/s
# and 480-680 searches/s against 175-220 and 620-920 for these four, a `terms` agg over it
# no better (its Elasticsearch `took` up to half as long again). What a match costs there
# grows with the bytes of the keys it reads, not with their number: the watch id alone ran at
# 250-300 products/s.
_MATCHES = {
    "matches": {
        "composite": {
            "size": _MAX_MATCHES,
            "sources": [
                {"watch_id": {"terms": {"field": "watch_id"}}},
                {"terms": {"terms": {"field": "terms"}}},
                {"owner": {"terms": {"field": "owner", "missing_bucket": True}}},
                {"max_price": {"terms": {"field": "max_price", "missing_bucket": True}}},
                {"category": {"terms": {"field": "category", "missing_bucket": True}}},
            ],
        }
    }
}
# A catalog change's matches also say which watches are product watches, and of what
# product (alerts name it). Searches never match one (product_watch.py), so their
# percolation does without this source.
_SKU_SOURCE = {"sku": {"terms": {"field": "sku", "missing_bucket": True}}}

# Whose alerts a percolation is for. Searches reach watches that notify of searches (default
# watches included); catalog changes only shoppers' own watches that notify of products (a
# default watch would tell everyone of every arrival). Filters beside the percolate query:
# a watch they exclude is never a candidate. Searches also verify only watches of owners
# leased as reachable (`REACHABLE_FILTER`, reachability.py); catalog changes reach every
# owner, away or not.
Audience = Literal["searches", "products"]
_AUDIENCE_FILTERS: dict[Audience, list[dict[str, Any]]] = {
    "searches": [{"terms": {"notify": ["searches", "both"]}}],
    "products": [
        {"term": {"is_default": False}},
        {"terms": {"notify": ["products", "both"]}},
    ],
}

# Separates the fields of a product's text in a `SearchEvent` (name, brand, category,
# description): percolated as a token no word normalises to, so that a phrase watch never
# matches across two fields.
FIELD_SEPARATOR = "\x1e"
_FIELD_GAP = " _ "


class SearchEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What percolation needs to know about one search: never more than what it found."""

    text: str
    searcher: str
    # Over everything the search matched, not the page it returned: each category found,
    # with the lowest price in it (None: nothing there has a price).
    found: tuple[tuple[str, float | None], ...] = ()
    at: float = 0.0  # time.time() of the search
    # What alerts about it may show: products it found (never its text).
    products: tuple[ProductCard, ...] = ()
    # A catalog change's product and what changed (product watches match on them); never
    # a search's.
    sku: str | None = None
    change: ProductChange | None = None


# The structs a percolate response is decoded into are not tracked by the garbage
# collector (`gc=False`; they hold strings, numbers and JSON, so never a cycle): a batch of 64
# products brings ~48k matches, and the collections their allocation set off made decoding
# one 5 MB response take 110 ms instead of 14 (each match's key decoded as a `Match` directly).
class Match(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One matching watch: a bucket key of the `_MATCHES` aggregation, whose sources bear
    these fields' names."""

    watch_id: str
    terms: str
    owner: str | None  # None: a default watch, for everyone
    max_price: float | None = None  # the watch's, if it has one
    category: str | None = None  # likewise
    sku: str | None = None  # a product watch's product (read for catalog changes only)

    @property
    def watch(self) -> AlertWatch:
        """The watch as alerts name it."""
        return AlertWatch(
            id=self.watch_id,
            terms=self.terms,
            category=self.category,
            max_price=self.max_price,
            sku=self.sku,
        )


# Hears of each percolated batch once: its searches with their matches (none for most), in
# order. Those without are there too: how broad a watch is, is judged against every search.
OnMatches = Callable[[list[tuple[SearchEvent, list[Match]]]], Awaitable[None]]


class _Bucket(msgspec.Struct, gc=False):
    key: Match


class _Matches(msgspec.Struct, gc=False):
    buckets: list[_Bucket] = msgspec.field(default_factory=list)
    # Where the next page starts (a composite aggregation's own key, given back as is).
    after_key: dict[str, Any] | None = None


class _Aggregations(msgspec.Struct, gc=False):
    matches: _Matches = msgspec.field(default_factory=_Matches)


class _Response(msgspec.Struct, gc=False):
    aggregations: _Aggregations = msgspec.field(default_factory=_Aggregations)
    error: dict[str, Any] | None = None


class _Responses(msgspec.Struct, gc=False):
    responses: list[_Response]


def _matches(buckets: list[_Bucket]) -> list[Match]:
    return [bucket.key for bucket in buckets]


def _failed(result: _Response) -> ElasticsearchProblem:
    return ElasticsearchProblem(f"percolating a catalog change failed: {result.error}")


class Percolator:
    def __init__(
        self,
        client: AsyncElasticsearch,
        alias: str,
        normalizer: TextNormalizer,
        on_matches: OnMatches,
        *,
        batch_size: int = 64,
        concurrency: int = 2,
        queue_size: int = 10_000,
        timeout: float = 15.0,
        observe: Callable[[float | None, int], None] | None = None,
        max_matches: int = _MAX_MATCHES,
        reachable_only: bool = True,
        leases_hold: Callable[[], bool] | None = None,
    ) -> None:
        """`observe(seconds, batch_size)` hears of every percolate request, and of every
        failure as (None, events lost): of a whole request, or of one event's search in it.
        A batch not percolated within `timeout` seconds is given up, so that the batches
        after it, which are handed on only after it, are not held up.

        `client`: best one of `es.create_client(settings, raw_json=True)`, whose responses
        are decoded once, from their bytes, straight into the structs below; any other
        client works too, its generic JSON parse converted afterwards: at 100k watches,
        where a batch of 64 products' response runs to 5 MB, that ran at 217 products/s and
        850 searches/s against 331 and 1215 from bytes (bench/percolate_decoding.py)."""
        self._client = client
        self._decoder = msgspec.json.Decoder(_Responses)
        self._alias = alias
        self._normalizer = normalizer
        self._on_matches = on_matches
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._queue_size = queue_size
        self._timeout = timeout
        self._observe = observe
        # Matching watches one answer lists (a page, for a catalog change).
        self._max_matches = max_matches
        # Search percolation verifies only watches leased as reachable (off: every watch,
        # the benchmark's reference).
        self._filters: dict[Audience, list[dict[str, Any]]] = {
            **_AUDIENCE_FILTERS,
            "searches": [*_AUDIENCE_FILTERS["searches"]]
            + ([REACHABLE_FILTER] if reachable_only else []),
        }
        # While `leases_hold()` is False (lease writes failing: reachability.py), every watch
        # is percolated: an unwritten lease must not hide a reachable owner's watch.
        self._leases_hold = leases_hold
        self._every_watch: dict[Audience, list[dict[str, Any]]] = dict(_AUDIENCE_FILTERS)
        self._in_flight = 0
        self._tickets_issued = 0
        self._next_ticket = 0
        self._finished: dict[int, tuple[list[SearchEvent], list[list[Match]]]] = {}
        # Whether a worker is handing on finished batches (one at a time, in ticket order).
        self._handing_on = False
        # The queue exists while `run` does; events submitted outside it are dropped.
        self._send: MemoryObjectSendStream[SearchEvent] | None = None
        self.dropped = 0
        self.batches = 0
        # Batches whose alerts were lost: Elasticsearch failed, the time was up, or a bug.
        self.failed_batches = 0

    def submit(self, event: SearchEvent) -> bool:
        """Queue an event without waiting; False (and counted) when the queue is full."""
        if self._send is None:
            self.dropped += 1
            return False
        try:
            self._send.send_nowait(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False  # shutting down
        except anyio.WouldBlock:
            self.dropped += 1
            logger.warning("percolation queue full: dropped a search event")
            return False
        return True

    def document(self, event: SearchEvent) -> dict[str, Any]:
        """The percolated document: fields the watch queries in `watches.py` reference."""
        prices = {
            category: price
            for category, price in event.found
            if price is not None and math.isfinite(price)
        }
        fields = event.text.split(FIELD_SEPARATOR)
        document: dict[str, Any] = {
            "search_text": _FIELD_GAP.join(
                " ".join(self._normalizer.tokens(field)) for field in fields
            ),
            "categories": [category for category, _ in event.found],
        }
        if prices:
            document["min_price"] = min(prices.values())
            document["category_prices"] = [category_price(*found) for found in prices.items()]
        if event.sku is not None:
            document[product_watch.SKU_FIELD] = event.sku
            if event.change is not None:
                document[product_watch.CHANGE_FIELD] = event.change
        return document

    async def run(self) -> None:
        """Percolate until cancelled, with `concurrency` requests in flight at most."""
        send: MemoryObjectSendStream[SearchEvent]
        receive: MemoryObjectReceiveStream[SearchEvent]
        send, receive = anyio.create_memory_object_stream(self._queue_size)
        # A run after a crash starts numbering afresh: the batches in flight then are gone.
        self._in_flight = 0
        self._tickets_issued = self._next_ticket = 0
        self._finished.clear()
        self._handing_on = False
        self._send = send
        try:
            async with send, receive, anyio.create_task_group() as workers:
                for _ in range(self._concurrency):
                    workers.start_soon(self._work, receive)
        finally:
            self._send = None

    def idle(self) -> bool:
        """Nothing queued and nothing being percolated."""
        if self._send is None:
            return True
        return self._send.statistics().current_buffer_used == 0 and self._in_flight == 0

    async def _work(self, receive: MemoryObjectReceiveStream[SearchEvent]) -> None:
        async for first in receive:
            batch = [first]
            while len(batch) < self._batch_size:
                try:
                    batch.append(receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            # Batches are numbered as they are taken, so that results are handed on in search
            # order even when a later request comes back first.
            ticket = self._tickets_issued
            self._tickets_issued += 1
            self._in_flight += 1
            try:
                await self._percolate(ticket, batch)
            finally:
                self._in_flight -= 1

    async def percolate(
        self, events: list[SearchEvent], *, audience: Audience = "searches"
    ) -> list[list[Match]]:
        """Matches for each event, in order (one request for all of them), among the
        watches of `audience`.

        Catalog changes (`products`) are kept facts a later ingest does not repeat: their
        percolation is complete (an event matching more watches than one answer holds is
        read on, page after page) or fails (an `ElasticsearchProblem` for an event's own
        error), rather than losing some owners' alerts as a search's percolation may."""
        started = time.perf_counter()
        documents = [self.document(event) for event in events]
        results = await self._search(documents, audience)
        self.batches += 1
        if self._observe is not None:
            self._observe(time.perf_counter() - started, len(events))
        if len(results) != len(events):  # not seen; alerts lost rather than misdelivered
            logger.error("%d percolation results for %d events", len(results), len(events))
            return [[] for _ in events]
        complete = audience == "products"
        matches: list[list[Match]] = []
        for result in results:
            if result.error is not None:
                if complete:
                    raise _failed(result)
                # That search's alerts are lost, as when a whole request fails.
                logger.warning("percolating a search event failed: %s", result.error)
                if self._observe is not None:
                    self._observe(None, 1)
            buckets = result.aggregations.matches.buckets
            if len(buckets) >= self._max_matches and not complete:
                logger.warning(
                    "a search matched %d watches or more; the rest are dropped", len(buckets)
                )
            matches.append(_matches(buckets))
        if complete:
            await self._read_on(documents, results, matches, audience)
        return matches

    async def _read_on(
        self,
        documents: list[dict[str, Any]],
        results: list[_Response],
        matches: list[list[Match]],
        audience: Audience,
    ) -> None:
        """Add to `matches` the pages after the first of each event whose answer was full."""
        pending = {
            number: result.aggregations.matches.after_key
            for number, result in enumerate(results)
            if len(result.aggregations.matches.buckets) >= self._max_matches
        }
        while pending:
            numbers = list(pending)
            pages = await self._search(
                [documents[number] for number in numbers],
                audience,
                [pending[number] for number in numbers],
            )
            pending = {}
            for number, page in zip(numbers, pages, strict=True):
                if page.error is not None:
                    raise _failed(page)
                matches[number].extend(_matches(page.aggregations.matches.buckets))
                if len(page.aggregations.matches.buckets) >= self._max_matches:
                    pending[number] = page.aggregations.matches.after_key

    async def _search(
        self,
        documents: list[dict[str, Any]],
        audience: Audience,
        after: list[dict[str, Any] | None] | None = None,
    ) -> list[_Response]:
        """One `_msearch`: a percolation of each document, from its `after` key if given."""
        searches: list[Mapping[str, Any]] = []
        leased = self._leases_hold is None or self._leases_hold()
        filters = (self._filters if leased else self._every_watch)[audience]
        for number, document in enumerate(documents):
            composite: dict[str, Any] = {
                **_MATCHES["matches"]["composite"],
                "size": self._max_matches,
            }
            if audience == "products":
                composite["sources"] = [*composite["sources"], _SKU_SOURCE]
            if after is not None and after[number] is not None:
                composite["after"] = after[number]
            aggregations = {"matches": {"composite": composite}}
            searches.append({})  # the index is in the path
            percolate = {"percolate": {"field": "query", "document": document}}
            searches.append(
                {
                    "query": {
                        "bool": {"filter": [percolate, *filters]},
                    },
                    "size": 0,
                    "track_total_hits": False,
                    "aggs": aggregations,
                }
            )
        response = await self._client.msearch(
            index=self._alias,
            searches=searches,
            # `status` keeps a search with no matches in the list (filter_path drops empty
            # objects), so that responses stay aligned with events.
            filter_path=[
                "responses.status",
                "responses.error",
                "responses.aggregations.matches.buckets.key",
                "responses.aggregations.matches.after_key",
            ],
        )
        body = response.body
        if isinstance(body, bytes):
            return self._decoder.decode(body).responses
        return msgspec.convert(body, _Responses).responses

    async def _percolate(self, ticket: int, batch: list[SearchEvent]) -> None:
        # Whatever happens, the ticket finishes: every later batch waits for it to be handed on.
        # A failed batch's alerts are lost; its searches themselves were already answered.
        results: list[list[Match]] = [[] for _ in batch]
        try:
            with anyio.fail_after(self._timeout):
                results = await self.percolate(batch)
        except (TransportError, ElasticsearchApiError) as error:
            self.failed_batches += 1
            logger.warning("percolation of %d search events failed: %s", len(batch), error)
            if self._observe is not None:
                self._observe(None, len(batch))
        except TimeoutError:
            self.failed_batches += 1
            logger.error(
                "percolation of %d search events took over %g s; given up",
                len(batch),
                self._timeout,
            )
            if self._observe is not None:  # Elasticsearch never answered: an error of its own
                self._observe(None, len(batch))
        except Exception:
            self.failed_batches += 1
            logger.exception("percolation of %d search events failed", len(batch))
        self._finished[ticket] = (batch, results)
        if self._handing_on:
            # The worker handing on now takes this batch too, in its turn: a batch never goes
            # out while an earlier one is still being dispatched, and this worker goes back
            # to percolating meanwhile.
            return
        self._handing_on = True
        try:
            while self._next_ticket in self._finished:
                done, found = self._finished.pop(self._next_ticket)
                self._next_ticket += 1
                if done:
                    try:
                        await self._on_matches(list(zip(done, found, strict=True)))
                    except Exception:
                        logger.exception("delivering matches failed")
        finally:
            self._handing_on = False
