"""Bounds on request bodies, enforced while they arrive.

Every body this API takes is a small JSON document. The bounds are checked as each chunk is
received, so an oversized body — declared, or chunked without a length — is refused (413,
and the connection is closed) after at most one chunk past the bound, never read whole.
Starlette's own `max_body_size` answers in plain text, outside the one error shape.

A body nesting arrays and objects deeper than `MAX_DEPTH` is refused the same way (400
`too_deep`), before any route decodes it: msgspec decodes nesting by recursion, and a few
KiB of `[` would end in RecursionError, a 500 (`percolert.core.jsondepth`). Every route
reads its body through here, so none has to remember.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from percolert.core.jsondepth import MAX_DEPTH, DepthScanner, TooDeep
from percolert.web.errors import ApiError, error_response
from percolert.web.paths import route_path


class BodyLimitMiddleware:
    """`max_bytes` for every body, except under the path prefixes of `max_bytes_under`,
    which have bounds of their own (the admin API's products)."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, max_bytes_under: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_bytes_under = dict(max_bytes_under or {})

    def _bound(self, scope: Scope) -> int:
        path = route_path(scope)
        for prefix, bound in self.max_bytes_under.items():
            if path.startswith(prefix):
                return bound
        return self.max_bytes

    def _too_large(self, bound: int) -> ApiError:
        # The rest of the body is never read: the connection cannot carry another request.
        return ApiError(
            413,
            "body_too_large",
            f"the body may be at most {bound} bytes",
            {"Connection": "close"},
        )

    def _too_deep(self, limit: int) -> ApiError:
        return ApiError(
            400,
            "too_deep",
            f"the body nests arrays and objects deeper than {limit} levels",
            {"Connection": "close"},  # the rest of the body is not read either
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bound = self._bound(scope)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > bound:
            # Refused whatever the route, before anything is read (or 100 Continue sent): a
            # route that takes no body would otherwise leave the server to read and discard
            # all of it after answering.
            refusal = self._too_large(bound)
            await error_response(refusal.status, refusal.code, refusal.message, refusal.headers)(
                scope, receive, send
            )
            return
        received = 0
        depth = DepthScanner(MAX_DEPTH)

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > bound:
                    raise self._too_large(bound)
                try:
                    depth.feed(chunk)
                except TooDeep as error:
                    raise self._too_deep(error.limit) from None
            return message

        await self.app(scope, receive_within_limit, send)
