"""What browsers are held to and told at the edge: changes only as JSON from the shop's own
pages (no cross-site writes), and security headers on every response."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from percolert.web.errors import error_response
from percolert.web.middleware.security_headers import security_headers
from percolert.web.origins import request_allowed
from percolert.web.paths import UNSUBSCRIBE_PREFIX, route_path

_UNSAFE_METHODS = frozenset(["POST", "PUT", "PATCH", "DELETE"])


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


def _has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


def refusal(scope: Scope, allowed_origins: Collection[str]) -> Response | None:
    """The answer to a request that may not change anything, or None to let it through.

    A body must be JSON: the content types a form or a plain cross-site `fetch` may send
    without the browser asking first (text/plain, form-encoded) are refused, whatever the
    origin. A DELETE needs no body.
    """
    method = scope["method"]
    if method not in _UNSAFE_METHODS:
        return None
    if route_path(scope).startswith(UNSUBSCRIBE_PREFIX):
        # The signed token in the path is the authority, not a session: a mail provider's
        # one-click POST (RFC 8058) comes form-encoded and from no page of the shop.
        return None
    if not request_allowed(scope, allowed_origins):
        return error_response(
            403, "forbidden_origin", "changes are accepted only from the shop's own pages"
        )
    headers = Headers(scope=scope)
    if (method != "DELETE" or _has_body(headers)) and not _is_json(headers.get("content-type")):
        return error_response(
            415, "unsupported_media_type", "send the body as JSON (Content-Type: application/json)"
        )
    return None


class BrowserGuardMiddleware:
    """Refuses cross-site and non-JSON writes before anything reads them; adds the security
    headers to every HTTP response and WebSocket handshake denial (a route's own value of one
    wins)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_origins: Collection[str],
        frame_ancestors: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.allowed_origins = tuple(allowed_origins)
        self.frame_ancestors = tuple(frame_ancestors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            # A response, or the denial of a WebSocket handshake (429, 403: admission.py).
            # Made here, not kept in this closure: an accepted socket holds the closure for
            # as long as it is open, and never sends a response.
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                headers = MutableHeaders(scope=message)
                for name, value in security_headers(scope, self.frame_ancestors).items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        if scope["type"] == "websocket":
            # Its origin is checked by the socket's route, which says why it refuses.
            await self.app(scope, receive, send_with_headers)
            return
        refused = refusal(scope, self.allowed_origins)
        if refused is not None:
            await refused(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
