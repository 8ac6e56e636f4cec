"""The connections on this node: who is connected, and delivery to their sockets.

Delivery never waits on a socket. Each connection has a bounded queue and its own writer;
`offer` only enqueues. A connection whose queue is full has stopped keeping up: it is cut
off (closed with 1013, "try again later") rather than slowing anyone else, and the page
reconnects and recovers what it missed. The hub knows nothing of Elasticsearch or watches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection

import anyio

from percolert.realtime.frames import WriteFrame, frame_text

logger = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 §7.4.1 and the IANA registry).
GOING_AWAY = 1001  # the server is shutting down
POLICY_VIOLATION = 1008  # no valid session, foreign origin, or a malformed message
UNSUPPORTED_DATA = 1003  # a binary frame where only JSON text is accepted
SLOW_CLIENT = 1013  # "try again later": the client fell too far behind
SERVICE_RESTART = 1012  # resync: the page reconnects with `after=` and replays from the log
# Private use (4000-4999), in the HTTP status's spirit: 410 Gone. The shop erased the account
# (its data is gone); terminal: a page must not reconnect with the same token.
ACCOUNT_ERASED = 4410

# A cut no position reaches: a socket waiting for its resync takes no alert live.
_NO_LIVE_ALERTS = 2**63

# Open pages reconnect within this long of a restart (the SDK, web/sdk/percolert.js, backs
# off to at most 30 s, with jitter); until then every watch owner counts as reachable.
RESTART_WINDOW_SECONDS = 60.0


class Connection:
    """One open socket of one user. `send_text` is the socket's own send coroutine;
    `write_frame`, if the server offers it, writes a ready-made frame at once (`frames`).

    A message goes straight to the socket when nothing is queued or being sent for it and
    the socket takes it (`write_frame`); otherwise it is queued for the writer, which sends
    in order. The queue is a plain list and the writer sleeps on a future that `offer`
    resolves: measured against an anyio memory stream per socket (which yields to the event
    loop on every receive), this cut the broadcast cost per socket several-fold (see the
    benchmark notes in docs/benchmarks/). A list, not a deque: it is empty almost always,
    and an empty deque takes 760 bytes against a list's 56, for every open socket (the
    queue is bounded, so taking from its front stays cheap). Slots for the same reason.
    """

    __slots__ = (
        "__weakref__",  # the product feed's gates are weakly keyed by connection
        "_cancel_scope",
        "_closed",
        "_frames_possible",
        "_held",
        "_queue",
        "_queue_size",
        "_readable",
        "_receipts",
        "_send_text",
        "_sending",
        "_wakeup",
        "_write_frame",
        "cut",
        "ended",
        "finished",
        "overflowed",
        "resynced",
        "session_started",
        "user",
    )

    def __init__(
        self,
        user: str,
        send_text: Callable[[str], Awaitable[None]],
        queue_size: int,
        write_frame: WriteFrame | None = None,
        *,
        session_started: float = 0.0,
    ) -> None:
        self.user = user
        # When the socket's session began (epoch seconds): it gets no alert that counts a
        # search made before then.
        self.session_started = session_started
        self._send_text = send_text
        # Set once the writer runs: until then the greeting is being sent, and everything
        # offered must wait behind it in the queue.
        self._write_frame: WriteFrame | None = None
        self._frames_possible = write_frame
        self._sending = False
        self._queue: list[str] = []
        # Who is told when a queued message is sent (`offer`'s `on_sent`), in queue order;
        # None, not an empty list, on the many sockets that never have one.
        self._receipts: list[tuple[str, Callable[[], None]]] | None = None
        self._queue_size = queue_size
        self._wakeup: asyncio.Future[None] | None = None
        self._readable = False
        self.overflowed = False
        self.finished = False
        # Set when the server ends the socket for a reason of its own: (close code, reason).
        self.ended: tuple[int, str] | None = None
        self._closed = False
        self._cancel_scope: anyio.CancelScope | None = None
        # Alerts numbered up to `cut` are the greeting's (replayed from the log); only later
        # ones go out live. Until the cut is known (`hold`), numbered alerts wait in `_held`.
        self.cut = -1
        self._held: list[tuple[int, str]] | None = None
        self.resynced = False

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def hold(self) -> None:
        """Keep numbered alerts aside until `release` says where the greeting's end."""
        self._held = []

    def release(self, cut: int) -> None:
        """The greeting covers positions up to `cut`: offer what was held beyond it."""
        held, self._held = self._held or [], None
        self.cut = max(self.cut, cut)  # a frozen socket stays frozen
        for seq, payload in held:
            self.offer(payload, seq=seq)

    def offer(
        self,
        payload: str,
        frame: bytes | None = None,
        *,
        seq: int | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> bool:
        """Send or queue a message (`frame`: the same, from `frame_text`; `seq`: the alert's
        position, if it is one); a full queue marks the connection too slow and stops it.
        `on_sent` is called once the message is written to the socket (not if it never is)."""
        if self.overflowed or self.finished or self._closed:
            return False
        if seq is not None:
            if self._held is not None:
                self._held.append((seq, payload))
                return True
            if seq <= self.cut:
                return False
        if (
            frame is not None
            and self._write_frame is not None
            and not self._queue
            and not self._sending
            and self._write_frame(frame)
        ):
            if on_sent is not None:
                on_sent()
            return True
        if len(self._queue) >= self._queue_size:
            self.overflowed = True
            logger.warning("closing a socket of user %s: send queue full", self.user[:8])
            if self._cancel_scope is not None:
                self._cancel_scope.cancel()
            return False
        self._queue.append(payload)
        if on_sent is not None:
            if self._receipts is None:
                self._receipts = []
            self._receipts.append((payload, on_sent))
        self._wake()
        return True

    def finish(self) -> None:
        """Take no more messages; the writer sends what is queued and then returns."""
        self.finished = True
        self._wake()

    def freeze(self) -> None:
        """Take no alert live any more: the socket may have missed one, so its page is to
        resync (`resync`), and its last alert must stay the one before what it missed."""
        self.cut = _NO_LIVE_ALERTS

    def resync(self) -> None:
        """Close the socket (1012, after what is queued), for its page to reconnect with
        `after=` and replay what it missed from the log."""
        self.freeze()
        self.resynced = True
        self.finish()

    def end(self, code: int, reason: str) -> None:
        """Close the socket with `code` and `reason` (the first given, if ended twice): what
        is queued is dropped, and so is anything offered later."""
        if self.ended is None:
            self.ended = (code, reason)
        self.close()
        # The writer may be stuck sending to a client that stopped reading: stop it too.
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def close(self) -> None:
        """Drop what is queued; later offers are refused."""
        self._closed = True
        self._queue.clear()
        self._receipts = None
        self._wake()

    def readable(self) -> None:
        """The client sent something: the writer hands it to its `read` (see `write`)."""
        self._readable = True
        self._wake()

    async def write(
        self, scope: anyio.CancelScope, read: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Send queued messages in order until `finish` (or `scope` is cancelled on overflow).

        With `read`, the same task also reads: `read` runs whenever `readable` was called
        (and once at the start), and returns False when the socket is over. One task per
        socket instead of a writer and a reader (each with its own chain of coroutines, kept
        for as long as the socket is open: see docs/benchmarks/socket-memory.md)."""
        self._cancel_scope = scope
        if self.overflowed:
            scope.cancel()
        loop = asyncio.get_running_loop()
        self._write_frame = self._frames_possible
        self._readable = read is not None
        while True:
            while self._queue:
                self._sending = True
                payload = self._queue.pop(0)
                try:
                    await self._send_text(payload)
                finally:
                    self._sending = False
                if self._receipts and self._receipts[0][0] is payload:
                    self._receipts.pop(0)[1]()
            if self.finished or self._closed:
                return
            if self._readable and read is not None:
                self._readable = False
                if not await read():
                    return
                continue
            self._wakeup = loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None


class Hub:
    """The open sockets, by user, and who is reachable: connected now or within
    `grace_seconds` (alerts for them are kept for their reconnect)."""

    def __init__(
        self, *, grace_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._by_user: dict[str, set[Connection]] = {}
        self._sockets = 0  # counted, not summed: it is logged at every open and close
        self._grace = grace_seconds
        self._clock = clock
        # When each recently connected user's last socket closed.
        self._left_at: dict[str, float] = {}
        # Erased users whose sockets are closing: they leave no departure behind.
        self._erased: set[str] = set()
        self._next_forget = clock() + grace_seconds
        # Until then, anyone may be reconnecting: after a restart every open page does.
        self._everyone_until = clock() + min(grace_seconds, RESTART_WINDOW_SECONDS)
        self.delivered = 0
        self.slow_closed = 0
        self.closing = False

    def add(self, connection: Connection) -> None:
        if self.closing:
            connection.finish()
        connections = self._by_user.setdefault(connection.user, set())
        if connection not in connections:
            connections.add(connection)
            self._sockets += 1
        self._left_at.pop(connection.user, None)

    def remove(self, connection: Connection) -> None:
        if connection.overflowed:
            self.slow_closed += 1
        connections = self._by_user.get(connection.user)
        if connections is not None and connection in connections:
            connections.discard(connection)
            self._sockets -= 1
            if not connections:
                del self._by_user[connection.user]
                if connection.user in self._erased:
                    self._erased.discard(connection.user)
                else:
                    self._left_at[connection.user] = self._clock()
                self._forget_long_gone()

    def reachable(self, user: str) -> bool:
        """Connected, or gone for less than the grace period: an alert for `user` is worth
        making (sent now, or kept for the reconnect). Users who are away for longer — most
        watch owners at any moment — cost no alert at all."""
        if user in self._by_user:
            return True
        now = self._clock()
        left = self._left_at.get(user)
        return now < self._everyone_until or (left is not None and now - left < self._grace)

    def _forget_long_gone(self) -> None:
        """Drop departures older than the grace period, at most once per period: the map
        holds at most two periods of departures, and a burst of closes costs one scan."""
        now = self._clock()
        if now < self._next_forget:
            return
        self._next_forget = now + self._grace
        cutoff = now - self._grace
        for user in [user for user, left in self._left_at.items() if left < cutoff]:
            del self._left_at[user]

    def erase(self, user: str) -> int:
        """The user's account was erased: close their sockets here (ACCOUNT_ERASED) and
        forget that they were here (they are not reachable through the grace period);
        returns how many sockets were closed."""
        self._left_at.pop(user, None)
        connections = tuple(self._by_user.get(user, ()))
        if connections:
            self._erased.add(user)
        for connection in connections:
            connection.end(ACCOUNT_ERASED, "account erased")
        return len(connections)

    def users(self) -> Collection[str]:
        return self._by_user.keys()

    def connections(self, user: str | None = None) -> list[Connection]:
        """The open sockets of `user` (of everyone if None)."""
        if user is not None:
            return list(self._by_user.get(user, ()))
        return [c for connections in self._by_user.values() for c in connections]

    def socket_counts(self) -> dict[str, int]:
        """How many sockets each connected user has open here."""
        return {user: len(connections) for user, connections in self._by_user.items()}

    def socket_count(self) -> int:
        return self._sockets

    def send_to_user(
        self, user: str, payload: str, *, since: float | None = None, seq: int | None = None
    ) -> int:
        """Send `payload` to every open socket of `user` (of a session begun at or before
        `since`, if given; of a cut below `seq`, if given); returns how many took it."""
        connections = tuple(self._by_user.get(user, ()))
        if not connections:
            return 0
        frame = frame_text(payload)
        sent = 0
        for connection in connections:
            if since is None or connection.session_started <= since:
                sent += connection.offer(payload, frame, seq=seq)
        self.delivered += sent
        return sent

    def send_to_all(
        self,
        payload: str,
        *,
        exclude: Collection[str] = (),
        since: float | None = None,
        seq: int | None = None,
    ) -> int:
        """Send `payload` to every socket of every user not in `exclude` (of a session begun
        at or before `since`, if given; of a cut below `seq`, if given); returns how many
        users took it (on one socket or more)."""
        frame = frame_text(payload)
        sent = users = 0
        for user, connections in tuple(self._by_user.items()):
            if user in exclude:
                continue
            taken = 0
            for connection in tuple(connections):
                if since is None or connection.session_started <= since:
                    taken += connection.offer(payload, frame, seq=seq)
            sent += taken
            users += taken > 0
        self.delivered += sent
        return users

    async def close_all(self, seconds: float) -> None:
        """Shutdown: every socket sends what it has queued, then closes with 1001; returns
        when all are closed or after `seconds`."""
        self.closing = True
        for connections in tuple(self._by_user.values()):
            for connection in tuple(connections):
                connection.finish()
        with anyio.move_on_after(seconds):
            while self._by_user:  # noqa: ASYNC110 - sockets leave on their own; poll briefly
                await anyio.sleep(0.02)
