"""The demand view's endpoints. For the admin, behind the admin token (`/api/admin/insights`,
`/api/admin/default-watches`) and behind the admin page's cookie (`/admin/api/...`, see
admin_page.py): the same handlers. For shoppers' pages, one: `POST /api/alerts/visits`, the
SDK saying an alert was followed to the shop (counted per watch, never per shopper).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from percolert.insights.view import DEFAULT_SINCE, InvalidWindow, window_seconds
from percolert.web.errors import ApiError, decode_json
from percolert.web.middleware.sessions import current_user
from percolert.web.paths import VISITS_PATH
from percolert.web.responses import json_response
from percolert.web.state import state_of


class Promotion(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A search text or a watched term to make a default watch of."""

    text: str


class Visit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An alert of the watch `watch_id` was followed to the shop; `alert_id` names the alert
    (each counts once per shopper; without it, the watch does)."""

    watch_id: Annotated[str, msgspec.Meta(max_length=64)]
    alert_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None


async def insights(request: Request) -> Response:
    try:
        since = window_seconds(request.query_params.get("since", DEFAULT_SINCE))
    except InvalidWindow as error:
        raise ApiError(400, "invalid_since", str(error)) from None
    return json_response(await state_of(request)["demand"].insights(since))


async def live(request: Request) -> Response:
    return json_response(await state_of(request)["demand"].live())


async def promote(request: Request) -> Response:
    body = decode_json(
        await request.body(),
        Promotion,
        code="invalid_promotion",
        what="promotion",
        hint='send {"text": "<a search or a watched term>"}',
    )
    watch = await state_of(request)["demand"].promote(body.text)
    return json_response(watch, status=201)


async def retire(request: Request) -> Response:
    await state_of(request)["demand"].retire(request.path_params["watch_id"])
    return Response(status_code=204)


async def visit(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        raise ApiError(401, "no_session", "no session")
    body = decode_json(
        await request.body(), Visit, code="invalid_visit", what="visit", hint='send {"watch_id"}'
    )
    state = state_of(request)
    # Only a watch the caller hears from (their own, or a default watch) counts: nobody can
    # raise another shopper's watch's visits.
    watch = next(
        (watch for watch in await state["watches"].visible_to(user) if watch.id == body.watch_id),
        None,
    )
    if watch is None:
        raise ApiError(404, "watch_not_found", "no such watch of yours")
    if state["visits_seen"].first(user, watch.id, body.alert_id):
        state["activity"].visited(watch, default=watch.is_default)
    return Response(status_code=204)


def admin_routes(prefix: str) -> list[Route]:
    """The view's routes under `prefix` (the admin API's, or the admin page's)."""
    return [
        Route(f"{prefix}insights", insights, methods=["GET"]),
        Route(f"{prefix}live", live, methods=["GET"]),
        Route(f"{prefix}default-watches", promote, methods=["POST"]),
        Route(f"{prefix}default-watches/{{watch_id}}", retire, methods=["DELETE"]),
    ]


def routes() -> list[Route]:
    return [Route(VISITS_PATH, visit, methods=["POST"])]
