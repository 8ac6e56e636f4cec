"""Where a request goes, as the app's routes see it."""

from __future__ import annotations

from starlette.types import Scope

# Where a session begins: the page asks here before its first API call and its socket.
SESSION_PATH = "/api/session"
# Everything under it works for a session: a request without one is given one there.
API_PREFIX = "/api/"
# For the load balancer and the scraper: behind PERCOLERT_METRICS_TOKEN.
MONITORING_PATHS = frozenset({"/metrics", "/readyz"})


def route_path(scope: Scope) -> str:
    """The path the app's routes match on: below its mount point (`root_path`), if any."""
    return str(scope["path"]).removeprefix(scope.get("root_path", ""))
