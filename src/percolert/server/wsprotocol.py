"""uvicorn's WebSocket protocol (websockets, sans-I/O) with one addition: a socket that is
keeping up can be written a ready-made frame directly, outside the ASGI send path.

An alert goes to many sockets as the same bytes — server frames are not masked — so the hub
frames it once (`frame_text`) and writes those bytes to every socket whose transport is
open and not paused. That skips, per socket and message, a writer-task wake-up, Starlette's
and uvicorn's send coroutines and a frame build: in the broadcast profile those were more
than half of the server's CPU (docs/benchmarks/README.md). The ASGI path stays for
everything else, and for a socket that is behind (`write_frame` returns False).

The app finds the fast path as an ASGI scope extension (`percolert.realtime.frames` names it
and frames the bytes), so it still runs, on the ASGI path only, under any other server or
protocol. The same extension closes a socket behind what is
already written to it (`close_behind`): the ASGI close waits, like any send, until the client
reads, so a client that stopped reading would never be told why it was dropped.

An open socket does not keep the ASGI stack suspended above its endpoint for as long as it
is open (twenty coroutines, the middlewares' closures): the endpoint admits it, then hands
the rest (greeting, live alerts, close) to the protocol (`detach`) and returns, and the
protocol runs that rest as the socket's task, in the context of the app's call. A
middleware holding something for as long as the socket is open releases it when that rest
ends (`release_later`). With the lighter stand-ins below, an idle socket went from 29 to
16 KB (docs/benchmarks/socket-memory.md).

A refused handshake carries the security headers like any other response: an app's denial
(`websocket.http.response.start`: 429, 403) gets them from the app's middleware
(web/middleware/browser_guard.py), and the server's own refusals (403 when the app closes
before accepting, 400 for a malformed handshake, 500) from websockets' `reject`, which
builds each of those responses.

The protocol's state read here is uvicorn's, not public API: pyproject.toml caps uvicorn at
the versions tested, and tests/server/test_private_apis.py names whatever moves.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import StatusLike

from percolert.realtime.frames import FRAME_WRITER
from percolert.web.middleware.security_headers import security_headers

if TYPE_CHECKING:  # uvicorn's own names for ASGI messages (typing only)
    from uvicorn._types import ASGIReceiveEvent, ASGISendEvent


class _SecureRefusals(ServerProtocol):
    """websockets' server side, its handshake refusals carrying the security headers
    (`reject` builds each refusal; websockets documents changing its headers)."""

    def reject(self, status: StatusLike, text: str) -> Response:
        response = super().reject(status, text)
        for name, value in security_headers(None).items():
            response.headers[name] = value
        return response


class _Inbox:
    """What uvicorn uses of its protocol's `asyncio.Queue` of ASGI receive events
    (`put_nowait`, `get`, `empty`), without its cost: an asyncio queue holds three deques of
    760 bytes each even when empty, for every open socket, and an idle socket's queue is
    empty. Unbounded, in order; a getter waits on a future made when it has to."""

    __slots__ = ("_getters", "_items", "listener")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._getters: list[asyncio.Future[None]] = []
        # Told of every event put: lets the app read only when there is something to read
        # (`receive_listener`), instead of keeping a reader task waiting per socket.
        self.listener: Callable[[], None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        self._wake()
        if self.listener is not None:
            self.listener()

    def _wake(self) -> None:
        for getter in self._getters:
            if not getter.done():
                getter.set_result(None)
                return

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                # Woken, then cancelled before taking the item: another getter takes it.
                if not getter.cancelled() and self._items:
                    self._wake()
                raise
            finally:
                self._getters.remove(getter)
        return self._items.pop(0)


class _Flag:
    """What uvicorn uses of its protocol's `writable` `asyncio.Event` (`set`, `clear`,
    `is_set`, `wait`): the same, without an empty deque of waiters per socket."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


