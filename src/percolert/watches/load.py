"""Bulk loading of prepared watches: NDJSON bodies encoded once, a few requests in flight.

A load of many watches is Elasticsearch indexing percolator documents (each one a query to
parse and extract terms from) while this process prepares the next ones, on the same few
cores. So each document is encoded once with msgspec into the bulk body, the answer is cut
to each item's status (and error), `in_flight` requests keep Elasticsearch's write threads
busy while the next chunk is prepared, and the index neither refreshes nor syncs its
translog at each request until the load ends (then one flush and one refresh; its own
settings are put back afterwards, whatever happened). Measurements:
docs/benchmarks/watch-load.md.

Documents are written with `create`: a watch already stored (same id: same owner and
words, see watches.watch_id) collides and is counted as a duplicate, unchanged. Documents
Elasticsearch refuses are reported one by one; the others are still written. Items refused
for the cluster's sake (429, 5xx, a write block) are sent again a few times.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, cast

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream
from elastic_transport import TransportError
from elasticsearch import ApiError, AsyncElasticsearch

from percolert.core.exception_groups import first_error
from percolert.core.messages import Category, MaxPrice, Notify, Terms, WatchSpec
from percolert.core.ndjson import BadLine, read_lines
from percolert.engine import bulk
from percolert.engine.bulk import CONFLICT
from percolert.engine.indices import indices_behind

logger = logging.getLogger(__name__)

Owner = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]

_ATTEMPTS = 4  # an item refused for the cluster's sake is sent at most this often
_REQUEST_TIMEOUT = 300.0  # a bulk request of thousands of queries under a busy JVM
# Index settings during a load (docs/benchmarks/watch-load.md: each bought a load of 1M
# watches about 1.5x on this machine's slow fsync).
_RELAXED = {"index.refresh_interval": "-1", "index.translog.durability": "async"}


class LoadError(msgspec.Struct, frozen=True):
    """A watch that was not loaded: where it came from (a file's line number, or its
    position in the input) and why."""

    ref: int
    reason: str


class LoadReport(msgspec.Struct):
    loaded: int = 0
    duplicates: int = 0  # already stored (the same id): left as they were
    refused: int = 0
    seconds: float = 0.0
    errors: list[LoadError] = msgspec.field(default_factory=list)

    @property
    def rate(self) -> float:
        """Watches handled (loaded or found already there) per second."""
        return (self.loaded + self.duplicates) / self.seconds if self.seconds else 0.0


# (ref, document id, stored document): what WatchStore.prepare made of one input watch.
Prepared = tuple[int, str, dict[str, Any]]


class WatchLine(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One line of a watch file: a spec, and whose it is (absent or null: a default watch)."""

    owner: Owner | None = None
    terms: Terms
    phrase: bool = False
    category: Category | None = None
    max_price: MaxPrice | None = None
    notify: Notify = "both"

    def spec(self) -> WatchSpec:
        return WatchSpec(
            terms=self.terms,
            phrase=self.phrase,
            category=self.category,
            max_price=self.max_price,
            notify=self.notify,
        )


def read_watch_file(
    path: Path, on_progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, str | None, WatchSpec] | LoadError]:
    """The watches of an NDJSON file as (line number, owner, spec); a line that is not a
    watch as a LoadError in its place. `on_progress` gets the bytes read."""
    decoder = msgspec.json.Decoder(WatchLine)
    for item in read_lines(path, decoder.decode, "watch", on_progress):
        if isinstance(item, BadLine):
            yield LoadError(item.line, item.reason)
        else:
            number, line = item
            yield number, line.owner, line.spec()


class _Chunk(msgspec.Struct):
    """Encoded bulk lines (action and document) with the refs they came from."""

    refs: list[int]
    lines: list[bytes]


