"""The security headers every response carries: a strict Content-Security-Policy (the page's
own scripts, styles, API and socket, nothing else), no sniffing, no referrer, and no framing
but by the shop's own pages where the deployment allows them (PERCOLERT_FRAME_ANCESTORS).

Besides the app's responses, the server's own refusals carry them too (`percolert.server`:
a request head too large or too slow, a request that is not HTTP, a refused WebSocket
handshake), some of them written before there is a scope to name the socket's origin from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import Scope

# A Host header fit to be written into the policy (it comes from the client).
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# Schemes whose socket is wss: an https page's, and a socket's own when it is secure.
_SECURE_SCHEMES = frozenset({"https", "wss"})


def content_security_policy(scope: Scope | None, frame_ancestors: Sequence[str] = ()) -> str:
    """The page's own scripts, styles and images, its API and its `/ws` socket; nothing else.

    The socket's origin is named because not every browser counts ws: under 'self'; without
    a scope (a refusal written before the request was parsed) it is left out.
    """
    host = "" if scope is None else Headers(scope=scope).get("host", "")
    ancestors = " ".join(frame_ancestors) or "'none'"
    socket = ""
    if scope is not None and _HOST.fullmatch(host):
        socket = f" {'wss' if scope.get('scheme') in _SECURE_SCHEMES else 'ws'}://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'{socket}; frame-ancestors {ancestors}; base-uri 'none'; "
        "form-action 'self'"
    )


def security_headers(scope: Scope | None, frame_ancestors: Sequence[str] = ()) -> dict[str, str]:
    headers = {
        "content-security-policy": content_security_policy(scope, frame_ancestors),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }
    if not frame_ancestors:
        # For browsers without CSP's frame-ancestors; it cannot name allowed framers.
        headers["x-frame-options"] = "DENY"
    return headers
