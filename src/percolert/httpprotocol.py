"""uvicorn's httptools HTTP protocol, with a bound on the size of a request's head.

httptools (llhttp) takes a request line and headers of any size, buffering each header
whole before handing it over, so a client could make the server hold megabytes per
connection. This protocol counts what arrives until the head is complete and, past
`MAX_REQUEST_HEAD_BYTES`, answers 431 and closes the connection. (uvicorn's h11 protocol
has such a bound built in, `h11_max_incomplete_event_size`, but parses several times
slower.) The hooks are the asyncio protocol's `data_received` and the parser callbacks
`on_headers_complete` / `on_message_complete`; uvicorn's `cycle` attribute tells whether a
response is under way (tests/test_limits.py fails if that moves).
"""

from __future__ import annotations

import logging

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from percolert.messages import ErrorBody, ErrorDetail

logger = logging.getLogger("percolert.http")

# Request line plus headers; browsers send a few KiB, cookies included.
MAX_REQUEST_HEAD_BYTES = 16 * 1024


def _refusal() -> bytes:
    body = msgspec.json.encode(
        ErrorBody(
            ErrorDetail(
                code="headers_too_large",
                message=f"the request line and headers may be at most {MAX_REQUEST_HEAD_BYTES} "
                "bytes",
            )
        )
    )
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class BoundedHeadProtocol(HttpToolsProtocol):
    # Bytes received since the current request's head began; None while its body arrives.
    # Counted per read, so a read that also carries the start of the body counts whole: the
    # body bound (4 KiB) keeps that well inside this one.
    _head_bytes: int | None = 0

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
                self._refuse()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        super().on_message_complete()

    def _refuse(self) -> None:
        logger.info("refused a request head over %d bytes", MAX_REQUEST_HEAD_BYTES)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_refusal())
        # else a response is under way: the connection just closes
        self.transport.close()
