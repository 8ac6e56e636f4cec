"""A shop's customer on the API: `Authorization: Bearer <JWT>` makes the request the
account's (accounts/tokens.py checks the token).

A request that carries a token is never treated as anonymous: a token that is invalid,
expired, lacks `exp`, or reaches a deployment that takes no tokens is a 401 with
`WWW-Authenticate` (RFC 6750), so that the shop's page learns to fetch a fresh one rather
than act as a stranger. The admin API and the monitoring endpoints have tokens of their
own and are left alone. Inside the session middleware: the cookie's user stays known to the
request (an anonymous session's watches may be moved into the account at login), and the
rate limits after it count per account.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from percolert.accounts.tokens import Account, KeysUnavailable, TokenRejected, Tokens
from percolert.web.admin_api import PREFIX as ADMIN_PREFIX
from percolert.web.admin_api import bearer_token
from percolert.web.errors import error_response
from percolert.web.middleware.sessions import act_as_account
from percolert.web.paths import API_PREFIX, route_path

logger = logging.getLogger(__name__)

_ACCOUNT_KEY = "percolert.account"


def challenge(error: str, description: str) -> dict[str, str]:
    """The `WWW-Authenticate` header of a refused token (RFC 6750 §3): its
    `error_description` holds only the characters RFC 6750 allows (printable ASCII but `"`
    and `\\`), anything else becomes `?`."""
    quoted = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in description)
    return {
        "WWW-Authenticate": f'Bearer realm="percolert", error="{error}", '
        f'error_description="{quoted}"'
    }


class BearerMiddleware:
    def __init__(self, app: ASGIApp, *, tokens: Tokens | None) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # Sockets cannot send headers from a browser: they authenticate by a first
            # message (alert_socket.py).
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        token = bearer_token(Headers(scope=scope))
        if token is None or not path.startswith(API_PREFIX) or path.startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        if self.tokens is None:
            message = "this server takes no shop tokens: send no Authorization header"
            refused = error_response(
                401, "invalid_token", message, challenge("invalid_token", message)
            )
            await refused(scope, receive, send)
            return
        if not token:
            message = "send the shop's token as `Authorization: Bearer <token>`"
            refused = error_response(
                401, "invalid_request", message, challenge("invalid_request", message)
            )
            await refused(scope, receive, send)
            return
        try:
            account = await self.tokens.verify(token)
        except KeysUnavailable as problem:
            logger.warning("a token could not be checked: %s", problem)
            unavailable = error_response(
                503,
                "keys_unavailable",
                "the shop's signing keys cannot be read right now; try again shortly",
            )
            await unavailable(scope, receive, send)
            return
        except TokenRejected as problem:
            refused = error_response(
                401, "invalid_token", str(problem), challenge("invalid_token", str(problem))
            )
            await refused(scope, receive, send)
            return
        act_as_account(scope, account.user)
        scope[_ACCOUNT_KEY] = account
        await self.app(scope, receive, send)


def account_of(scope: Scope) -> Account | None:
    """The verified token's account, on a request that carried one."""
    account = scope.get(_ACCOUNT_KEY)
    return account if isinstance(account, Account) else None
