"""Which pages may act with a shopper's session: one rule for the WebSocket handshake and for
requests that change something, so a page elsewhere can neither listen nor write."""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import Scope

# What `Sec-Fetch-Site` says of a request the shop's own page (or the user, typing a URL) made.
_OWN_FETCH_SITES = frozenset(["same-origin", "none"])


def own_origin(scope: Scope) -> str:
    """The origin the client addressed: the scheme the server was reached by and its Host."""
    secure = scope.get("scheme") in ("https", "wss")
    host = Headers(scope=scope).get("host", "")
    return f"{'https' if secure else 'http'}://{host}"


def origin_allowed(origin: str | None, scope: Scope, allowed_origins: Collection[str]) -> bool:
    """True for the server's own origin or one the deployment allows; a missing Origin is not."""
    if origin is None:
        return False
    return origin.rstrip("/") in {own_origin(scope), *allowed_origins}


def request_allowed(scope: Scope, allowed_origins: Collection[str]) -> bool:
    """May this HTTP request change something for the session it carries?

    Browsers send `Origin` with every such request, and `Sec-Fetch-Site` with every request
    to a secure or local origin; the first present decides. A request with neither comes from
    no browser (curl, a script): it can only carry a cookie its sender already holds, so it is
    let through. Nor can a page make an older browser send one across sites: a change needs a
    JSON body or the DELETE method, and for both a browser asks first (a CORS preflight,
    never granted here).
    """
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is not None:
        return origin_allowed(origin, scope, allowed_origins)
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.lower() in _OWN_FETCH_SITES
    return True
