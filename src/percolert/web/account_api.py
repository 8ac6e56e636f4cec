"""The caller's own data: `GET /api/me/export`, everything held of them as a download, and
`POST /api/me/merge`, which at login moves an anonymous session's watches into the account
(the account's token and the session's cookie together). The logic is the accounts
package's; this maps it to HTTP."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from percolert.accounts.export import export_data
from percolert.accounts.ids import is_account
from percolert.accounts.merge import merge_watches
from percolert.core.messages import MergeReport
from percolert.web.errors import ApiError
from percolert.web.middleware.sessions import anonymous_user, current_user, session_started
from percolert.web.responses import json_response
from percolert.web.state import state_of

EXPORT_PATH = "/api/me/export"
MERGE_PATH = "/api/me/merge"
EXPORT_FILENAME = "percolert-export.json"


async def export(request: Request) -> Response:
    user = current_user(request)
    if user is None:  # the session middleware gives every API request one
        raise ApiError(401, "no_session", "no session")
    state = state_of(request)
    data = await export_data(
        state["client"],
        state["settings"],
        state["watches"],
        user,
        session_started=session_started(request),
        offsite=state["offsite"],
    )
    response = json_response(data)
    response.headers["Content-Disposition"] = f'attachment; filename="{EXPORT_FILENAME}"'
    # Personal data: no cache on the way keeps a copy.
    response.headers["Cache-Control"] = "no-store"
    return response


def account_user(request: Request, need: str) -> str:
    """The caller's account (a shop's verified token said so); 401 `account_required`
    saying why one is needed (`need`) and how to send it, otherwise."""
    user = current_user(request)
    if user is None or not is_account(user):
        raise ApiError(
            401,
            "account_required",
            f"{need} (`Authorization: Bearer <token>`)",
            {"WWW-Authenticate": 'Bearer realm="percolert"'},
        )
    return user


async def merge(request: Request) -> Response:
    account = account_user(
        request,
        "a merge moves this session's watches into the shop's account: send its token, "
        "with the session's cookie",
    )
    anonymous = anonymous_user(request)
    if anonymous is None:
        return json_response(MergeReport())  # no session to move anything from
    state = state_of(request)
    return json_response(await merge_watches(state["watches"], state["broker"], anonymous, account))


def routes() -> list[Route]:
    return [
        Route(EXPORT_PATH, export, methods=["GET"]),
        Route(MERGE_PATH, merge, methods=["POST"]),
    ]
