"""The admin HTTP API: single products put and deleted by the shop's back office, authorised
by a bearer token (`PERCOLERT_ADMIN_TOKEN`), never by a session cookie. A product put goes
through change detection and a run of product matching, as a line of `percolert ingest` does.

The routes exist only when a token is configured (`routes(settings)` is empty otherwise).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from percolert.core.messages import ProductChange
from percolert.core.settings import Settings
from percolert.engine import indices
from percolert.products import catalog
from percolert.products.catalog import Product, Sku
from percolert.products.changes import ChangeDetection, ProductNotStored
from percolert.web.errors import ApiError
from percolert.web.responses import json_response
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


def _authorise(request: Request, token: bytes) -> None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Compared in constant time, as bytes: how much of a guess was right must not show.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
        raise ApiError(
            401,
            "unauthorized",
            "the admin API needs `Authorization: Bearer <PERCOLERT_ADMIN_TOKEN>`",
            {"WWW-Authenticate": "Bearer"},
        )


def _product(body: bytes, sku: str) -> Product:
    """The body as a product with the path's sku; the same messages as `percolert ingest`."""
    try:
        fields = msgspec.json.decode(body, type=dict[str, Any])
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_product", f"invalid product: {error}") from None
    except msgspec.DecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
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
    assert settings.admin_token is not None  # the route exists only with one
    _authorise(request, settings.admin_token.encode())
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


async def delete_product(request: Request) -> Response:
    state = state_of(request)
    settings = state["settings"]
    assert settings.admin_token is not None
    _authorise(request, settings.admin_token.encode())
    sku = request.path_params["sku"]
    try:
        msgspec.convert(sku, Sku)  # checked before it reaches Elasticsearch's URL
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_sku", f"invalid sku {sku!r}: {error}") from None
    alias = indices.alias_for(settings, "products")
    if not await catalog.remove_product(state["client"], alias, sku):
        raise ApiError(404, "product_not_found", f"no product with sku {sku!r}")
    return json_response(ProductUpdate(sku=sku, events=[], alerts=0))


def routes(settings: Settings) -> list[Route]:
    """The admin routes, when an admin token is configured; none otherwise."""
    if settings.admin_token is None:
        return []
    return [
        Route(f"{PREFIX}products/{{sku}}", put_product, methods=["PUT"]),
        Route(f"{PREFIX}products/{{sku}}", delete_product, methods=["DELETE"]),
    ]
