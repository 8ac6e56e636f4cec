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
  not matter which instance served a search; an ended window is taken out by one claim, so
  one instance makes its follow-up.
- Positions: one counter (`P:meta` `seq`), raised at start above µs time and the alert
  log's last position, so positions handed out before stay valid for `after=`.

Not yet (the next steps of §11): Redis outages and restarts (spool, reconnect, epoch and
gap detection), leases on claimed follow-ups, replay of what other instances have not yet
written to Elasticsearch.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol, cast

import anyio
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from percolert.alertlog import AlertRecord
from percolert.broker import (
    DefaultCandidate,
    Followup,
    Hits,
    OwnedCandidate,
    SearchFold,
    Sending,
)
from percolert.delivery import Delivery
from percolert.hub import RESTART_WINDOW_SECONDS, Hub
from percolert.settings import Settings

logger = logging.getLogger("percolert.broker")

HEARTBEAT_SECONDS = 1.0
# An instance that missed this long of beats no longer counts as connected anywhere (its
# users count as reconnecting) ...
LAPSE_MS = 5_000
# ... and after this long it is reaped: its registry and inbox are dropped.
REAP_MS = 30_000
INBOX_BOUND = 100_000
CLAIM_LIMIT = 64
# Connections to Redis per instance, and how long a call waits for one before it fails.
MAX_CONNECTIONS = 64
CONNECTION_WAIT_SECONDS = 10.0
_READ_COUNT = 500
_READ_BLOCK_MS = 1_000


class RecordSink(Protocol):
    """Where this instance's sendings are recorded (the alert log), and its last position."""

    def append(self, record: AlertRecord) -> None: ...

    async def max_seq(self) -> int: ...


class _Fold(msgspec.Struct, frozen=True):
    """A folded search as a window in Redis keeps it (who skips it is kept beside it)."""

    text: str
    at: float
    searcher: str


def default_instance_id(settings: Settings) -> str:
    return f"{settings.host}:{settings.port}:{secrets.token_hex(3)}"


