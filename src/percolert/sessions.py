"""Who a browser is: a random user id in a signed, HttpOnly cookie, issued by the server.

The id is never taken from a parameter. A missing, forged or tampered cookie is no session:
an HTTP request then gets a fresh one, a WebSocket handshake is refused.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, TimestampSigner
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from percolert.settings import Settings

logger = logging.getLogger("percolert.sessions")

COOKIE_NAME = "percolert_session"
_MAX_AGE_SECONDS = 400 * 24 * 3600  # the longest browsers keep a cookie
_SCOPE_KEY = "percolert.user"


def load_secret(settings: Settings) -> str:
    """PERCOLERT_SECRET, or (development) a random secret kept in the state directory."""
    if settings.secret:
        return settings.secret
    path = settings.state_dir / "secret"
    if not path.exists():
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as secret_file:
            secret_file.write(secrets.token_urlsafe(32))
    logger.warning(
        "PERCOLERT_SECRET is not set: using the development secret in %s; set it in production",
        path,
    )
    return Path(path).read_text().strip()


class SessionSigner:
    def __init__(self, secret: str) -> None:
        self._signer = TimestampSigner(secret, salt="percolert.session")

    def issue(self) -> tuple[str, str]:
        """A new user id and its cookie value."""
        user = secrets.token_urlsafe(16)
        return user, self._signer.sign(user).decode()

    def verify(self, token: str) -> str | None:
        try:
            return self._signer.unsign(token, max_age=_MAX_AGE_SECONDS).decode()
        except (BadSignature, UnicodeDecodeError):
            return None


def current_user(connection: HTTPConnection) -> str | None:
    """The user id the session middleware established for this request or socket."""
    user = connection.scope.get(_SCOPE_KEY)
    return user if isinstance(user, str) else None


class SessionMiddleware:
    """Puts the verified user id in the scope; gives HTTP requests without one a new cookie."""

    def __init__(self, app: ASGIApp, signer: SessionSigner, *, secure: bool) -> None:
        self.app = app
        self.signer = signer
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = HTTPConnection(scope).cookies.get(COOKIE_NAME)
        user = self.signer.verify(token) if token else None
        new_cookie: str | None = None
        if user is None and scope["type"] == "http":
            user, new_cookie = self.signer.issue()
        scope[_SCOPE_KEY] = user
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