def _refusal(result: dict[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, dict):
        return f"refused by Elasticsearch: {error.get('type')}: {error.get('reason')}"
    return f"refused by Elasticsearch: status {result.get('status')}"


class BulkLoad:
    """One load into `alias`; `run` writes what it is given and returns the report."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        alias: str,
        *,
        chunk_size: int = 2000,
        in_flight: int = 2,
        on_done: Callable[[int], None] | None = None,
        on_error: Callable[[LoadError], None] | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self._client = client.options(request_timeout=_REQUEST_TIMEOUT)
        self._alias = alias
        self._chunk_size = chunk_size
        self._in_flight = in_flight
        self._on_done = on_done
        self._on_error = on_error
        self._retry_seconds = retry_seconds
        self._encoder = msgspec.json.Encoder()
        self.report = LoadReport()

    def _fail(self, ref: int, reason: str) -> None:
        self.report.refused += 1
        error = LoadError(ref, reason)
        self.report.errors.append(error)
        if self._on_error is not None:
            self._on_error(error)

    async def run(
        self, prepared: Iterable[Prepared | LoadError], *, relax: bool = True
    ) -> LoadReport:
        """Write every prepared watch (LoadErrors are reported as they come), then refresh:
        the loaded watches are searchable when this returns."""
        started = time.perf_counter()
        relaxed = relaxed_for_load(self._client, self._alias) if relax else None
        async with relaxed or contextlib.AsyncExitStack():
            try:
                await self._send_all(prepared)
            except BaseExceptionGroup as group:
                # Callers handle one failure (Elasticsearch's, or their input's), as from
                # any other call: the first is the cause, the rest were cancelled by it.
                raise first_error(group) from None
            if relax:
                # Durable before the translog is synced per request again: what the report
                # counts as loaded survives a crash of the node.
                await self._client.indices.flush(index=self._alias)
        await self._client.indices.refresh(index=self._alias)
        self.report.errors.sort(key=lambda error: error.ref)
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def _send_all(self, prepared: Iterable[Prepared | LoadError]) -> None:
        send, receive = anyio.create_memory_object_stream[_Chunk](0)
        async with anyio.create_task_group() as writers:
            for _ in range(self._in_flight):
                writers.start_soon(self._write_all, receive.clone())
            receive.close()
            async with send:
                for chunk in self._chunks(prepared):
                    await send.send(chunk)

    def _chunks(self, prepared: Iterable[Prepared | LoadError]) -> Iterator[_Chunk]:
        encode = self._encoder.encode
        chunk = _Chunk([], [])
        for item in prepared:
            if isinstance(item, LoadError):
                self._fail(item.ref, item.reason)
                continue
            ref, document_id, document = item
            chunk.refs.append(ref)
            # Ids are watch ids (hex): nothing in them to escape.
            chunk.lines.append(
                b'{"create":{"_id":"%s"}}\n%s\n' % (document_id.encode(), encode(document))
            )
            if len(chunk.refs) >= self._chunk_size:
                yield chunk
                chunk = _Chunk([], [])
        if chunk.refs:
            yield chunk

    async def _write_all(self, chunks: ObjectReceiveStream[_Chunk]) -> None:
        async with chunks:
            async for chunk in chunks:
                await self._write(chunk)

    async def _write(self, chunk: _Chunk) -> None:
        for attempt in range(1, _ATTEMPTS + 1):
            response = await self._client.bulk(
                index=self._alias,
                operations=cast(Any, b"".join(chunk.lines)),  # NDJSON bytes, sent as they are
                filter_path=[
                    "errors",
                    "items.*.status",
                    "items.*.error.type",
                    "items.*.error.reason",
                ],
            )
            body = response.body
            if not body.get("errors"):
                self._done(len(chunk.refs), 0)
                return
            again = _Chunk([], [])
            loaded = duplicates = 0
            for ref, line, item in zip(chunk.refs, chunk.lines, body["items"], strict=True):
                result = next(iter(item.values()))
                status = int(result.get("status", 0))
                if status < 300:
                    loaded += 1
                elif status == CONFLICT:
                    duplicates += 1
                elif bulk.worth_retrying(result) and attempt < _ATTEMPTS:
                    again.refs.append(ref)
                    again.lines.append(line)
                else:
                    self._fail(ref, _refusal(result))
            self._done(loaded, duplicates)
            if not again.refs:
                return
            chunk = again
            await anyio.sleep(self._retry_seconds * attempt)

    def _done(self, loaded: int, duplicates: int) -> None:
        self.report.loaded += loaded
        self.report.duplicates += duplicates
        if self._on_done is not None:
            self._on_done(loaded + duplicates)


@contextlib.asynccontextmanager
async def relaxed_for_load(client: AsyncElasticsearch, alias: str) -> AsyncIterator[None]:
    """The indices behind `alias` set for a bulk load while the block runs (`_RELAXED`): no
    periodic refresh (each refresh makes a segment that is merged again later), and the
    translog synced every few seconds rather than at each request (the caller flushes when
    the load is done). Their own settings (or the defaults, for an index that had none) are
    put back when the block ends, also on failure or cancellation. A setting already at its
    relaxed value (another load running, or the operator's choice) is left alone: putting
    back what a running load set would leave it relaxed for good."""
    found = await client.indices.get_settings(index=alias, name=list(_RELAXED), flat_settings=True)
    # An index without a setting of its own lacks it in the answer: the default comes back.
    before: dict[str, dict[str, str | None]] = {}
    for index in await indices_behind(client, alias):
        own = found.body.get(index, {}).get("settings", {})
        changed = {
            name: own.get(name) for name, value in _RELAXED.items() if own.get(name) != value
        }
        if changed:
            before[index] = changed
        if len(changed) < len(_RELAXED):
            logger.warning(
                "%s is already set for a bulk load (another load is running, or one was "
                "cut off before it could put its settings back): left as it is",
                index,
            )
    try:
        for index, changed in before.items():
            await client.indices.put_settings(
                index=index, settings={name: _RELAXED[name] for name in changed}
            )
        yield
    finally:
        # Each index on its own, and a failure told rather than raised: it must not hide the
        # load's own error, nor keep the other indices relaxed.
        with anyio.CancelScope(shield=True):
            for index, changed in before.items():
                try:
                    with anyio.fail_after(30):
                        await client.indices.put_settings(index=index, settings=changed)
                except (TimeoutError, TransportError, ApiError) as error:
                    logger.warning(
                        "could not put back %s on %s after a load (%s): set them by hand",
                        changed,
                        index,
                        error,
                    )
