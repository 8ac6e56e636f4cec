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
from collections.abc import Callable, Collection

import aiohttp
import anyio
import anyio.lowlevel
import jwt
import msgspec

from percolert.core.messages import AlertWatch
from percolert.core.records import AlertRecord

logger = logging.getLogger(__name__)

# Who is present is read this often.
PRESENCE_SECONDS = 1.0
# Commands per batch request, at most (a burst goes out in several).
_BATCH = 5_000
# Commands kept while Centrifugo does not answer, at most: the oldest are dropped (they are
# in the alert log all the same).
_KEPT = 100_000
_PREFIX = "personal:#"

# Told after a sending went out, once per watch it went through that reached anyone: as
# realtime.delivery's DeliveryObserver.
DeliveryObserver = Callable[[AlertWatch, bool, int], None]


class _Publish(msgspec.Struct):
    channel: str
    data: msgspec.Raw


class _Broadcast(msgspec.Struct):
    channels: list[str]
    data: msgspec.Raw


class _Command(msgspec.Struct, omit_defaults=True):
    publish: _Publish | None = None
    broadcast: _Broadcast | None = None


class _Batch(msgspec.Struct):
    commands: list[_Command]
    parallel: bool = True


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


class _CommandReply(msgspec.Struct):
    error: _Error | None = None


class _BatchReply(msgspec.Struct):
    replies: list[_CommandReply] = []


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
    API at `api_url` (its HTTP address, `/api` appended here) with `api_key`."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        grace_seconds: float,
        on_delivered: DeliveryObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api_url.rstrip("/") + "/api"
        self._headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self._grace = grace_seconds
        self._on_delivered = on_delivered
        self._clock = clock
        self._encoder = msgspec.json.Encoder()
        self._queue: list[_Command] = []
        self._queued = anyio.Event()
        self._present: set[str] = set()
        self._left_at: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        # Read by the metrics and the tests.
        self.published = 0  # messages Centrifugo took (a broadcast counts its channels)
        self.failed = 0  # commands refused or dropped
        self.presence_reads = 0

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

    def deliver(self, record: AlertRecord) -> None:
        if record.everyone is not None:
            channels = [
                personal_channel(user) for user in self._present if user not in record.excluded
            ]
            if channels:
                data = msgspec.Raw(self._encoder.encode(record.alert(record.everyone)))
                self._queue_command(_Command(broadcast=_Broadcast(channels, data)))
                if self._on_delivered is not None:
                    self._on_delivered(record.everyone, True, len(channels))
            return
        for user, watch in record.watches.items():
            data = msgspec.Raw(self._encoder.encode(record.alert(watch)))
            self._queue_command(_Command(publish=_Publish(personal_channel(user), data)))
            if self._on_delivered is not None:
                self._on_delivered(watch, False, 1)

    def deliver_user(self, user: str, payload: str) -> None:
        data = msgspec.Raw(payload.encode())
        self._queue_command(_Command(publish=_Publish(personal_channel(user), data)))

    def _queue_command(self, command: _Command) -> None:
        if len(self._queue) >= _KEPT:
            self._queue.pop(0)
            self.failed += 1
        self._queue.append(command)
        self._queued.set()

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
            await self._queued.wait()
            self._queued = anyio.Event()
            # One turn of the loop: whatever else is being delivered now joins this batch.
            await anyio.lowlevel.checkpoint()
            commands, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
            if self._queue:
                self._queued.set()
            try:
                await self._post_batch(commands)
            except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as error:
                logger.warning("Centrifugo did not take %d alerts: %s", len(commands), error)
                self.failed += len(commands)
                await anyio.sleep(1.0)

    async def _post_batch(self, commands: list[_Command]) -> None:
        assert self._session is not None
        body = self._encoder.encode(_Batch(commands))
        async with self._session.post(f"{self._api}/batch", data=body) as response:
            response.raise_for_status()
            reply = msgspec.json.decode(await response.read(), type=_BatchReply)
        refused = [r.error for r in reply.replies if r.error is not None]
        if refused:
            self.failed += len(refused)
            logger.warning("Centrifugo refused %d alerts: %s", len(refused), refused[0].message)
        for command, answer in zip(commands, reply.replies, strict=False):
            if answer.error is None:
                self.published += (
                    1 if command.broadcast is None else len(command.broadcast.channels)
                )

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
        now = self._clock()
        for user in self._present - present:
            self._left_at[user] = now
        for user in present:
            self._left_at.pop(user, None)
        self._left_at = {u: at for u, at in self._left_at.items() if now - at < self._grace}
        self._present = present
        self.presence_reads += 1
