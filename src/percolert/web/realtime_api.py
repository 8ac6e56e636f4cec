"""`POST /api/realtime/token`: with alerts delivered through Centrifugo
(`PERCOLERT_DELIVERY=centrifugo`), the caller's connection token for Centrifugo's client.
Its `sub` is the user the session cookie or the shop's token says the caller is, so the
socket Centrifugo opens hears that user's personal channel only."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from percolert.accounts.ids import is_account
from percolert.core.messages import RealtimeToken
from percolert.core.times import iso_from_seconds
from percolert.realtime.centrifugo import connection_token
from percolert.web.errors import ApiError
from percolert.web.middleware.sessions import current_user, session_started
from percolert.web.paths import REALTIME_TOKEN_PATH
from percolert.web.responses import json_response
from percolert.web.state import state_of


async def token(request: Request) -> Response:
    state = state_of(request)
    settings, delivery = state["settings"], state["centrifugo"]
    secret = settings.centrifugo_token_secret
    if delivery is None:
        raise ApiError(
            404,
            "not_found",
            "alerts are not delivered through Centrifugo here: open the socket at /ws",
        )
    if secret is None:
        raise ApiError(
            404,
            "not_found",
            "this server gives no Centrifugo tokens (PERCOLERT_CENTRIFUGO_TOKEN_SECRET is unset)",
        )
    user = current_user(request)
    if user is None:  # the session middleware gives every API request one
        raise ApiError(401, "no_session", "no session")
    now = time.time()
    made, expires = connection_token(secret, user, settings.centrifugo_token_seconds, now)
    # What the socket may hear of, as on /ws: a session from its start; an account (its
    # history is its own, across devices) everything while connected.
    delivery.session_began(user, 0.0 if is_account(user) else session_started(request))
    response = json_response(RealtimeToken(token=made, expires_at=iso_from_seconds(expires)))
    response.headers["Cache-Control"] = "no-store"  # a credential
    return response


def routes() -> list[Route]:
    return [Route(REALTIME_TOKEN_PATH, token, methods=["POST"])]
