"""The shared broker: instances that share the indices and one Redis act as one service
(docs/design/multi-instance.md, §2-§7). The only module that speaks to Redis.

- Routing: each instance reads its own inbox stream (`P:inbox:<instance>`); a sending is
  added to the inboxes of the instances holding a socket of a recipient (presence registry
  `P:at:<instance>`), a default watch's sending to every instance with sockets: one script
  call per search either way. An instance hears its own sendings through its inbox too, so
  every socket gets them in position order.
- Presence: each instance beats every second (`P:inst`, expiry on Redis's clock); a user is
  reachable when some instance holds a socket of theirs or they left within the grace.
- Coalescing: the windows live in Redis and are decided in Lua on Redis `TIME`, so it does
  not matter which instance served a search. An ended window is claimed under a token and a
  lease (`P:f:<token>`, `P:leases`) and its follow-up published with the claim, so it goes
  out exactly once: if the claimer dies first, another instance claims it again when the
  lease lapses.
- Positions: one counter (`P:meta` `seq`), raised at start above µs time and the alert
  log's last position, so positions handed out before stay valid for `after=`.
- Faults (§7-§8): Redis unreachable marks the broker down (readiness says so); the
  dispatcher keeps its matches (alerts.py) and sockets stay open; `run` reconnects with
  backoff, re-asserts this instance's presence and resumes its inbox where it stopped.
  `P:meta` holds an epoch, minted by whichever script finds none (Redis lost its data) or
  finds the counter below what its caller saw (a failover lost the tail), with the counter
  raised above every old position; each inbox entry carries the epoch and the inbox's own
  count `n`. A missing count, a new epoch or this instance found reaped is a gap: every
  socket here stops taking alerts live and is closed with 1012 once the log has what it
  missed, and its page replays from the log with `after=`. So are the sockets opened while
  Redis was away, if anything was numbered since their cut.
- Replay: each sending is mirrored in its maker's `P:log:<instance>` until the maker's
  alert log has written it, so `/ws?after=` on any instance replays it meanwhile. The mirror
  of an instance reaped after SIGKILL is written to the log by a survivor (`P:orphans`,
  under a lease) and then deleted.
- Erasure (an account erased): one script forgets the user's presence, windows and claims
  and who made their searches in other windows (erase.lua), and tells every other instance
  through its inbox (`x`), which closes the user's sockets there and tells its listener. An
  inbox keeps nothing it has read for longer than a heartbeat.

Redis may be one server, a Redis Cluster or a primary behind Sentinel (connection.py). Every
key shares the hash tag `{<index prefix>}`, so one service's keys live in one slot: a Cluster
gives failover, not more room. Each script is called with `P:meta` as KEYS[1], which routes it
to that slot's node, and builds its other keys from P in the same slot. A failover that loses
the tail of what was written (replication is asynchronous) is a gap like any other: the
counter found below what an instance saw starts a new epoch, and the sockets resync.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Protocol, cast

import anyio
import msgspec
from anyio.abc import TaskGroup
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import (
    ClusterError,
    LockError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from percolert.broker.base import (
    Asked,
    BrokerStatus,
    BrokerUnavailable,
    DefaultCandidate,
    ErasureListener,
    Followup,
    Hits,
    OwnedCandidate,
    SearchFold,
    Sending,
    TooManySockets,
    UserErased,
)
from percolert.broker.connection import connect, disconnect
from percolert.core.batching import Batches
from percolert.core.exception_groups import first_error
from percolert.core.locks import LocalLocks
from percolert.core.messages import AlertWatch, ProductCard
from percolert.core.metrics import BrokerMetrics
from percolert.core.records import AlertRecord
from percolert.core.settings import Settings
from percolert.realtime.delivery import Delivery, DeliveryObserver
from percolert.realtime.hub import RESTART_WINDOW_SECONDS, Connection, Hub

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
# An instance that missed this long of beats no longer counts as connected anywhere (its
# users count as reconnecting) ...
LAPSE_MS = 5_000
# ... and after this long it is reaped: its registry and inbox are dropped.
REAP_MS = 30_000
INBOX_BOUND = 100_000
# A mirror keeps at most what the alert log's buffer does (AlertLog's max_buffered).
MIRROR_BOUND = 200_000
# Replay reads at most this many unwritten sendings (the newest) of each instance.
REPLAY_COUNT = 5_000
# A claimed follow-up, or a dead instance's mirror, not done within this long is taken over.
LEASE_MS = 5_000
CLAIM_LIMIT = 64
# Connections to Redis per instance, and how long a call waits for one before it fails.
MAX_CONNECTIONS = 64
# Script calls in flight at once: the rest of the connections are left to the inbox read,
# pipelines and locks (a Cluster's or Sentinel's pool fails at once when it has none free).
_CALLS_IN_FLIGHT = MAX_CONNECTIONS - 8
# A lock of `exclusive` frees itself after `_LOCK_SECONDS` if its holder died holding it:
# longer than what it guards may take (a watch add: two Elasticsearch requests, each with
# its retry). A taker waits at most `_LOCK_WAIT_SECONDS` for it.
_LOCK_SECONDS = 30.0
_LOCK_WAIT_SECONDS = 10.0
CONNECTION_WAIT_SECONDS = 10.0
_READ_COUNT = 500
_READ_BLOCK_MS = 1_000
# Reconnecting: the first pause, doubled up to the longest, each with ±50% jitter.
_BACKOFF_FIRST = 0.1
_BACKOFF_LONGEST = 2.0
# Sockets to resync are closed this long after the gap is seen (the alert log flushes every
# 0.1 s and its bulk write waits for a refresh: then the log holds what they missed), ...
RESYNC_DELAY_SECONDS = 1.1
# ... spread over this long, so their pages do not all reconnect at once.
RESYNC_SPREAD_SECONDS = 1.0
_REASSERT_BATCH = 1_000


# Redis cannot be used now: down, restarting (loading), out of reach, a replica after a
# failover, full (`noeviction` refuses writes), a Cluster mid-failover (its slot served by no
# primary yet, or by a new one the client has not found), or a server that has lost the
# scripts (restarted, or promoted). Other errors (a script's) are bugs, left to the
# supervisor by the loops ...
# A Cluster's errors while its topology changes (a slot moved, no node answering, the
# client's first look at the slots failing): RedisClusterException is not a RedisError.
_CLUSTER_AWAY = (ClusterError, TryAgainError, MovedError, RedisClusterException)
_UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    NoScriptError,
    *_CLUSTER_AWAY,
    OSError,
)
# ... but where a search's alerts or a socket's presence are at stake, any refusal is met as
# an outage: the search is spooled, the presence settled when Redis answers again.
_REFUSED = (RedisError, *_CLUSTER_AWAY, OSError)


class _Down(Exception):
    """A call elsewhere found Redis unreachable: the loops start over with a reconnect."""


class RecordSink(Protocol):
    """Where this instance's sendings are recorded (the alert log), and its last position."""

    def append(self, record: AlertRecord) -> None: ...

    async def max_seq(self) -> int: ...

    async def store(self, records: list[AlertRecord]) -> bool:
        """Write another instance's sendings now; False if some are to be written again."""
        ...


