"""Delivery through Centrifugo (`PERCOLERT_DELIVERY=centrifugo`): search alerts published to
each recipient's personal channel on a Centrifugo server instead of to sockets held here.

Percolation, coalescing and the alert log stay Percolert's; the sockets, their history and
their recovery are Centrifugo's. Each alert becomes a `publish` to `personal:#<user>` (an
alert names the recipient's own watch, so recipients do not share a payload), a default
watch's sending one `broadcast` to the channels of everyone present but the excluded. What
queued during one turn of the event loop goes out as one server-API `batch` request.

Who is present comes from Centrifugo's `channels` call (the personal channels with a client
on them), read every `PRESENCE_SECONDS`: it stands in for the hub's users, both for the
broker (only owners present, or gone for less than the grace, are alerted) and for the
watch leases. What is not carried over is listed in docs/design/centrifugo-peer.md: the
greeting's replay after an absence (Centrifugo's own recovery covers a short one), product
alerts on the page, and running more than one Percolert instance.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection

import aiohttp
import anyio
import anyio.lowlevel
import jwt
import msgspec

from percolert.core.records import AlertRecord
from percolert.realtime.delivery import DeliveryObserver

logger = logging.getLogger(__name__)

# Who is present is read this often.
PRESENCE_SECONDS = 1.0
# Commands per batch request, at most (a burst goes out in several).
_BATCH = 5_000
# Alert messages kept while Centrifugo does not answer, at most.
_KEPT = 100_000
_PREFIX = "personal:#"


class _Publish(msgspec.Struct):
    channel: str
    data: msgspec.Raw


class _Broadcast(msgspec.Struct):
    channels: list[str]
    data: msgspec.Raw


class _DisconnectCode(msgspec.Struct):
    code: int
    reason: str


class _Disconnect(msgspec.Struct):
    user: str
    disconnect: _DisconnectCode


class _HistoryRemove(msgspec.Struct):
    channel: str


class _Command(msgspec.Struct, omit_defaults=True):
    publish: _Publish | None = None
    broadcast: _Broadcast | None = None
    disconnect: _Disconnect | None = None
    history_remove: _HistoryRemove | None = None

    @property
    def messages(self) -> int:
        """Alert messages the command carries: a broadcast's channels, else one."""
        return 1 if self.broadcast is None else len(self.broadcast.channels)


class _Batch(msgspec.Struct):
    commands: list[_Command]
    # In order: two messages for one channel in one batch must keep theirs (Centrifugo runs
    # a parallel batch's commands concurrently).
    parallel: bool = False


class _ChannelInfo(msgspec.Struct):
    num_clients: int = 0


class _ChannelsResult(msgspec.Struct):
    channels: dict[str, _ChannelInfo] = {}


class _Error(msgspec.Struct):
    code: int = 0
    message: str = ""


class _ChannelsReply(msgspec.Struct):
    result: _ChannelsResult | None = None
    error: _Error | None = None


class _PublishReply(msgspec.Struct):
    error: _Error | None = None


class _BroadcastResult(msgspec.Struct):
    responses: list[_PublishReply] = []


class _CommandReply(msgspec.Struct):
    error: _Error | None = None
    broadcast: _BroadcastResult | None = None


class _BatchReply(msgspec.Struct):
    replies: list[_CommandReply] = []


# An erased user's sockets are closed for good (Centrifugo's "force disconnect, no reconnect").
_ERASED = _DisconnectCode(code=3501, reason="force disconnect")


def personal_channel(user: str) -> str:
    return _PREFIX + user


def connection_token(secret: str, user: str, seconds: float, now: float) -> tuple[str, float]:
    """A Centrifugo connection token for `user` (HS256; `sub` names the personal channel
    Centrifugo subscribes the connection to) and when it expires (epoch seconds)."""
    expires = int(now + seconds)
    token = jwt.encode({"sub": user, "iat": int(now), "exp": expires}, secret, algorithm="HS256")
    return token, float(expires)


