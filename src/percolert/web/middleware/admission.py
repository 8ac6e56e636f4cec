"""Who gets in: rate limits on searches, watch changes, new sessions and new sockets, the
cap on one user's open sockets, and the token of /metrics and /readyz, enforced before a
request or handshake reaches its route.

Over a rate limit the answer is 429 `rate_limited` with `Retry-After`; a WebSocket handshake
is refused the same way (a denial response, before any accept). The client address is the
connection's peer, or what a trusted proxy says it is (uvicorn's forwarded-header handling,
`trusted_proxies`): never a header anyone can set.

/metrics shows what the shop's visitors do as it happens, and /readyz asks Elasticsearch:
they answer `Authorization: Bearer <metrics_token>`, or with no token configured only a
client on this machine (a loopback peer whose request no proxy forwarded: a proxy on the
same host must not make every visitor local). Anyone else gets 401 `unauthorized` with
`WWW-Authenticate: Bearer`, and past a few of those per address 429: the token's holders
are never limited, so a stranger sharing the load balancer's address cannot lock it out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from percolert.realtime.frames import release_later
from percolert.web.admin_api import PREFIX as ADMIN_PREFIX
from percolert.web.admin_api import bearer_matches
from percolert.web.errors import error_response
from percolert.web.middleware.ratelimits import Action, RateLimits, client_address, retry_after
from percolert.web.middleware.sessions import current_user
from percolert.web.paths import (
    ADMIN_PAGE_API_PREFIX,
    MONITORING_PATHS,
    PREFERENCES_PATH,
    REALTIME_TOKEN_PATH,
    UNSUBSCRIBE_PREFIX,
    VISITS_PATH,
    route_path,
)

# Set when the session middleware found no session and the address may not start another.
_SESSION_REFUSED_KEY = "percolert.session_refused_for"
# Headers a proxy adds: a request carrying one came from further away than its peer.
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
# WebSocket close codes for servers without the handshake denial extension.
_POLICY_VIOLATION = 1008
_TRY_AGAIN_LATER = 1013


def _address(scope: Scope) -> str | None:
    client = scope.get("client")
    return client_address(client[0] if client else None)


def _from_this_machine(scope: Scope) -> bool:
    client = scope.get("client")
    try:
        peer = ipaddress.ip_address(client[0]) if client else None
    except ValueError:
        return False  # a name, not an address: nothing says where it is
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    if peer is None or not peer.is_loopback:
        return False
    headers = Headers(scope=scope)
    return not any(name in headers for name in _FORWARDING_HEADERS)


_READS = frozenset(["/api/watches", "/api/categories", "/api/me/export", PREFERENCES_PATH])


def _action(scope: Scope) -> Action | None:
    """The limited action a request is: the routes of app.py that do work for a session."""
    if scope["type"] == "websocket":
        return Action.SOCKET
    path, method = route_path(scope), scope["method"]
    if path.startswith((ADMIN_PREFIX, ADMIN_PAGE_API_PREFIX)):
        return Action.ADMIN  # no session: counted per address (attempts with a wrong token too)
    if path == "/api/search":
        return Action.SEARCH
    if (path in _READS and method == "GET") or (
        path in (VISITS_PATH, REALTIME_TOKEN_PATH) and method == "POST"
    ):
        return Action.READ  # each asks Elasticsearch, or gives a credential
    if (
        (path == "/api/watches" and method == "POST")
        or (path.startswith("/api/watches/") and method in ("DELETE", "PATCH"))
        or (path == "/api/me/merge" and method == "POST")
        or (path == PREFERENCES_PATH and method == "PUT")
        # Whoever holds the link, session or none (counted per address then).
        or (path.startswith(UNSUBSCRIBE_PREFIX) and method == "POST")
    ):
        return Action.WATCH_CHANGE  # what a user is told of, and how, changes
    return None


class Admission:
    """The limits of one app: rate limits, and the open sockets of each user for the cap."""

    def __init__(
        self,
        limits: RateLimits,
        *,
        max_sockets_per_user: int,
        metrics_token: str | None = None,
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._limits = limits
        self._max_sockets = max_sockets_per_user
        self._metrics_token = None if metrics_token is None else metrics_token.encode()
        # Counted here rather than in the hub: a socket holds its place from the handshake
        # on, so parallel handshakes cannot all slip under the cap before any is registered.
        self._sockets: dict[str, int] = {}
        self._on_refused = on_refused

    async def may_start_session(self, scope: Scope) -> bool:
        """The session middleware asks before issuing a new session to a request without one."""
        wait = await self._limits.admit(Action.NEW_SESSION, session=None, address=_address(scope))
        if wait is None:
            return True
        scope[_SESSION_REFUSED_KEY] = wait
        self._on_refused(Action.NEW_SESSION)
        return False

    async def refusal(self, scope: Scope) -> tuple[float, str] | None:
        """Why a request or handshake may not proceed (seconds to wait, what it is), if so."""
        wait = scope.get(_SESSION_REFUSED_KEY)
        if wait is not None:
            return wait, "too many new sessions from your address"
        action = _action(scope)
        if action is None:
            return None
        user = current_user(HTTPConnection(scope))
        wait = await self._limits.admit(action, session=user, address=_address(scope))
        if wait is None:
            return None
        self._on_refused(action)
        return wait, f"too many {_WHAT[action]}"

    async def monitoring_refusal(self, scope: Scope) -> Response | None:
        """The answer to a request for /metrics or /readyz that may not have it, if so."""
        if self._metrics_token is None:
            if _from_this_machine(scope):
                return None
        elif bearer_matches(Headers(scope=scope), self._metrics_token):
            return None
        wait = await self._limits.admit(
            Action.MONITORING_REFUSED, session=None, address=_address(scope)
        )
        if wait is not None:
            self._on_refused(Action.MONITORING_REFUSED)
            seconds = retry_after(wait)
            message = f"too many {_WHAT[Action.MONITORING_REFUSED]}: try again in {seconds} s"
            return error_response(429, "rate_limited", message, {"Retry-After": seconds})
        return error_response(
            401,
            "unauthorized",
            "/metrics and /readyz need `Authorization: Bearer <PERCOLERT_METRICS_TOKEN>` "
            "(with none set, they answer only this machine)",
            {"WWW-Authenticate": "Bearer"},
        )

    async def account_socket_refusal(self, user: str) -> tuple[float, str] | None:
        """Why a socket that has just shown an account's token may not go on (seconds to
        wait, what it is), if so: its handshake was counted per address and per its cookie,
        before anyone knew whose it was; the account's own limit is counted here."""
        wait = await self._limits.admit(Action.SOCKET, session=user, address=None)
        if wait is None:
            return None
        self._on_refused(Action.SOCKET)
        return wait, f"too many {_WHAT[Action.SOCKET]} for this account"

    async def open_socket(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        user = current_user(HTTPConnection(scope))
        if user is None:  # refused by the socket endpoint itself
            await app(scope, receive, send)
            return
        open_now = self._sockets.get(user, 0)
        if open_now >= self._max_sockets:
            self._on_refused("open_sockets")
            message = (
                f"too many open connections for this session: at most {self._max_sockets}; "
                "close another tab"
            )
            await _deny_handshake(scope, receive, send, 429, "too_many_sockets", message, {})
            return
        self._sockets[user] = open_now + 1

        def release() -> None:
            left = self._sockets[user] - 1
            if left:
                self._sockets[user] = left
            else:
                del self._sockets[user]

        try:
            await app(scope, receive, send)
        finally:
            # A socket whose endpoint detached its live part stays open after the call.
            if not release_later(scope, release):
                release()


_WHAT = {
    Action.SEARCH: "searches",
    Action.READ: "requests",
    Action.WATCH_CHANGE: "watch changes",
    Action.NEW_SESSION: "new sessions",
    Action.SOCKET: "new connections",
    Action.ADMIN: "admin requests from your address",
    Action.MONITORING_REFUSED: "refused requests for /metrics and /readyz from your address",
}


async def _refuse(scope: Scope, receive: Receive, send: Send, wait: float, what: str) -> None:
    seconds = retry_after(wait)
    message = f"{what}: try again in {seconds} s"
    headers = {"Retry-After": seconds}
    if scope["type"] == "websocket":
        await _deny_handshake(scope, receive, send, 429, "rate_limited", message, headers)
        return
    await error_response(429, "rate_limited", message, headers)(scope, receive, send)


async def _deny_handshake(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str],
) -> None:
    """An HTTP answer instead of the upgrade, where the server can send one; otherwise a close
    before accepting (the client sees a refused handshake either way)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await error_response(status, code, message, headers)(scope, receive, send)
        return
    close_code = _TRY_AGAIN_LATER if code == "rate_limited" else _POLICY_VIOLATION
    await send({"type": "websocket.close", "code": close_code, "reason": message})


class AdmissionMiddleware:
    """Answers what is over a limit (inside the session middleware: it needs the user)."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and route_path(scope) in MONITORING_PATHS:
            denied = await self.admission.monitoring_refusal(scope)
            await (self.app if denied is None else denied)(scope, receive, send)
            return
        refused = await self.admission.refusal(scope)
        if refused is not None:
            await _refuse(scope, receive, send, *refused)
        elif scope["type"] == "websocket":
            await self.admission.open_socket(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)
