"""The security headers every response carries: a strict Content-Security-Policy (the page's
own scripts, styles, API and socket, nothing else), no sniffing, no framing, no referrer."""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import Scope

# A Host header fit to be written into the policy (it comes from the client).
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def content_security_policy(scope: Scope) -> str:
    """The page's own scripts, styles and images, its API and its `/ws` socket; nothing else.

    The socket's origin is named because not every browser counts ws: under 'self'.
    """
    host = Headers(scope=scope).get("host", "")
    socket = ""
    if _HOST.fullmatch(host):
        socket = f" {'wss' if scope.get('scheme') == 'https' else 'ws'}://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'{socket}; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    )


def security_headers(scope: Scope) -> dict[str, str]:
    return {
        "content-security-policy": content_security_policy(scope),
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
    }