# A stream range as RESP2 gives it, in bytes: [(entry id, {field: value})].
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


class _Fold(msgspec.Struct, frozen=True):
    """A folded search as a window in Redis keeps it (who skips it is kept beside it). A
    fold written by an older version carries `text` instead of `found`: ignored, and so the
    search text never reaches an alert."""

    at: float
    searcher: str
    found: tuple[ProductCard, ...] = ()


# A window keeps the watch as its alerts name it, encoded where older versions kept only
# its terms (the scripts store it as they got it).
def _watch_label(watched: OwnedCandidate | DefaultCandidate) -> bytes:
    return msgspec.json.encode(watched.watch)


def _watch_of(watch_id: str, label: bytes | str) -> AlertWatch:
    """The watch a window keeps."""
    raw = label.encode() if isinstance(label, str) else label
    if raw.startswith(b'{"id":'):
        try:
            return msgspec.json.decode(raw, type=AlertWatch)
        except msgspec.DecodeError:
            pass
    # Compatibility shim, removed in 0.2.0: a window opened by an instance of protocol 1
    # kept only the watch's terms (windows last seconds: none is left by then).
    return AlertWatch(id=watch_id, terms=_text(raw))


def _script(name: str) -> str:
    folder = resources.files("percolert.broker").joinpath("lua")
    return folder.joinpath("_common.lua").read_text() + folder.joinpath(name).read_text()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _after(entry_id: bytes) -> str:
    """The stream id right after `entry_id` (`<ms>-<seq>`)."""
    milliseconds, _, sequence = entry_id.decode().partition("-")
    return f"{milliseconds}-{int(sequence or 0) + 1}"