class CentrifugoDelivery:
    """The brokers' delivery (realtime.delivery.Delivery's surface) to Centrifugo's server
    API at `api_url` (its HTTP address, `/api` appended here) with `api_key`.

    A session hears only of searches made after it began, as on the hub: when the user's
    token came from this process (`session_began`), from their session's start (an
    account's: always); otherwise from when this process first saw them present, which is
    never before their session began."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        grace_seconds: float,
        token_seconds: float = 3600.0,
        on_delivered: DeliveryObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api_url.rstrip("/") + "/api"
        self._headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self._grace = grace_seconds
        self._token_seconds = token_seconds
        self._on_delivered = on_delivered
        self._clock = clock
        self._wall_clock = wall_clock
        self._encoder = msgspec.json.Encoder()
        self._queue: deque[_Command] = deque()
        self._queued_messages = 0
        self._queued = anyio.Event()
        self._idle = anyio.Event()  # set while nothing is queued or being sent
        self._idle.set()
        self._present: set[str] = set()
        self._left_at: dict[str, float] = {}
        # Wall-clock seconds from which each user may hear of searches, and (monotonic) when
        # a token's record was made (kept while the token may be in use).
        self._first_seen: dict[str, float] = {}
        self._started: dict[str, tuple[float, float]] = {}
        self._session: aiohttp.ClientSession | None = None
        # Read by the metrics and the tests.
        self.published = 0  # alert messages Centrifugo took (a broadcast: its channels)
        self.failed = 0  # alert messages refused, unanswered or dropped from a full queue
        self.presence_reads = 0

    # The token endpoint's side.

    def session_began(self, user: str, started: float) -> None:
        """A token for `user` was given, whose session began at `started` (wall clock; 0
        for an account, which hears of every search while connected)."""
        self._started[user] = (started, self._clock())

    # The brokers' side.

    def reachable(self, user: str) -> bool:
        """Present on Centrifugo, or gone for less than the grace (as the hub's)."""
        if user in self._present:
            return True
        left = self._left_at.get(user)
        return left is not None and self._clock() - left < self._grace

    def users(self) -> Collection[str]:
        """Who is present: the watch leases renew theirs."""
        return self._present

    def _hears(self, user: str, since: float) -> bool:
        """Whether `user`'s session began at or before `since` (the earliest search told of)."""
        known = self._started.get(user)
        began = known[0] if known is not None else self._first_seen.get(user)
        return began is not None and began <= since

    def deliver(self, record: AlertRecord) -> None:
        # Whole milliseconds, as the hub compares (realtime/delivery.py).
        since = record.earliest_ms / 1000
        if record.everyone is not None:
            channels = [
                personal_channel(user)
                for user in self._present
                if user not in record.excluded and self._hears(user, since)
            ]
            if channels:
                data = msgspec.Raw(self._encoder.encode(record.alert(record.everyone)))
                self._queue_command(_Command(broadcast=_Broadcast(channels, data)))
                if self._on_delivered is not None:
                    self._on_delivered(record.everyone, True, len(channels))
            return
        for user, watch in record.watches.items():
            if not self._hears(user, since):
                continue
            data = msgspec.Raw(self._encoder.encode(record.alert(watch)))
            self._queue_command(_Command(publish=_Publish(personal_channel(user), data)))
            if self._on_delivered is not None:
                self._on_delivered(watch, False, 1)

    def deliver_user(self, user: str, payload: str) -> None:
        data = msgspec.Raw(payload.encode())
        self._queue_command(_Command(publish=_Publish(personal_channel(user), data)))

    def erase(self, user: str) -> int:
        """`user` was erased: nothing queued for them goes out, their sockets on Centrifugo
        are closed for good and their channel's history removed; nothing is kept of them
        here. Returns how many of their sockets were known to be open (0 or 1: Centrifugo
        reports channels, not sockets)."""
        channel = personal_channel(user)
        kept: deque[_Command] = deque()
        for command in self._queue:
            if command.publish is not None and command.publish.channel == channel:
                self._queued_messages -= 1
                continue
            if command.broadcast is not None and channel in command.broadcast.channels:
                command.broadcast.channels.remove(channel)
                self._queued_messages -= 1
                if not command.broadcast.channels:
                    continue
            kept.append(command)
        self._queue = kept
        was_present = user in self._present
        self._present.discard(user)
        self._left_at.pop(user, None)
        self._first_seen.pop(user, None)
        self._started.pop(user, None)
        self._queue_command(_Command(disconnect=_Disconnect(user=user, disconnect=_ERASED)))
        self._queue_command(_Command(history_remove=_HistoryRemove(channel=channel)))
        return int(was_present)

    def _queue_command(self, command: _Command) -> None:
        # Bounded by alert messages: while Centrifugo does not answer, the oldest go first
        # (they are in the alert log all the same).
        while self._queue and self._queued_messages + command.messages > _KEPT:
            dropped = self._queue.popleft()
            self._queued_messages -= dropped.messages
            self.failed += dropped.messages
        self._queue.append(command)
        self._queued_messages += command.messages
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._queued.set()

    async def drain(self, seconds: float) -> None:
        """At shutdown: wait, `seconds` at most, until what is queued has been sent."""
        with anyio.move_on_after(seconds):
            await self._idle.wait()

    # The loops.

    async def run(self) -> None:
        """Send what is queued and read who is present, until cancelled."""
        async with aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=10)
        ) as session:
            self._session = session
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._send)
                    tasks.start_soon(self._watch_presence)
            finally:
                self._session = None

    async def _send(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                await self._queued.wait()
            self._queued = anyio.Event()
            # One turn of the loop: whatever else is being delivered now joins this batch.
            await anyio.lowlevel.checkpoint()
            commands: list[_Command] = []
            while self._queue and len(commands) < _BATCH:
                commands.append(self._queue.popleft())
            sent = sum(command.messages for command in commands)
            self._queued_messages -= sent
            try:
                await self._post_batch(commands)
            except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as error:
                logger.warning("Centrifugo did not take %d alert messages: %s", sent, error)
                self.failed += sent
                await anyio.sleep(1.0)

    async def _post_batch(self, commands: list[_Command]) -> None:
        assert self._session is not None
        body = self._encoder.encode(_Batch(commands))
        async with self._session.post(f"{self._api}/batch", data=body) as response:
            response.raise_for_status()
            reply = msgspec.json.decode(await response.read(), type=_BatchReply)
        refused: list[_Error] = []
        for command, answer in zip(commands, reply.replies, strict=False):
            if answer.error is not None:
                refused.append(answer.error)
                self.failed += command.messages
            elif answer.broadcast is not None:
                failed = [r.error for r in answer.broadcast.responses if r.error is not None]
                refused += failed
                self.failed += len(failed)
                self.published += command.messages - len(failed)
            elif command.publish is not None or command.broadcast is not None:
                self.published += command.messages
        if refused:
            logger.warning("Centrifugo refused %d messages: %s", len(refused), refused[0].message)

    async def _watch_presence(self) -> None:
        failing = False  # logged once per outage, not every second
        while True:
            try:
                await self._read_presence()
                if failing:
                    logger.warning("reading who is present on Centrifugo works again")
                failing = False
            except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as error:
                if not failing:
                    logger.warning(
                        "reading who is present on Centrifugo failed (retried every %g s; "
                        "meanwhile those last seen stay reachable): %s",
                        PRESENCE_SECONDS,
                        error,
                    )
                failing = True
            await anyio.sleep(PRESENCE_SECONDS)

    async def _read_presence(self) -> None:
        assert self._session is not None
        body = self._encoder.encode({"pattern": _PREFIX + "*"})
        async with self._session.post(f"{self._api}/channels", data=body) as response:
            response.raise_for_status()
            reply = msgspec.json.decode(await response.read(), type=_ChannelsReply)
        if reply.error is not None or reply.result is None:
            message = reply.error.message if reply.error is not None else "no result"
            raise aiohttp.ClientError(f"channels: {message}")
        present = {
            channel[len(_PREFIX) :]
            for channel, info in reply.result.channels.items()
            if channel.startswith(_PREFIX) and info.num_clients > 0
        }
        now, wall = self._clock(), self._wall_clock()
        for user in self._present - present:
            self._left_at[user] = now
        for user in present:
            self._left_at.pop(user, None)
            self._first_seen.setdefault(user, wall)
        self._left_at = {u: at for u, at in self._left_at.items() if now - at < self._grace}
        self._present = present
        # Kept while present or within the grace (first seen), or while a token given here
        # may still be in use (its record).
        self._first_seen = {
            u: at for u, at in self._first_seen.items() if u in present or u in self._left_at
        }
        keep = self._token_seconds + self._grace
        self._started = {
            u: record
            for u, record in self._started.items()
            if u in present or u in self._left_at or now - record[1] < keep
        }
        self.presence_reads += 1
