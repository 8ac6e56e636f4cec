"""The admin HTTP API: single products put and deleted by the shop's back office, authorised
by a bearer token (`PERCOLERT_ADMIN_TOKEN`), never by a session cookie. A product put goes
through change detection and a run of product matching, as a line of `percolert ingest` does.
A product's watchers (shoppers with a product watch on it) are counted for the shop.
An account is erased, everything of it, at the shop's request (accounts/erasure.py).

Every request under `/api/admin/` is authorised first, whatever its method and path, and
whether a token is configured or not (then none is right): without the token the answer is
always the same 401, so that nobody without it learns which routes there are, or whether the
API is on at all.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import Receive, Scope, Send

from percolert.accounts.erasure import account_of
from percolert.core.messages import ErasureReport, ProductChange, Sku
from percolert.core.settings import Settings
from percolert.engine import indices
from percolert.products import catalog
from percolert.products.catalog import Product
from percolert.products.changes import ChangeDetection, ProductNotStored
from percolert.web.errors import ApiError, decode_json
from percolert.web.paths import ACCOUNTS_PREFIX
from percolert.web.responses import json_response, never_stored
from percolert.web.state import state_of

logger = logging.getLogger(__name__)

# Where the admin routes live: the edge (sessions, rate limits, body bound) knows them by it.
PREFIX = "/api/admin/"
# A product's JSON may be far larger than the other bodies of the API (its description).
MAX_BODY_BYTES = 64 * 1024


class ProductUpdate(msgspec.Struct, frozen=True):
    """The answer to a product put or deleted: the changes it made (none, or one of `new`,
    `price_drop`, `back_in_stock`; a deletion makes none) and the product alerts they made."""

    sku: str
    events: list[ProductChange]
    alerts: int


class ProductWatchers(msgspec.Struct, frozen=True):
    """How many shoppers watch the product `sku` (a product watch each)."""

    sku: str
    watchers: int


def bearer_token(headers: Headers) -> str | None:
    """The token of `Authorization: Bearer <token>` ("" when none follows the scheme); None
    without the header or with another scheme (a proxy's `Basic`, say: not ours to judge)."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def bearer_matches(headers: Headers, token: bytes) -> bool:
    """Whether the request says `Authorization: Bearer <token>`."""
    given = bearer_token(headers)
    return given is not None and bearer_matches_token(given, token)


def bearer_matches_token(given: str, token: bytes) -> bool:
    # Compared in constant time, as bytes: how much of a guess was right must not show.
    return hmac.compare_digest(given.encode(), token)


class _Authorised:
    """The admin routes behind their token: nothing of them shows to a request without it."""

    def __init__(self, token: str | None, routes: list[BaseRoute]) -> None:
        self._token = None if token is None else token.encode()
        self._routes = Router(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._token is None or not bearer_matches(Headers(scope=scope), self._token):
            raise ApiError(
                401,
                "unauthorized",
                "the admin API needs `Authorization: Bearer <PERCOLERT_ADMIN_TOKEN>`",
                {"WWW-Authenticate": "Bearer"},
            )
        await self._routes(scope, receive, never_stored(send))


def _product(body: bytes, sku: str) -> Product:
    """The body as a product with the path's sku; the same messages as `percolert ingest`."""
    fields = decode_json(body, dict[str, Any], code="invalid_product", what="product")
    if fields.setdefault("sku", sku) != sku:
        raise ApiError(
            400, "sku_mismatch", f"the body's sku {fields['sku']!r} is not the path's {sku!r}"
        )
    try:
        return msgspec.convert(fields, Product)
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_product", f"invalid product: {error}") from None


async def put_product(request: Request) -> Response:
    state = state_of(request)
    settings = state["settings"]
    product = _product(await request.body(), request.path_params["sku"])
    alias = indices.alias_for(settings, "products")
    client = state["client"]
    async with state["product_alerting"].run() as run:
        try:
            change = await ChangeDetection(client, alias, run).put(product)
        except ProductNotStored as error:
            if error.conflict:
                raise ApiError(409, "conflict", f"product {product.sku} {error}") from None
            # The reason may name the cluster: for the log, not for whoever asks.
            logger.error("product %s not stored: %s", product.sku, error)
            raise ApiError(502, "elasticsearch_error", "the product was not stored") from None
    if run.alerts:
        # Sockets on this instance get them now rather than at the next poll; the other
        # instances find them at theirs.
        state["product_feed"].wake()
    await client.indices.refresh(index=alias)
    events: list[ProductChange] = [] if change is None else [change.change]
    return json_response(ProductUpdate(sku=product.sku, events=events, alerts=run.alerts))


def _path_sku(request: Request) -> str:
    sku: str = request.path_params["sku"]
    try:
        msgspec.convert(sku, Sku)  # checked before it reaches Elasticsearch's URL
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_sku", f"invalid sku {sku!r}: {error}") from None
    return sku


async def delete_product(request: Request) -> Response:
    state = state_of(request)
    settings = state["settings"]
    sku = _path_sku(request)
    alias = indices.alias_for(settings, "products")
    if not await catalog.remove_product(state["client"], alias, sku):
        raise ApiError(404, "product_not_found", f"no product with sku {sku!r}")
    return json_response(ProductUpdate(sku=sku, events=[], alerts=0))


async def erase_account(request: Request) -> Response:
    """Everything of the shop's customer (the path's id, a token's `sub`) erased."""
    state = state_of(request)
    customer_id = request.path_params["customer_id"]
    erased = await state["erasure"].erase(account_of(customer_id), customer_id)
    return json_response(ErasureReport(erased=erased))


async def product_watchers(request: Request) -> Response:
    """Counted whether the product is in the catalog or not: its watches outlive it (a
    product deleted is demand the shop may want to know of), so an unknown sku is 0."""
    sku = _path_sku(request)
    watchers = await state_of(request)["watches"].watchers_of(sku)
    return json_response(ProductWatchers(sku=sku, watchers=watchers))


def routes(settings: Settings, more: Sequence[BaseRoute] = ()) -> list[Route]:
    """Everything under PREFIX, authorised by the admin token (none is right without one):
    these routes and `more` (other packages' admin routes)."""
    admin = _Authorised(
        settings.admin_token,
        [
            Route(f"{PREFIX}products/{{sku}}", put_product, methods=["PUT"]),
            Route(f"{PREFIX}products/{{sku}}", delete_product, methods=["DELETE"]),
            Route(f"{PREFIX}products/{{sku}}/watchers", product_watchers, methods=["GET"]),
            # Any customer id a token may carry, slashes included (sent as %2F).
            Route(f"{ACCOUNTS_PREFIX}{{customer_id:path}}", erase_account, methods=["DELETE"]),
            *more,
        ],
    )
    # Any method: which ones a route takes is for the token's holders to learn.
    return [Route(f"{PREFIX}{{path:path}}", admin, name="admin")]
