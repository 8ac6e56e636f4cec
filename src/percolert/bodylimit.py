"""A bound on request bodies, enforced while they arrive.

Every body this API takes is a small JSON document. The bound is checked as each chunk is
received, so an oversized body — declared, or chunked without a length — is refused (413,
and the connection is closed) after at most one chunk past the bound, never read whole.
Starlette's own `max_body_size` answers in plain text, outside the one error shape.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from percolert.errors import ApiError, error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> ApiError:
        # The rest of the body is never read: the connection cannot carry another request.
        return ApiError(
            413,
            "body_too_large",
            f"the body may be at most {self.max_bytes} bytes",
            {"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            # Refused whatever the route, before anything is read (or 100 Continue sent): a
            # route that takes no body would otherwise leave the server to read and discard
            # all of it after answering.
            refusal = self._too_large()
            await error_response(refusal.status, refusal.code, refusal.message, refusal.headers)(
                scope, receive, send
            )
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, receive_within_limit, send)
