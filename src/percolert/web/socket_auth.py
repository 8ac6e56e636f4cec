"""A socket that authenticates with the shop's token: by its first message, then by fresh
tokens for as long as it stays open.

Browsers cannot set headers on a WebSocket handshake, and a token in the URL lands in access
logs and browser history. So a page opens `/ws?auth=token` and sends `{"type": "auth",
"token": ...}` first, within `socket_auth_timeout_seconds`; until then nothing is sent to it.
Ahead of the token's expiry the server sends `token_expiring`; the page answers with another
`auth` for the same account, or the socket closes when the token expires.

Close codes (private use, 4000-4999, in the HTTP status's spirit):
- 4401: the token is invalid or has expired (or this server takes no tokens); get a fresh
  token from the shop, then reconnect.
- 4403: a fresh token names another account than the socket's; terminal for that socket.
- 4408: no `auth` message in time; reconnect.
- 1013: the shop's keys cannot be read right now (the token may be fine); reconnect later.
"""

from __future__ import annotations

import asyncio
import time

import anyio
import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from percolert.accounts.tokens import Account, KeysUnavailable, TokenRejected, Tokens
from percolert.core.jsondepth import TooDeep, check_depth
from percolert.core.messages import Auth, TokenExpiring
from percolert.core.times import iso_from_seconds
from percolert.realtime.hub import Connection
from percolert.service.services import encode_message

TOKEN_INVALID = 4401
OTHER_ACCOUNT = 4403
AUTH_TIMEOUT = 4408
# The shop's keys cannot be read now: the token may be fine; reconnect later (RFC 6455's
# "try again later", as for a slow client).
KEYS_UNAVAILABLE = 1013


# A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455 §5.5).
_MAX_REASON_BYTES = 123


def fitted(reason: str) -> str:
    """`reason` cut to what a close frame holds, never inside a character."""
    return reason.encode()[:_MAX_REASON_BYTES].decode("utf-8", "ignore")


class SocketAuthFailed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = fitted(reason)


def wants_token(websocket: WebSocket) -> bool:
    """Whether the socket said it authenticates with a token (`?auth=token`)."""
    return websocket.query_params.get("auth") == "token"


async def first_token(websocket: WebSocket, tokens: Tokens | None, seconds: float) -> Account:
    """The account of the socket's first message, which must be `auth` with a valid token;
    SocketAuthFailed otherwise (WebSocketDisconnect if the client left)."""
    if tokens is None:
        raise SocketAuthFailed(TOKEN_INVALID, "this server takes no shop tokens")
    # Only the wait is timed: checking the token may read the shop's keys, which is ours.
    message = None
    with anyio.move_on_after(seconds):
        message = await websocket.receive()
    if message is None:
        raise SocketAuthFailed(AUTH_TIMEOUT, f"send an auth message within {seconds:g} s")
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    auth = _auth_message(message.get("text"))
    try:
        return await tokens.verify(auth.token)
    except KeysUnavailable:
        # Which URL failed is for the log (tokens.py), not for whoever connects.
        raise SocketAuthFailed(
            KEYS_UNAVAILABLE, "the shop's signing keys cannot be read right now"
        ) from None
    except TokenRejected as problem:
        raise SocketAuthFailed(TOKEN_INVALID, str(problem)) from None


def _auth_message(text: str | None) -> Auth:
    if text is None:
        raise SocketAuthFailed(TOKEN_INVALID, "the first message must be auth, as JSON text")
    try:
        check_depth(text.encode())
        return msgspec.json.decode(text, type=Auth)
    except (msgspec.DecodeError, TooDeep):
        raise SocketAuthFailed(
            TOKEN_INVALID, 'the first message must be {"type": "auth", "token": ...}'
        ) from None


class TokenClock:
    """The token of an open socket: asks for a fresh one ahead of its expiry and ends the
    socket when it expires without one. Timers on the event loop, not a task per socket."""

    def __init__(
        self, connection: Connection, tokens: Tokens, account: Account, ahead_seconds: float
    ) -> None:
        self._connection = connection
        self._tokens = tokens
        self._user = account.user
        self._ahead = ahead_seconds
        self._timers: list[asyncio.TimerHandle] = []
        self._set(account.expires_at)

    def _set(self, expires_at: float) -> None:
        self.stop()
        loop = asyncio.get_running_loop()
        left = expires_at - time.time()
        # Ahead by the configured time, or halfway through a short token's remaining life.
        warn_in = max(0.0, left - min(self._ahead, left / 2))
        payload = encode_message(TokenExpiring(expires_at=iso_from_seconds(expires_at)))
        self._timers = [
            loop.call_later(warn_in, self._connection.offer, payload),
            loop.call_later(max(0.0, left), self._end, TOKEN_INVALID, "the token has expired"),
        ]

    def _end(self, code: int, reason: str) -> None:
        """End the socket: nothing more for a client whose token no longer counts, not even
        what is queued (a reconnect with a fresh token replays it)."""
        self.stop()
        self._connection.end(code, fitted(reason))

    async def renew(self, token: str) -> None:
        """A fresh token from the client: the same account's, or the socket ends."""
        try:
            account = await self._tokens.verify(token)
        except KeysUnavailable:
            # Maybe fine: the current token holds until it expires (then 4401, and the page
            # reconnects with a fresh one).
            return
        except TokenRejected as problem:
            self._end(TOKEN_INVALID, str(problem))
            return
        if account.user != self._user:
            self._end(OTHER_ACCOUNT, "the token is another account's")
            return
        if self._connection.ended is None:
            self._set(account.expires_at)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []
