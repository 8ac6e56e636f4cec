"""CORS for the shop's storefronts: the shopper API (`/api/...`) and the SDK's modules
(`/static/sdk/`: a module script from another origin loads only with CORS), and only for the
origins the deployment allows (`PERCOLERT_ALLOWED_ORIGINS`). Starlette's CORSMiddleware
answers the preflights and adds the headers.

Credentials (the session cookie) are allowed: an anonymous shopper on a storefront of the
same site (shop.example and percolert.shop.example) is known by it, and an account's token
comes in a header the preflight allows. The admin API and monitoring get no CORS at all: a
browser page never calls them. Everyone else's page is still refused by the browser (no
CORS headers for it) and by the browser guard (its writes).
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from percolert.web.admin_api import PREFIX as ADMIN_PREFIX
from percolert.web.paths import API_PREFIX, SDK_PREFIX, route_path

# How long a browser may keep a preflight's answer.
_PREFLIGHT_MAX_AGE_SECONDS = 600


class StorefrontCorsMiddleware:
    def __init__(self, app: ASGIApp, *, allowed_origins: Collection[str]) -> None:
        self.app = app
        self.cors = (
            CORSMiddleware(
                app,
                allow_origins=list(allowed_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
                allow_credentials=True,
                # What the SDK reads of an answer besides its body.
                expose_headers=["Retry-After", "WWW-Authenticate"],
                max_age=_PREFLIGHT_MAX_AGE_SECONDS,
            )
            if allowed_origins
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cors is not None and scope["type"] == "http":
            path = route_path(scope)
            if (
                path.startswith(API_PREFIX) and not path.startswith(ADMIN_PREFIX)
            ) or path.startswith(SDK_PREFIX):
                await self.cors(scope, receive, send)
                return
        await self.app(scope, receive, send)
