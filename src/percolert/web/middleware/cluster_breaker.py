"""While Elasticsearch is known to hang, the API answers 503 at once.

A cluster that stops answering would make each request wait its whole timeout (seconds),
piling requests up in the server. Once a request has timed out (the error handlers trip the
breaker), requests under `/api/` are refused at once until the background probe finds the
cluster answering again (`percolert.core.breaker`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from percolert.core.breaker import Breaker
from percolert.web.errors import UNAVAILABLE_MESSAGE, error_response, unavailable
from percolert.web.paths import SESSION_PATH, route_path

# The routes under it ask Elasticsearch; those in `_CLUSTER_FREE` do not, and go on: a
# page still gets its session (and so its socket, which works without the cluster).
_CLUSTER_ROUTES = "/api/"
_CLUSTER_FREE = frozenset({SESSION_PATH})


class ClusterBreakerMiddleware:
    def __init__(self, app: ASGIApp, *, breaker: Breaker) -> None:
        self.app = app
        self.breaker = breaker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.breaker.open
            and (path := route_path(scope)).startswith(_CLUSTER_ROUTES)
            and path not in _CLUSTER_FREE
        ):
            error = unavailable(UNAVAILABLE_MESSAGE)
            response = error_response(error.status, error.code, error.message, error.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
