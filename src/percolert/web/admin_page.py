"""The admin's demand page, `/admin`: a static page whose API (`/admin/api/...`) is
authorised by a cookie rather than a bearer token, since a browser cannot keep a token a
script may not read.

The admin types the admin token once; the server checks it and answers with a signed cookie
(`HttpOnly`, `SameSite=Strict`, `Path=/admin`, `Secure` where sessions' cookies are), good
for ADMIN_SESSION_SECONDS. The token itself is never stored. Writes are safe from other
sites three times over: a strict cookie is not sent on a cross-site request; the edge
refuses changes from other origins and bodies that are not JSON (browser_guard.py); and every
write must carry `X-CSRF-Token`, which only a page of this origin can read (from `GET
/admin/api/session`), bound to the cookie it came with.

A cookie is signed under the deployment's secret and the admin token: changing the token
(or unsetting it) ends every admin cookie, on every instance, which is how a copied cookie is
revoked. Logging out ends the cookie in the browser and, on the instance that answered, for
good (ADMIN_SESSION_SECONDS later it would have ended anyway). The page's answers are never
cached, and the page is never framed (whatever PERCOLERT_FRAME_ANCESTORS allows the shop's
pages).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec
from itsdangerous import BadSignature, TimestampSigner
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import Receive, Scope, Send

from percolert.core import assets
from percolert.core.settings import Settings
from percolert.web.admin_api import bearer_matches_token
from percolert.web.errors import ApiError, decode_json
from percolert.web.insights_api import admin_routes
from percolert.web.middleware.security_headers import content_security_policy
from percolert.web.paths import ADMIN_PAGE_API_PREFIX, ADMIN_PAGE_PATH
from percolert.web.responses import json_response, never_stored

COOKIE = "percolert_admin"
CSRF_HEADER = "x-csrf-token"
ADMIN_SESSION_SECONDS = 8 * 3600
_UNSAFE_METHODS = frozenset(["POST", "PUT", "PATCH", "DELETE"])


class Login(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: str


class AdminSession(msgspec.Struct, frozen=True):
    """What the page needs to write: the token to send as X-CSRF-Token."""

    csrf: str


# Logged-out cookies remembered (per instance) until they would have ended, at most.
_MAX_REVOKED = 10_000


class AdminCookies:
    """Signs admin cookies and the CSRF tokens bound to them (the deployment's secret and
    the admin token: no token, no cookie is genuine)."""

    def __init__(
        self, secret: str, admin_token: str | None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._signer = (
            None
            if admin_token is None
            else TimestampSigner(
                secret,
                salt="percolert.admin:" + hashlib.sha256(admin_token.encode()).hexdigest(),
            )
        )
        self._csrf_key = hashlib.sha256(f"percolert.admin.csrf:{secret}".encode()).digest()
        self._clock = clock
        self._revoked: OrderedDict[str, float] = OrderedDict()

    def issue(self) -> str:
        if self._signer is None:
            raise RuntimeError("no admin token: no admin cookie")
        return self._signer.sign(secrets.token_urlsafe(16)).decode()

    def verify(self, cookie: str | None) -> str | None:
        """The cookie's random part if it is genuine, young enough and not logged out."""
        if not cookie or self._signer is None:
            return None
        try:
            nonce = self._signer.unsign(cookie, max_age=ADMIN_SESSION_SECONDS).decode()
        except (BadSignature, UnicodeDecodeError):
            return None
        return None if nonce in self._revoked else nonce

    def revoke(self, nonce: str) -> None:
        now = self._clock()
        while self._revoked and (
            len(self._revoked) >= _MAX_REVOKED
            or next(iter(self._revoked.values())) <= now - ADMIN_SESSION_SECONDS
        ):
            self._revoked.popitem(last=False)
        self._revoked[nonce] = now

    def csrf(self, nonce: str) -> str:
        return hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).hexdigest()


def _cookie_header(value: str, *, secure: bool, max_age: float) -> str:
    return (
        f"{COOKIE}={value}; Path={ADMIN_PAGE_PATH}; Max-Age={round(max_age)}; HttpOnly; "
        "SameSite=Strict" + ("; Secure" if secure else "")
    )


class _CookieAuthorised:
    """The page's API behind its cookie (and the CSRF token for writes); 401 otherwise."""

    def __init__(self, cookies: AdminCookies, routes: list[BaseRoute]) -> None:
        self._cookies = cookies
        self._routes = Router(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        nonce = self._cookies.verify(request.cookies.get(COOKIE))
        if nonce is None:
            raise ApiError(401, "unauthorized", "log in with the admin token first")
        if scope["method"] in _UNSAFE_METHODS and not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, "").encode(), self._cookies.csrf(nonce).encode()
        ):
            raise ApiError(403, "csrf", f"a change needs the {CSRF_HEADER} of this session")
        scope.setdefault("state", {})["admin_nonce"] = nonce
        await self._routes(scope, receive, never_stored(send))


def routes(settings: Settings, secret: str) -> list[BaseRoute]:
    cookies = AdminCookies(secret, settings.admin_token)
    token = None if settings.admin_token is None else settings.admin_token.encode()

    async def page(request: Request) -> Response:
        # Its own headers (a route's own value wins over the edge's): never framed.
        return FileResponse(
            assets.asset_dir("web") / "admin" / "index.html",
            headers={
                "content-security-policy": content_security_policy(request.scope),
                "x-frame-options": "DENY",
                "cache-control": "no-store",
            },
        )

    async def session(request: Request) -> Response:
        nonce = cookies.verify(request.cookies.get(COOKIE))
        if nonce is None:
            raise ApiError(401, "unauthorized", "log in with the admin token")
        response = json_response(AdminSession(csrf=cookies.csrf(nonce)))
        response.headers["cache-control"] = "no-store"
        return response

    async def login(request: Request) -> Response:
        body = decode_json(
            await request.body(), Login, code="invalid_login", what="login", hint='send {"token"}'
        )
        if token is None or not bearer_matches_token(body.token, token):
            raise ApiError(401, "unauthorized", "that is not the admin token")
        response = Response(status_code=204)
        response.headers["set-cookie"] = _cookie_header(
            cookies.issue(), secure=settings.secure_cookies, max_age=ADMIN_SESSION_SECONDS
        )
        response.headers["cache-control"] = "no-store"
        return response

    async def logout(request: Request) -> Response:
        cookies.revoke(request.state.admin_nonce)
        response = Response(status_code=204)
        response.headers["set-cookie"] = _cookie_header(
            "", secure=settings.secure_cookies, max_age=0
        )
        return response

    api = _CookieAuthorised(
        cookies,
        [
            Route(f"{ADMIN_PAGE_API_PREFIX}logout", logout, methods=["POST"]),
            *admin_routes(ADMIN_PAGE_API_PREFIX),
        ],
    )
    return [
        Route(ADMIN_PAGE_PATH, page, methods=["GET"]),
        Route(f"{ADMIN_PAGE_API_PREFIX}session", session, methods=["GET"]),
        Route(f"{ADMIN_PAGE_API_PREFIX}session", login, methods=["POST"]),
        Route(f"{ADMIN_PAGE_API_PREFIX}{{path:path}}", api, name="admin_page_api"),
    ]
