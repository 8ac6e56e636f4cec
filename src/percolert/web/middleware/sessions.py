"""Who a browser is: a random user id in a signed, HttpOnly cookie, issued by the server.

The id is never taken from a parameter. A missing, forged or tampered cookie is no session:
a request to the API (`/api/...`, the admin API aside) then gets a fresh one, unless its
address has started too many lately; nothing else starts one. The page, its files and the
probes are served without a session, so that no limit on new sessions can keep a page from
loading; the page asks for one (`POST /api/session`) before its first API call and before
its socket, whose handshake is refused without one (a browser may drop a cookie set on it).
A request a browser says comes from another site starts none either: another site's page
must not spend the new sessions of its visitors' addresses (`<img src=".../api/...">`).

The signed value also says when the session began (epoch milliseconds): a session never
hears of searches made before it existed, and only the server can say when that was.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable

from itsdangerous import BadSignature, TimestampSigner
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from percolert.core.settings import Settings
from percolert.core.state_dir import kept_secret
from percolert.web.admin_api import PREFIX as ADMIN_PREFIX
from percolert.web.paths import API_PREFIX, route_path

logger = logging.getLogger(__name__)

COOKIE_NAME = "percolert_session"
_MAX_AGE_SECONDS = 400 * 24 * 3600  # the longest browsers keep a cookie
_SCOPE_KEY = "percolert.user"
_STARTED_KEY = "percolert.session_started"
# With a shop's token: the request's user is the account; the cookie's user stays here.
_ANONYMOUS_KEY = "percolert.anonymous_user"


def load_secret(settings: Settings) -> str:
    """PERCOLERT_SECRET, or (development) a random secret kept in the state directory."""
    if settings.secret:
        return settings.secret
    logger.warning(
        "PERCOLERT_SECRET is not set: using the development secret in %s; set it in production",
        settings.state_dir / "secret",
    )
    return kept_secret(settings.state_dir, "secret")


class SessionSigner:
    def __init__(self, secret: str) -> None:
        self._signer = TimestampSigner(secret, salt="percolert.session")

    def issue(self, now: float | None = None) -> tuple[str, str]:
        """A new user id and its cookie value, which says when the session began."""
        user = secrets.token_urlsafe(16)
        # Rounded up: the session counts as begun no earlier than it did.
        started_ms = math.ceil((time.time() if now is None else now) * 1000)
        return user, self._signer.sign(f"{user}.{started_ms}").decode()

    def verify(self, token: str) -> tuple[str, float] | None:
        """The user id and when its session began (epoch seconds, whole milliseconds), if
        genuine."""
        try:
            value, signed_at = self._signer.unsign(
                token, max_age=_MAX_AGE_SECONDS, return_timestamp=True
            )
            user, _, started_ms = value.decode().partition(".")
        except (BadSignature, UnicodeDecodeError):
            return None
        if not started_ms:
            # Compatibility shim, removed in 0.2.0: a cookie from before sessions carried
            # their start. Only the signing time, in whole seconds, is known; the session
            # began before the end of that second.
            return user, signed_at.timestamp() + 1
        if not started_ms.isascii() or not started_ms.isdigit():
            return None
        return user, int(started_ms) / 1000


def current_user(connection: HTTPConnection) -> str | None:
    """The user id the session middleware established for this request or socket."""
    user = connection.scope.get(_SCOPE_KEY)
    return user if isinstance(user, str) else None


def session_started(connection: HTTPConnection) -> float:
    """When the current session began (epoch seconds); without a session, now."""
    return float(connection.scope.get(_STARTED_KEY, time.time()))


def anonymous_user(connection: HTTPConnection) -> str | None:
    """The cookie's user of a request made as an account (the session it may move watches
    from at login); None without a cookie or without an account."""
    user = connection.scope.get(_ANONYMOUS_KEY)
    return user if isinstance(user, str) else None


def act_as_account(scope: Scope, user: str) -> None:
    """The request is the account `user`'s (a shop's verified token said so), whatever its
    cookie says. An account hears of what its watches matched whenever that was: its history
    is its own, across devices, so its session counts as begun at the epoch."""
    scope[_ANONYMOUS_KEY] = scope.get(_SCOPE_KEY)
    scope[_SCOPE_KEY] = user
    scope[_STARTED_KEY] = 0.0


# Asked before a new session is issued; False: the request goes on without one.
SessionGate = Callable[[Scope], Awaitable[bool]]


def _may_begin_here(scope: Scope) -> bool:
    """Whether a request without a session is one that is given a new session."""
    if scope["type"] != "http":
        return False  # a handshake: see the module's docstring
    path = route_path(scope)
    if not path.startswith(API_PREFIX) or path.startswith(ADMIN_PREFIX):
        return False  # the admin API is authorised by its token, never by a cookie
    headers = HTTPConnection(scope).headers
    if "authorization" in headers:
        return False  # a shop's token says who this is (middleware/bearer.py)
    return headers.get("sec-fetch-site", "").lower() != "cross-site"


async def _always(scope: Scope) -> bool:
    return True


class SessionMiddleware:
    """Puts the verified user id in the scope; gives API requests without one a new cookie
    (if `may_start` allows: new sessions are rate-limited per address)."""

    def __init__(
        self,
        app: ASGIApp,
        signer: SessionSigner,
        *,
        secure: bool,
        may_start: SessionGate = _always,
    ) -> None:
        self.app = app
        self.signer = signer
        self.secure = secure
        self.may_start = may_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = HTTPConnection(scope).cookies.get(COOKIE_NAME)
        verified = self.signer.verify(token) if token else None
        user, started = verified if verified else (None, time.time())
        new_cookie: str | None = None
        if user is None and _may_begin_here(scope) and await self.may_start(scope):
            user, new_cookie = self.signer.issue()
        scope[_SCOPE_KEY] = user
        scope[_STARTED_KEY] = started
        if new_cookie is None:
            await self.app(scope, receive, send)
            return
        cookie = (
            f"{COOKIE_NAME}={new_cookie}; Path=/; Max-Age={_MAX_AGE_SECONDS}; HttpOnly; "
            "SameSite=Lax" + ("; Secure" if self.secure else "")
        )

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_cookie)
