"""E-mail's unsubscribe links (`/unsubscribe/{token}`). A POST turns off what the token
names without a login: RFC 8058's one-click (`List-Unsubscribe=One-Click`, sent by the
mail provider) or the button of the page a GET shows. A GET changes nothing: mail scanners
follow links, and an unsubscribe they clicked would take the shopper's alerts away.

The token is the authority (signed, naming a watch or an account's random key), so these
writes need neither a session nor the shop's origin (browser_guard.py lets them through).
"""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from percolert.offsite.unsubscribe import BadUnsubscribeToken, UnsubscribeTarget
from percolert.web.paths import UNSUBSCRIBE_PREFIX
from percolert.web.state import state_of


def _page(title: str, body: str, status: int = 200) -> Response:
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{title}</title></head><body><main><h1>{title}</h1>{body}</main></body></html>"
    )
    # No cache keeps the page of someone's link; no referrer carries its token elsewhere.
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(page, status_code=status, headers=headers)


def _target(request: Request) -> UnsubscribeTarget | None:
    try:
        return state_of(request)["offsite"].tokens.read(request.path_params["token"])
    except BadUnsubscribeToken:
        return None


def _what(target: UnsubscribeTarget, shop: str) -> str:
    if target.kind == "watch":
        return "e-mail about this watch"
    return f"all e-mail from {html.escape(shop)}'s alerts"


_BROKEN = (
    "<p>This link is not one we sent, or it was cut short. Copy the whole link from the e-mail.</p>"
)


async def confirm(request: Request) -> Response:
    target = _target(request)
    if target is None:
        return _page("Unsubscribe", _BROKEN, 404)
    shop = state_of(request)["settings"].offsite.shop_name
    return _page(
        "Unsubscribe",
        f"<p>Stop {_what(target, shop)}?</p>"
        # The form posts to this very URL, token included; nothing else is sent.
        "<form method=post><input type=hidden name=List-Unsubscribe value=One-Click>"
        "<button type=submit>Unsubscribe</button></form>",
    )


async def unsubscribe(request: Request) -> Response:
    target = _target(request)
    if target is None:
        return _page("Unsubscribe", _BROKEN, 404)
    state = state_of(request)
    done = await state["offsite"].unsubscribe(target)
    what = _what(target, state["settings"].offsite.shop_name)
    if not done:
        # Removed since (a watch, an erased account): nothing will be sent anyway.
        return _page("Unsubscribed", f"<p>You will get no more {what}.</p>")
    return _page("Unsubscribed", f"<p>Done: you will get no more {what}.</p>")


def routes() -> list[Route]:
    return [
        Route(f"{UNSUBSCRIBE_PREFIX}{{token}}", confirm, methods=["GET"]),
        Route(f"{UNSUBSCRIBE_PREFIX}{{token}}", unsubscribe, methods=["POST"]),
    ]