class RedisBroker:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        sink: RecordSink,
        *,
        url: str,
        instance_id: str,
        observer: BrokerMetrics | None = None,
        wall_clock: Callable[[], float] = time.time,
        resync_delay: float = RESYNC_DELAY_SECONDS,
        on_erased: ErasureListener | None = None,
        on_delivered: DeliveryObserver | None = None,
    ) -> None:
        self.instance_id = instance_id
        self._on_erased = on_erased
        self._observer = observer or BrokerMetrics()
        # Fail fast and never retry (connection.py), and never wait on a silent network for
        # long: `run` reconnects, the dispatcher keeps its matches.
        # A call waits for a free connection: redis-py's default pool fails at once past its
        # size, as a storm of socket opens (one presence call each) went.
        self._redis = connect(
            url,
            max_connections=MAX_CONNECTIONS,
            socket_timeout=_READ_BLOCK_MS / 1000 + 4.0,
            connect_timeout=1.0,
            wait_seconds=CONNECTION_WAIT_SECONDS,
        )
        self._calls = anyio.CapacityLimiter(_CALLS_IN_FLIGHT)
        self._hub = hub
        self._resync_delay = resync_delay
        self._prefix = f"percolert:{{{settings.index_prefix}}}"
        # KEYS[1] of every script: the slot of all the keys it touches (_common.lua).
        self._slot_key = f"{self._prefix}:meta"
        self._inbox = f"{self._prefix}:inbox:{instance_id}"
        self._window_ms = round(settings.coalesce_seconds * 1000)
        self._grace_ms = round(settings.reconnect_grace_seconds * 1000)
        self._restart_ms = round(
            min(settings.reconnect_grace_seconds, RESTART_WINDOW_SECONDS) * 1000
        )
        self._sink = sink
        self._delivery = Delivery(hub, on_delivered)
        self._wall_clock = wall_clock
        self._scripts = {
            name: self._redis.register_script(_script(f"{name}.lua"))
            for name in (
                "seed",
                "heartbeat",
                "presence",
                "hits",
                "claim",
                "publish",
                "notify",
                "reassert",
                "orphan",
                "erase",
            )
        }
        # Greetings' reads of the mirrors (`unwritten`): those asked at once, read at once.
        self._mirror_reads: Batches[tuple[int, int], list[AlertRecord]] = Batches(
            self._read_mirrors_at_once, width=1, most=1_000
        )
        self._sending_encoder = msgspec.msgpack.Encoder()
        self._sending_decoder = msgspec.msgpack.Decoder(Sending)
        self._fold_encoder = msgspec.json.Encoder()
        self._fold_decoder = msgspec.json.Decoder(_Fold)
        self._open_windows = 0
        self._mirror = f"{self._prefix}:log:{instance_id}"
        # The inbox is new with this instance's id: everything in it is for us.
        self._last_read = b"0-0"
        # Whether Redis answers; False until the first successful start or reconnect.
        self._up = False
        self._seeded = False
        self._log_max = 0
        # The highest position this instance has seen (published, read, or a cut): a
        # counter below it means Redis lost a tail (the scripts' regression guard).
        self._last_seen = 0
        # The epoch and this inbox's count of the last entry read (None: take the next as
        # it comes, after an epoch change).
        self._epoch: str | None = None
        self._last_n: int | None = 0
        self._beaten = False
        # What Redis missed while away: users with sockets opened here meanwhile, users
        # whose last socket here closed meanwhile, watches_changed not yet sent elsewhere.
        self._unregistered: set[str] = set()
        self._leaves_owed: set[str] = set()
        self._notify_owed: dict[str, str] = {}
        # Erased users whose sockets here are closing: their closes record no departure.
        self._erasing: set[str] = set()
        self._reasserting = False
        self._reassert_lock = anyio.Lock()  # the reader and the heartbeat may both resync
        self._presence_calls = 0
        # `exclusive` while Redis does not answer.
        self._local_locks = LocalLocks()
        self._closers: TaskGroup | None = None

    async def _call(self, name: str, *args: str | int | bytes) -> Any:
        async with self._calls:
            with self._observer.round_trip(name):
                return await self._scripts[name](
                    keys=[self._slot_key], args=[self._prefix, *self._common(), *args]
                )

    def _queue(self, pipe: Pipeline | ClusterPipeline, name: str, *args: str | int) -> None:
        """Queue a script call on a pipeline. Queued by its hash alone (a Cluster's pipeline
        would not load it): `_load_scripts` loaded it, and a Redis that has lost it since
        (restarted, failed over) is met as an outage, which loads them again."""
        script = self._scripts[name]
        pipe.evalsha(script.sha, 1, self._slot_key, self._prefix, *self._common(), *args)

    async def _load_scripts(self) -> None:
        """Load every script where the broker's slot is: on a Cluster, on that slot's node
        only (redis-py loads on every primary, which fails while an unrelated one is away)."""
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()  # the slot map, from the seeds at first
            node = self._redis.get_node_from_key(self._slot_key)
            for script in self._scripts.values():
                script.sha = await self._redis.execute_command(
                    "SCRIPT LOAD", script.script, target_nodes=node
                )
            return
        for script in self._scripts.values():
            script.sha = await self._redis.script_load(script.script)

    def _common(self) -> list[str | int]:
        """The epoch's arguments (_common.lua): a fresh epoch in case Redis lost its own,
        the floor above every position this instance knows of, its last seen, and the
        restart window."""
        floor = max(self._last_seen, self._log_max) + 1
        return [secrets.token_hex(8), floor, self._last_seen, self._restart_ms]

    def _seen(self, position: int) -> None:
        self._last_seen = max(self._last_seen, position)

    @property
    def status(self) -> BrokerStatus:
        return "up" if self._up else "down"

    def _mark_down(self, error: BaseException) -> None:
        if self._up:
            logger.warning(
                "Redis unreachable, the broker is down (search and open sockets go on; "
                "alerts wait until it is back): %s",
                error,
            )
        self._up = False

    async def start(self) -> None:
        """Raise the position counter above every position handed out before, and beat once,
        before the first socket or search. Redis unreachable: start anyway with the broker
        down (search works; alerts wait), `run` connects when it answers."""
        self._log_max = await self._sink.max_seq()
        try:
            await self._load_scripts()
            await self._seed()
            await self.beat()
        except _UNREACHABLE as error:
            logger.warning(
                "Redis unreachable at start: serving with the broker down until it answers "
                "(search works; alerts wait): %s",
                error,
            )
            return
        self._up = True
        logger.info(
            "broker on Redis as instance %s, position %d", self.instance_id, self._last_seen
        )

    async def _seed(self) -> None:
        floor = max(int(self._wall_clock() * 1_000_000), self._log_max + 1)
        self._seen(int(await self._call("seed", floor, self._restart_ms)))
        self._seeded = True

    async def close(self) -> None:
        await disconnect(self._redis)

    async def run(self) -> None:
        """Beat and read this instance's inbox, until cancelled; while Redis is unreachable,
        try again with backoff, and when it answers, re-assert this instance's presence and
        resume the inbox where it stopped."""
        pause = _BACKOFF_FIRST
        async with anyio.create_task_group() as closers:
            self._closers = closers
            while True:
                try:
                    if not self._up:
                        await self._reconnect()
                        pause = _BACKOFF_FIRST
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(self._beating)
                        tasks.start_soon(self._writing_orphans)
                        await self._read_inbox()
                except* (*_UNREACHABLE, _Down) as failed:
                    self._mark_down(first_error(failed))
                await anyio.sleep(pause * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
                pause = min(pause * 2, _BACKOFF_LONGEST)

    async def _reconnect(self) -> None:
        first = not self._seeded
        await self._load_scripts()
        if first:
            await self._seed()
        await self.beat()
        for user, payload in list(self._notify_owed.items()):
            # Sent here already while Redis was away; the other instances' sockets get it now.
            await self._call("notify", INBOX_BOUND, user, payload, self.instance_id)
            del self._notify_owed[user]
        counter = await self._reassert()
        self._up = True
        if not first:
            self._observer.reconnected()
        logger.info(
            "Redis answers again, the broker is up (instance %s, position %d)",
            self.instance_id,
            counter,
        )

    async def _reassert(self) -> int:
        """Set this instance's part of the presence registry to the sockets it holds (one
        pipeline, batched) and return the counter. Sockets opened meanwhile whose cut is
        below it may have missed a sending routed elsewhere: they resync."""
        async with self._reassert_lock:
            return await self._reassert_once()

    async def _reassert_once(self) -> int:
        self._reasserting = True  # sockets opening or closing now are settled by the loop
        try:
            while self._presence_calls:  # noqa: ASYNC110 - a few ms: the calls in flight
                await anyio.sleep(0.005)
            counter, joined = self._last_seen, set[str]()
            while True:
                counts = self._hub.socket_counts()
                owed = set(self._leaves_owed)
                gone = owed - counts.keys()
                arguments: list[str | int] = [
                    value
                    for user, count in [*counts.items(), *((user, 0) for user in gone)]
                    for value in (user, count)
                ]
                step = 2 * _REASSERT_BATCH
                async with self._redis.pipeline(transaction=False) as pipe:
                    for start in range(0, max(len(arguments), 1), step):
                        self._queue(
                            pipe, "reassert", self.instance_id, *arguments[start : start + step]
                        )
                    replies = await pipe.execute()
                counter = int(replies[-1])
                self._seen(counter)
                self._leaves_owed -= owed  # set absolutely now, whether gone or back
                joined |= self._unregistered
                self._unregistered = set()
                if not (self._unregistered or self._leaves_owed - set(self._hub.users())):
                    break
        finally:
            self._reasserting = False
        behind = [
            connection
            for user in joined
            for connection in self._hub.connections(user)
            if connection.cut < counter
        ]
        if behind:
            self._resync("opened while Redis was away", behind)
        return counter

    def _resync(self, cause: str, connections: list[Connection] | None = None) -> None:
        """These sockets (all here if None) may have missed a sending: they take no more
        alerts live, and are closed (1012) once the log holds what they missed; their pages
        reconnect with `after=` and replay it."""
        closing = self._hub.connections() if connections is None else connections
        if connections is None:
            self._observer.gap(cause)
        logger.warning(
            "broker resync (%s): %d sockets here replay from the log", cause, len(closing)
        )
        for connection in closing:
            connection.freeze()
        if self._closers is None:
            for connection in closing:
                connection.resync()
        else:
            self._closers.start_soon(self._close_for_resync, closing)

    async def _close_for_resync(self, connections: list[Connection]) -> None:
        random.shuffle(connections)
        try:
            await anyio.sleep(self._resync_delay)
            for connection in connections:
                await anyio.sleep(RESYNC_SPREAD_SECONDS / len(connections))
                connection.resync()
                self._observer.resync_closed()
        finally:
            # Cancelled (shutdown, or a crash of `run`): frozen sockets must not stay open.
            for connection in connections:
                connection.resync()

    async def beat(self) -> None:
        """Keep this instance alive; find a new epoch or this instance reaped (a gap)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(f"{self._prefix}:inst", self.instance_id)
            self._queue(pipe, "heartbeat", self.instance_id, LAPSE_MS, REAP_MS, self._grace_ms)
            pipe.hmget(f"{self._prefix}:meta", "epoch", "seq")
            # What this instance has read is needed by nobody: without this, an inbox keeps
            # its last INBOX_BOUND entries (~0.5 GB at 100 searches/s, docs/benchmarks). The
            # last one read goes too (it may name an erased user): reads resume after its id,
            # which need not exist.
            pipe.xtrim(self._inbox, minid=_after(self._last_read), approximate=False)
            with self._observer.round_trip("heartbeat"):
                score, live, (epoch, seq), _trimmed = await pipe.execute()
        self._observer.instances(int(live))
        epoch = _text(epoch)
        self._seen(int(seq))
        cause = None
        if self._epoch is not None and epoch != self._epoch:
            cause = "epoch"
            self._last_n = None
        elif score is None and self._beaten:
            # Reaped (lapsed for long): our inbox and registry were dropped.
            cause = "reaped"
            self._last_n = None
        self._epoch = epoch
        self._beaten = True
        if cause is not None:
            self._resync(cause)
            await self._reassert()

    async def _beating(self) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_SECONDS)
            if not self._up:
                raise _Down
            await self.beat()
            if self._unregistered or self._leaves_owed:
                # Sockets opened or closed while a reassert was under way, or a close whose
                # call was cut short: settled now, not at the next outage.
                await self._reassert()

    async def _writing_orphans(self) -> None:
        # Apart from the heartbeat: writing a dead instance's mirror may take a while, and
        # an instance that stopped beating meanwhile would lapse (and could be reaped).
        while True:
            await anyio.sleep(HEARTBEAT_SECONDS)
            await self.write_orphans()

    async def write_orphans(self) -> None:
        """Write the mirrors of reaped instances (what they sent but never wrote) to the
        alert log, one at a time, each under a lease; delete each once written."""
        while (orphan := await self._call("orphan", LEASE_MS)) is not None:
            mirror = f"{self._prefix}:log:{_text(orphan)}"
            records: list[AlertRecord] = []
            start = "-"
            while entries := cast(
                _Entries, await self._redis.xrange(mirror, min=start, count=REPLAY_COUNT)
            ):
                records += (self._mirrored(*entry) for entry in entries)
                start = f"({entries[-1][0].decode()}"
            if not await self._sink.store(records):
                return  # the lease lapses: tried again later, by whichever instance
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(mirror)
                pipe.zrem(f"{self._prefix}:orphans", orphan)
                await pipe.execute()
            logger.info("wrote %d unwritten sendings of %s", len(records), _text(orphan))

    async def _read_inbox(self) -> None:
        # Resumes where it stopped after a reconnect: nothing is read twice.
        while True:
            # RESP2, bytes: [[stream, [(entry id, {field: value})]]].
            with self._observer.round_trip("xread"):
                reply = cast(
                    list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                    await self._blocking_read(),
                )
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._last_read = entry_id
                    cause = self._check(fields)
                    if cause is not None:
                        # Before delivering: the sockets' last alert must stay the one
                        # before what they missed, which their replay starts after.
                        self._resync(cause)
                        await self._reassert()
                    self._receive(fields)

    async def _blocking_read(self) -> Any:
        try:
            return await self._redis.xread(
                {self._inbox: self._last_read}, count=_READ_COUNT, block=_READ_BLOCK_MS
            )
        except ResponseError as error:
            # The primary was demoted under the read (a planned failover): a Cluster's client
            # passes that on as it came, Sentinel's as a lost connection.
            if str(error).startswith("UNBLOCKED"):
                raise _Down(str(error)) from error
            raise

    def _check(self, fields: dict[bytes, bytes]) -> str | None:
        """A gap before this entry: a new epoch, or an entry of this inbox missing."""
        if b"e" not in fields:
            # Compatibility shim, removed in 0.2.0: from an instance of a version before
            # epochs, during a rolling upgrade.
            return None
        epoch, n = fields[b"e"].decode(), int(fields[b"n"])
        expected = None if self._last_n is None else self._last_n + 1
        self._last_n = n
        if epoch != self._epoch:
            self._epoch = epoch
            return "epoch"
        if expected is not None and n != expected:
            return "inbox"
        return None

    def _receive(self, fields: dict[bytes, bytes]) -> None:
        self._observer.received()
        erased = fields.get(b"x")
        if erased is not None:
            self._erase_here(erased.decode())
            return
        user = fields.get(b"u")
        if user is not None:
            self._delivery.deliver_user(user.decode(), fields[b"p"].decode())
            return
        sending = self._sending_decoder.decode(fields[b"m"])
        seq = int(fields[b"q"])
        self._seen(seq)
        self._delivery.deliver(sending.numbered(seq))

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Held by one instance at a time: Redis's lock, which expires so that a holder that
        died frees it. While Redis does not answer, held within this instance only: an add
        must not fail because the broker is away (the cap may then be passed by a few).
        Raises BrokerUnavailable when another instance holds it too long."""
        if not self._up:
            async with self._local_locks(name):
                yield
            return
        lock = self._redis.lock(
            f"{self._prefix}:lock:{name}",
            timeout=_LOCK_SECONDS,
            blocking_timeout=_LOCK_WAIT_SECONDS,
        )
        try:
            acquired = bool(await lock.acquire())
        except _REFUSED as error:
            # Not the name: it may hold a user's id, which logs show only hashed.
            logger.warning("a lock held on this instance only: Redis refused: %r", error)
            async with self._local_locks(name):
                yield
            return
        if not acquired:
            raise BrokerUnavailable("a lock is held on another instance; try again")
        try:
            yield
        finally:
            with contextlib.suppress(*_REFUSED, LockError):  # expired: nothing left to free
                await lock.release()

    async def connected(self, user: str, *, max_sockets: int | None = None) -> int:
        if self._up and not self._reasserting:
            self._presence_calls += 1
            try:
                cap = "" if max_sockets is None else str(max_sockets)
                cut = int(await self._call("presence", self.instance_id, user, "1", cap))
            except _REFUSED as error:
                self._mark_down(error)
            else:
                if cut < 0:
                    raise TooManySockets(max_sockets or 0)
                self._seen(cut)
                return cut
            finally:
                self._presence_calls -= 1
        # Registered when Redis answers again; until then nothing is routed here for this
        # socket, so it may resync then (`_reassert`). Its cut: the last position known here
        # (the log's last, if Redis never answered since the start).
        self._unregistered.add(user)
        return max(self._last_seen, self._log_max)

    async def disconnected(self, user: str) -> None:
        erased = user in self._erasing
        if erased and not self._hub.connections(user):
            self._erasing.discard(user)
        if self._up and not self._reasserting:
            self._presence_calls += 1
            recorded = False
            try:
                await self._call("presence", self.instance_id, user, "e" if erased else "0", "")
                recorded = True
            except _REFUSED as error:
                self._mark_down(error)
            finally:
                self._presence_calls -= 1
                if not recorded:  # refused, or cancelled (the close's time ran out)
                    self._leaves_owed.add(user)
            return
        self._leaves_owed.add(user)

    async def _decide(self, name: str, *args: str | int | bytes) -> Any:
        """A script the dispatcher needs an answer from: BrokerUnavailable while Redis is
        unreachable (the dispatcher keeps the search for later)."""
        if not self._up:
            raise BrokerUnavailable
        try:
            return await self._call(name, *args)
        except _REFUSED as error:
            self._mark_down(error)
            raise BrokerUnavailable from error

    async def hits(
        self, search: SearchFold, owned: list[OwnedCandidate], default: DefaultCandidate | None
    ) -> Hits:
        [decided] = await self.hits_many([Asked(search, owned, default)])
        return decided

    async def hits_many(self, searches: list[Asked]) -> list[Hits]:
        # One script call for the whole batch: sequential round trips per search were the
        # queue that held alerts up under load (docs/benchmarks/multi-instance.md).
        if not searches:
            return []
        args: list[str | int | bytes] = [self._window_ms, self._grace_ms]
        for search, owned, default in searches:
            fold = self._fold_encoder.encode(
                _Fold(at=search.at, searcher=search.searcher, found=search.found)
            )
            args += [
                search.searcher,
                fold,
                "" if default is None else default.watch_id,
                b"" if default is None else _watch_label(default),
                len(owned),
            ]
            for candidate in owned:
                args += [candidate.watch_id, candidate.owner, _watch_label(candidate)]
        decisions = await self._decide("hits", *args)
        return [
            Hits(
                immediate=[asked.owned[index] for index in immediate],
                covered=frozenset(_text(user) for user in covered),
                to_everyone=bool(to_everyone),
                firsts=[_text(user) for user in firsts],
                coalesced=int(coalesced),
            )
            for asked, (immediate, covered, to_everyone, firsts, coalesced) in zip(
                searches, decisions, strict=True
            )
        ]

    def _event(self, raw: bytes) -> SearchFold:
        skip, fold = raw.split(b"\n", 1)
        decoded = self._fold_decoder.decode(fold)
        return SearchFold(
            found=decoded.found,
            at=decoded.at,
            searcher=decoded.searcher,
            skip=frozenset(json.loads(skip)),
        )

    async def claim_due(self, *, everything: bool = False) -> list[Followup]:
        windows, ended = await self._decide(
            "claim", self._window_ms, CLAIM_LIMIT, "1" if everything else "0", LEASE_MS
        )
        self._open_windows = int(windows)
        followups = []
        for token, watch_id, owner, label, not_alerted, events in ended:
            followups.append(
                Followup(
                    watch=_watch_of(_text(watch_id), label),
                    owner=_text(owner) or None,
                    events=[self._event(event) for event in events],
                    not_alerted=frozenset(_text(user) for user in not_alerted),
                    token=_text(token),
                )
            )
        return followups

    async def publish(
        self, sendings: list[Sending], *, guard: str | None = None
    ) -> list[AlertRecord]:
        args: list[str | int | bytes] = [INBOX_BOUND, self.instance_id, MIRROR_BOUND, guard or ""]
        for sending in sendings:
            encoded = self._sending_encoder.encode(sending)
            if sending.everyone is not None:
                args += ["e", encoded, 0]
            else:
                args += ["u", encoded, len(sending.watches), *sending.watches]
        seqs = await self._decide("publish", *args)
        if not seqs:
            return []  # the claim was no longer ours: another instance sent it
        self._seen(max(int(seq) for seq in seqs))
        everyone = sum(1 for sending in sendings if sending.everyone is not None)
        self._observer.published("everyone", everyone)
        self._observer.published("user", len(sendings) - everyone)
        records = [sending.numbered(int(seq)) for sending, seq in zip(sendings, seqs, strict=True)]
        for record in records:
            self._sink.append(record)
        return records

    def _mirrored(self, entry_id: bytes, fields: dict[bytes, bytes]) -> AlertRecord:
        seq = int(entry_id.split(b"-", 1)[0])
        return self._sending_decoder.decode(fields[b"m"]).numbered(seq)

    async def unwritten(self, after: int, upto: int) -> list[AlertRecord]:
        # Whose mirror: every instance registered (alive or lapsed) and every reaped one not
        # yet written. One whose mirror is deleted between the two reads was written first.
        if upto <= after or not self._up:
            # Redis away: a socket opened now is resynced once it is back (its cut then
            # lies behind), and replays again from the log with every mirror written.
            return []
        try:
            return await self._mirror_reads.ask((after, upto))
        except _REFUSED as error:
            self._mark_down(error)
            return []

    async def _read_mirrors_at_once(self, ranges: list[tuple[int, int]]) -> list[list[AlertRecord]]:
        """The greetings asking at once (a reconnect storm's) read the mirrors once, over all
        their ranges, and each takes its own: every entry fetched and decoded once, not once
        per greeting. Where a mirror holds more than a read takes (REPLAY_COUNT), each range
        is read on its own, as it would have been alone."""
        if len(ranges) > 1:
            low = min(after for after, _ in ranges)
            high = max(upto for _, upto in ranges)
            records, whole = await self._read_mirrors(low, high)
            if whole:
                return [[r for r in records if after < r.seq <= upto] for after, upto in ranges]
        return [(await self._read_mirrors(after, upto))[0] for after, upto in ranges]

    async def _read_mirrors(self, after: int, upto: int) -> tuple[list[AlertRecord], bool]:
        """The unwritten sendings with after < seq <= upto, and whether that is all of them
        (no mirror held more than one read takes)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(f"{self._prefix}:inst", 0, -1)
            pipe.zrange(f"{self._prefix}:orphans", 0, -1)
            alive, orphans = await pipe.execute()
        async with self._redis.pipeline(transaction=False) as pipe:
            for instance in {*alive, *orphans}:
                pipe.xrevrange(
                    f"{self._prefix}:log:{_text(instance)}",
                    max=f"{upto}-0",
                    min=f"{after + 1}-0",
                    count=REPLAY_COUNT,
                )
            mirrors = cast(list[_Entries], await pipe.execute())
        records = [self._mirrored(*entry) for entries in mirrors for entry in entries]
        return records, all(len(entries) < REPLAY_COUNT for entries in mirrors)

    async def written(self, seqs: list[int]) -> None:
        """Drop sendings this instance's alert log has written from its mirror (only those:
        a publish whose answer is still on its way may hold a lower position)."""
        if not seqs:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(seqs), REPLAY_COUNT):
                    pipe.xdel(
                        self._mirror, *(f"{seq}-0" for seq in seqs[start : start + REPLAY_COUNT])
                    )
                await pipe.execute()
        except _REFUSED as error:
            # Kept until the mirror's bound drops them; replay merges them by position.
            logger.warning("could not drop written sendings from the mirror: %s", error)

    async def notify_user(self, user: str, payload: str) -> None:
        if self._up:
            try:
                await self._call("notify", INBOX_BOUND, user, payload, "")
                self._observer.published("user_message")
                return
            except _REFUSED as error:
                self._mark_down(error)
        # Here at once; to the user's sockets on other instances when Redis is back (the
        # latest list only: it replaces the ones before).
        self._delivery.deliver_user(user, payload)
        self._notify_owed[user] = payload

    async def erase_user(self, user: str) -> UserErased:
        if not self._up:
            raise BrokerUnavailable("the erasure must reach every instance: Redis is away")
        try:
            sockets, windows, searches = await self._call(
                "erase", INBOX_BOUND, self.instance_id, user
            )
        except _REFUSED as error:
            self._mark_down(error)
            raise BrokerUnavailable from error
        self._erase_here(user)
        return UserErased(sockets=int(sockets), windows=int(windows), searches=int(searches))

    def _erase_here(self, user: str) -> None:
        """Close the erased user's sockets here and forget what this instance keeps of them."""
        self._unregistered.discard(user)
        self._leaves_owed.discard(user)
        self._notify_owed.pop(user, None)
        if self._hub.connections(user):
            self._erasing.add(user)
        self._hub.erase(user)
        if self._on_erased is not None:
            self._on_erased(user)

    @property
    def open_windows(self) -> int:
        """Open windows of the whole service, as of this instance's last claim."""
        return self._open_windows
