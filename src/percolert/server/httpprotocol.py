"""uvicorn's httptools HTTP protocol, with bounds on what a slow or hostile client can hold:
the size of a request's head, and how long its head and body may take to arrive.

Size: httptools (llhttp) takes a request line and headers of any size, buffering each header
whole before handing it over, so a client could make the server hold megabytes per
connection. This protocol counts what arrives until the head is complete and, past
`MAX_REQUEST_HEAD_BYTES`, answers 431 and closes the connection. (uvicorn's h11 protocol
has such a bound built in, `h11_max_incomplete_event_size`, but parses several times
slower.)

Time: uvicorn's `timeout_keep_alive` only runs between requests, so a client trickling a
header line every few seconds (slowloris), or connecting and sending nothing, held its
connection for ever. Here a head must be complete within `head_timeout` of its first byte
(a new connection's first head: of the connection), and a body may pause at most
`body_timeout` between reads (time the server itself stops reading, for flow control, does
not count). Past either, the answer is 408 when no response has begun, and the connection
closes; a connection that never sent a byte just closes. An app waiting for a body that
timed out sees the client gone (`http.disconnect`), with the scope marked `BODY_TIMED_OUT`
so that its log says 408 rather than 499. Both deadlines share one timer, armed only when
a read leaves a head or body unfinished (most requests arrive in one read) and re-armed
for what is left when it fires early.

The server's own answers (431, 408, and uvicorn's 400 for what is not HTTP) are in the
API's one error shape and carry the security headers, without the socket origin in the
policy (they can come before the Host header).

The hooks are the asyncio protocol's `connection_made` / `data_received` /
`connection_lost`, the parser callbacks `on_message_begin` / `on_headers_complete` /
`on_message_complete`, and `send_400_response` / `handle_websocket_upgrade`; uvicorn's
`cycle` says whether a response is under way (tests/server/test_private_apis.py fails if
any of that moves).
"""

from __future__ import annotations

import asyncio
import http
import logging

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from percolert.core.messages import ErrorBody, ErrorDetail
from percolert.web.errors import BODY_TIMED_OUT
from percolert.web.middleware.security_headers import security_headers
from percolert.web.paths import loggable_path

logger = logging.getLogger("percolert.http")

# Request line plus headers; browsers send a few KiB, cookies included.
MAX_REQUEST_HEAD_BYTES = 16 * 1024

_SECURITY_HEADERS = b"".join(
    f"{name}: {value}\r\n".encode() for name, value in security_headers(None).items()
)


class BoundedRequestProtocol(HttpToolsProtocol):
    """Use `bounded_protocol(head_timeout, body_timeout)`, which sets the two bounds."""

    head_timeout: float
    body_timeout: float

    # Bytes of the current request's head received so far; None while its body arrives.
    _head_bytes: int | None = 0
    # The last bytes of the previous read, in case the blank line ending the head spans reads.
    _tail = b""
    # Loop time since which the current head has been arriving (the connection's start for
    # its first one); None when no head is unfinished.
    _head_since: float | None = None
    # Between a request's head and the end of its body; and when a byte of it last came.
    _body_pending = False
    _body_read_at = 0.0
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = self.loop.time()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            # Only what comes up to the blank line counts: a read may also carry the body.
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
                self._refuse_head()
                return
            self._tail = seen[-3:] if end < 0 else b""
        super().data_received(data)
        if self._body_pending:
            self._body_read_at = self.loop.time()
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # not a new connection's first request, already timed
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._head_since = None
        self._body_pending = True  # its time is taken once this read is through
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        self._tail = b""
        self._body_pending = False
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._stop_clock()  # the connection is the WebSocket protocol's from here on
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own refusal of what is not HTTP (it logged `msg` already).
        self._stop_clock()
        self.transport.write(
            self._answer(400, "invalid_request", "the request is not valid HTTP/1.1")
        )
        self.transport.close()

    def _answer(self, status: int, code: str, message: str) -> bytes:
        """A complete response in the API's error shape, closing the connection."""
        body = msgspec.json.encode(ErrorBody(ErrorDetail(code=code, message=message)))
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        head.extend(
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        )
        head.append(_SECURITY_HEADERS)
        head.append(
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
        )
        return b"".join(head) + body

    def _may_answer(self) -> bool:
        """No response is under way, so one can be written whole."""
        return self.cycle is None or self.cycle.response_complete

    def _refuse_head(self) -> None:
        logger.info("refused a request head over %d bytes", MAX_REQUEST_HEAD_BYTES)
        self._stop_clock()
        if self._may_answer():
            message = f"the request line and headers may be at most {MAX_REQUEST_HEAD_BYTES} bytes"
            self.transport.write(self._answer(431, "headers_too_large", message))
        # else a response is under way: the connection just closes
        self.transport.close()

    # The clock: one timer for whichever of the head or the body is unfinished.

    def _arm(self) -> None:
        if self._timer is not None or self.transport.is_closing():
            return
        if self._head_since is not None:
            left = self._head_since + self.head_timeout - self.loop.time()
        elif self._body_pending:
            left = self._body_read_at + self.body_timeout - self.loop.time()
        else:
            return
        self._timer = self.loop.call_later(max(left, 0.0), self._on_timer)

    def _stop_clock(self) -> None:
        self._head_since = None
        self._body_pending = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self._head_since is not None and now - self._head_since >= self.head_timeout:
            self._head_timed_out()
        elif self._body_pending and (self.flow.read_paused or self.cycle.waiting_for_100_continue):
            # The server stopped reading (the app is behind), or has yet to tell the client to
            # go on (`Expect: 100-continue`, answered at the app's first read): the client is
            # not late.
            self._body_read_at = now
            self._arm()
        elif self._body_pending and now - self._body_read_at >= self.body_timeout:
            self._body_timed_out()
        else:
            self._arm()  # woken early (the deadline moved on) or nothing left to time

    def _head_timed_out(self) -> None:
        started = bool(self._head_bytes)
        self._stop_clock()
        if started:  # an idle connection, never sent a byte, just closes (as on keep-alive)
            logger.info("closed a connection whose request head took over %g s", self.head_timeout)
            if self._may_answer():
                message = f"the request line and headers must arrive within {self.head_timeout:g} s"
                self.transport.write(self._answer(408, "request_timeout", message))
        self.transport.close()

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        self._stop_clock()
        logger.info(
            "closed a request whose body stopped arriving for %g s: %s %s",
            self.body_timeout,
            cycle.scope["method"],
            loggable_path(cycle.scope),  # type: ignore[arg-type]
        )
        if not cycle.response_started:
            message = f"the body stopped arriving: no byte of it for {self.body_timeout:g} s"
            self.transport.write(self._answer(408, "request_timeout", message))
            cycle.scope[BODY_TIMED_OUT] = True  # type: ignore[literal-required]
        if not cycle.response_complete:
            # The app waiting on the body is told the client is gone (as on connection_lost),
            # and whatever it sends from now on is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def bounded_protocol(head_timeout: float, body_timeout: float) -> type[BoundedRequestProtocol]:
    """The protocol class for uvicorn's `Config(http=...)`, with these two bounds."""

    class Bounded(BoundedRequestProtocol):
        pass

    Bounded.head_timeout = head_timeout
    Bounded.body_timeout = body_timeout
    return Bounded