def _script(name: str) -> str:
    folder = resources.files("percolert").joinpath("redis_lua")
    return folder.joinpath("_common.lua").read_text() + folder.joinpath(name).read_text()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBroker:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        sink: RecordSink,
        *,
        url: str,
        instance_id: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.instance_id = instance_id
        # A call waits for a free connection: redis-py's default pool fails at once past 100
        # calls in flight, as a storm of socket opens (one presence call each) went.
        self._redis = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                url, max_connections=MAX_CONNECTIONS, timeout=CONNECTION_WAIT_SECONDS
            )
        )
        self._prefix = f"percolert:{{{settings.index_prefix}}}"
        self._inbox = f"{self._prefix}:inbox:{instance_id}"
        self._window_ms = round(settings.coalesce_seconds * 1000)
        self._grace_ms = round(settings.reconnect_grace_seconds * 1000)
        self._restart_ms = round(
            min(settings.reconnect_grace_seconds, RESTART_WINDOW_SECONDS) * 1000
        )
        self._sink = sink
        self._delivery = Delivery(hub)
        self._wall_clock = wall_clock
        self._scripts = {
            name: self._redis.register_script(_script(f"{name}.lua"))
            for name in ("seed", "heartbeat", "presence", "hits", "claim", "publish", "notify")
        }
        self._sending_encoder = msgspec.msgpack.Encoder()
        self._sending_decoder = msgspec.msgpack.Decoder(Sending)
        self._fold_encoder = msgspec.json.Encoder()
        self._fold_decoder = msgspec.json.Decoder(_Fold)
        self._open_windows = 0
        # The inbox is new with this instance's id: everything in it is for us.
        self._last_read = b"0-0"

    async def _call(self, name: str, *args: str | int | bytes) -> Any:
        return await self._scripts[name](keys=[], args=[self._prefix, *args])

    async def start(self) -> None:
        """Raise the position counter above every position handed out before, and beat once,
        before the first socket or search."""
        floor = max(int(self._wall_clock() * 1_000_000), await self._sink.max_seq() + 1)
        seq = await self._call("seed", floor, self._restart_ms)
        await self.beat()
        logger.info("broker on Redis as instance %s, position %s", self.instance_id, _text(seq))

    async def close(self) -> None:
        await self._redis.aclose()

    async def run(self) -> None:
        """Beat and read this instance's inbox, until cancelled."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._beating)
            await self._read_inbox()

    async def beat(self) -> None:
        await self._call("heartbeat", self.instance_id, LAPSE_MS, REAP_MS, self._grace_ms)

    async def _beating(self) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_SECONDS)
            await self.beat()

    async def _read_inbox(self) -> None:
        # Resumes where it stopped when the supervisor restarts it: nothing is read twice.
        last = self._last_read
        while True:
            # RESP2, bytes: [[stream, [(entry id, {field: value})]]].
            reply = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                await self._redis.xread(
                    {self._inbox: last}, count=_READ_COUNT, block=_READ_BLOCK_MS
                ),
            )
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    last = self._last_read = entry_id
                    self._receive(fields)

    def _receive(self, fields: dict[bytes, bytes]) -> None:
        user = fields.get(b"u")
        if user is not None:
            self._delivery.deliver_user(user.decode(), fields[b"p"].decode())
            return
        sending = self._sending_decoder.decode(fields[b"m"])
        self._delivery.deliver(sending.numbered(int(fields[b"q"])))

    async def connected(self, user: str) -> int:
        return int(await self._call("presence", self.instance_id, user, "1"))

    async def disconnected(self, user: str) -> None:
        try:
            await self._call("presence", self.instance_id, user, "0")
        except RedisError as error:
            # The socket is gone either way; the user then counts as connected here until
            # this instance stops and is reaped.
            logger.warning("could not record a closed socket in Redis: %s", error)

    async def hits(
        self, search: SearchFold, owned: list[OwnedCandidate], default: DefaultCandidate | None
    ) -> Hits:
        fold = self._fold_encoder.encode(
            _Fold(text=search.text, at=search.at, searcher=search.searcher)
        )
        args: list[str | int | bytes] = [
            self._window_ms,
            self._grace_ms,
            search.searcher,
            fold,
            "" if default is None else default.watch_id,
            "" if default is None else default.terms,
        ]
        for candidate in owned:
            args += [candidate.watch_id, candidate.owner, candidate.terms]
        immediate, covered, to_everyone, firsts, coalesced = await self._call("hits", *args)
        return Hits(
            immediate=[owned[index] for index in immediate],
            covered=frozenset(_text(user) for user in covered),
            to_everyone=bool(to_everyone),
            firsts=[_text(user) for user in firsts],
            coalesced=int(coalesced),
        )

    def _event(self, raw: bytes) -> SearchFold:
        skip, fold = raw.split(b"\n", 1)
        decoded = self._fold_decoder.decode(fold)
        return SearchFold(
            text=decoded.text,
            at=decoded.at,
            searcher=decoded.searcher,
            skip=frozenset(json.loads(skip)),
        )

    async def claim_due(self, *, everything: bool = False) -> list[Followup]:
        windows, ended = await self._call(
            "claim", self._window_ms, CLAIM_LIMIT, "1" if everything else "0"
        )
        self._open_windows = int(windows)
        return [
            Followup(
                watch_id=_text(watch_id),
                terms=_text(terms),
                owner=_text(owner) or None,
                events=[self._event(event) for event in events],
                not_alerted=frozenset(_text(user) for user in not_alerted),
            )
            for watch_id, owner, terms, not_alerted, events in ended
        ]

    async def publish(self, sendings: list[Sending]) -> list[AlertRecord]:
        args: list[str | int | bytes] = [INBOX_BOUND]
        for sending in sendings:
            encoded = self._sending_encoder.encode(sending)
            if sending.everyone is not None:
                args += ["e", encoded, 0]
            else:
                args += ["u", encoded, len(sending.watches), *sending.watches]
        seqs = await self._call("publish", *args)
        records = [sending.numbered(int(seq)) for sending, seq in zip(sendings, seqs, strict=True)]
        for record in records:
            self._sink.append(record)
        return records

    async def notify_user(self, user: str, payload: str) -> None:
        await self._call("notify", INBOX_BOUND, user, payload)

    @property
    def open_windows(self) -> int:
        """Open windows of the whole service, as of this instance's last claim."""
        return self._open_windows
