"""uvicorn's httptools HTTP protocol, with a bound on the size of a request's head.

httptools (llhttp) takes a request line and headers of any size, buffering each header
whole before handing it over, so a client could make the server hold megabytes per
connection. This protocol counts what arrives until the head is complete and, past
`MAX_REQUEST_HEAD_BYTES`, answers 431 and closes the connection. (uvicorn's h11 protocol
has such a bound built in, `h11_max_incomplete_event_size`, but parses several times
slower.) The hooks are the asyncio protocol's `data_received` and the parser callbacks
`on_headers_complete` / `on_message_complete`; uvicorn's `cycle` attribute tells whether a
response is under way (tests/server/test_private_apis.py fails if that moves).
"""

from __future__ import annotations

import logging

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from percolert.core.messages import ErrorBody, ErrorDetail

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
    # Bytes of the current request's head received so far; None while its body arrives.
    _head_bytes: int | None = 0
    # The last bytes of the previous read, in case the blank line ending the head spans reads.
    _tail = b""

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            # Only what comes up to the blank line counts: a read may also carry the body.
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
                self._refuse()
                return
            self._tail = seen[-3:] if end < 0 else b""
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        self._tail = b""
        super().on_message_complete()

    def _refuse(self) -> None:
        logger.info("refused a request head over %d bytes", MAX_REQUEST_HEAD_BYTES)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_refusal())
        # else a response is under way: the connection just closes
        self.transport.close()