class FrameWritingProtocol(WebSocketsSansIOProtocol):
    """Also unties its reference cycles once the socket is over (both the connection and the
    app are done), so that what a closed socket leaves behind is freed at once by reference
    counting instead of waiting for a full garbage collection, which the server keeps rare
    (`percolert.server.gcpolicy`). Measured: ~60 objects per closed socket were cyclic garbage —
    this protocol and its transport pointing at each other, and the websockets parser
    generator and its connection (docs/benchmarks/README.md)."""

    _asgi_done = False
    # The rest of the app's work on this socket, to run once the app returns (`detach`),
    # with the context of the call, and what to release when it ends (`release_later`).
    _rest: tuple[Callable[[], Awaitable[None]], contextvars.Context] | None = None
    _releases: tuple[Callable[[], None], ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every open socket holds these: lighter stand-ins for uvicorn's asyncio queue and
        # event (docs/benchmarks/socket-memory.md).
        self.queue: _Inbox = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        # uvicorn built a plain ServerProtocol; this subclass only overrides `reject`, so the
        # object becomes one without being built twice per socket.
        self.conn.__class__ = _SecureRefusals

    async def run_asgi(self) -> None:
        """uvicorn's, and the socket's detached rest, if the app left one (`detach`)."""
        scope = cast(dict[str, Any], self.scope)
        # The protocol itself (its `write_frame`, `close_behind`, `listen`, `detach` and
        # `release_later`): not a dict of five bound methods made for every socket.
        scope["extensions"][FRAME_WRITER] = self
        # The lifespan's state, read-only, instead of uvicorn's copy of it for every socket
        # (~0.8 KB each, held for as long as the socket is open): the app reads its
        # services there and writes nothing (a write would raise, not leak to others).
        scope["state"] = MappingProxyType(self.app_state)
        detached = False
        try:
            ran = await self._guarded(self.app(self.scope, self.receive, self.send))
            if ran and self._rest is not None:
                rest, context = self._rest
                # A task of its own, in the context of the app's call (the middlewares'
                # context variables: the log's instance), awaited by no one: this task ends,
                # and with it the ASGI stack's suspended frames.
                task = self.loop.create_task(self._run_rest(rest), context=context)
                task.add_done_callback(self.on_task_complete)
                self.tasks.add(task)  # the server's shutdown waits for it, as for this one
                detached = True
        finally:
            self._rest = None
            if not detached:
                self._app_over()

    async def _run_rest(self, rest: Callable[[], Awaitable[None]]) -> None:
        try:
            await self._guarded(rest())
        finally:
            self._app_over()

    async def _guarded(self, running: Awaitable[object]) -> bool:
        """Await the app (or its rest) as uvicorn's `run_asgi` does: its errors logged, a
        500 for a handshake never completed; whether it returned (rather than raised). The
        transport is closed after it unless a close is under way or a rest is to come."""
        returned = False
        try:
            result = await running
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            returned = True
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and not (returned and self._rest is not None):
            self.transport.close()
        return returned

    def detach(self, rest: Callable[[], Awaitable[None]]) -> None:
        """Run `rest()` once the app has returned, as the socket's task (frames.detacher)."""
        self._rest = (rest, contextvars.copy_context())

    def release_later(self, release: Callable[[], None]) -> bool:
        """Call `release` when the socket's detached rest ends (frames.release_later)."""
        if self._rest is None:
            return False
        self._releases = (*self._releases, release)
        return True

    def _app_over(self) -> None:
        """The app and any rest of it are over: what middlewares held is released."""
        self._asgi_done = True
        releases, self._releases = self._releases, ()
        try:
            for release in releases:
                release()
        finally:
            self._untie()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # sets `disconnected`
        self._untie()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response (their headers parsed twice over) are
            # only read until the accept; the app has the request's headers in its scope.
            request = vars(self).pop("request", None)
            if request is not None:
                # websockets' parser keeps the request it parsed in its generator's frame
                # for the connection's life: its headers (cookie and all) go now.
                request.headers.clear()
            vars(self).pop("response", None)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # A refused handshake's answer is complete: uvicorn would otherwise log "ASGI
            # callable returned without completing handshake" at ERROR for every refusal.
            self.handshake_complete = True

    def _untie(self) -> None:
        if not (self._asgi_done and self.disconnected):
            return
        self.scope["extensions"].pop(FRAME_WRITER, None)  # self
        self.queue.listener = None  # the app's, which holds the app's socket
        self.conn.parser.close()  # a generator whose frame holds the connection
        self.transport = None  # type: ignore[assignment]  # it holds this protocol

    def listen(self, wake: Callable[[], None]) -> Callable[[], bool]:
        """Call `wake` whenever a receive event arrives; returns whether one is waiting."""
        self.queue.listener = wake
        return self.received

    def received(self) -> bool:
        return not self.queue.empty()

    def write_frame(self, frame: bytes) -> bool:
        """Write a frame from `frame_text` now, if the socket is open, uses no extension
        (compression would need its own frame) and its transport is not paused; otherwise
        write nothing and return False, and the caller queues the message instead."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.conn.extensions
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True

    def close_behind(self, code: int, reason: str, seconds: float) -> bool:
        """Queue a close frame after everything already written, even while the transport is
        paused, and cut the connection if the closing handshake is not done within `seconds`
        (a client that never reads again). False if the socket is closing or closed already.

        What uvicorn's ASGI `websocket.close` does, without first waiting for the transport
        to drain and with an abort instead of a close (which would wait for the drain too)
        when the time is up; the peer's close reply ends the connection as usual."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:  # the close reply must be read
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(seconds, self.transport.abort)
        return True
