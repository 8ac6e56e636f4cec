"""The HTTP application: routes, the lifespan that owns the Elasticsearch client, errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict, cast

import msgspec
from elasticsearch import AsyncElasticsearch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from percolert import assets, es, indices
from percolert.errors import ApiError, error_response, exception_handlers
from percolert.messages import Health, Readiness
from percolert.search import MAX_QUERY_LENGTH, MAX_SIZE, search_products
from percolert.settings import Settings

logger = logging.getLogger("percolert.app")


class State(TypedDict):
    client: AsyncElasticsearch
    settings: Settings


def _state(request: Request) -> State:
    return cast(State, request.scope["state"])


def json_response(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _query_text(request: Request) -> str:
    text = request.query_params.get("q", "").strip()
    if not text:
        raise ApiError(400, "invalid_query", "q is required: the text to search for")
    if len(text) > MAX_QUERY_LENGTH:
        raise ApiError(
            400, "invalid_query", f"q is too long: at most {MAX_QUERY_LENGTH} characters"
        )
    return text


def _size(request: Request) -> int:
    raw = request.query_params.get("size", "10")
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_size", f"size must be a whole number, got {raw!r}") from None
    if not 1 <= size <= MAX_SIZE:
        raise ApiError(400, "invalid_size", f"size must be between 1 and {MAX_SIZE}, got {size}")
    return size


async def search(request: Request) -> Response:
    text = _query_text(request)
    size = _size(request)
    state = _state(request)
    alias = indices.alias_for(state["settings"], "products")
    return json_response(await search_products(state["client"], alias, text, size))


async def healthz(request: Request) -> Response:
    return json_response(Health(status="ok"))


async def readyz(request: Request) -> Response:
    state = _state(request)
    settings = state["settings"]
    try:
        version = await es.check_connection(state["client"], settings.elasticsearch_url)
        missing = await indices.missing_aliases(state["client"], settings)
    except es.ElasticsearchProblem as problem:
        return error_response(503, "elasticsearch_unavailable", str(problem))
    if missing:
        return error_response(
            503, "not_set_up", f"missing indices {', '.join(missing)}: run `percolert setup`"
        )
    return json_response(Readiness(status="ready", elasticsearch=version))


def create_app(settings: Settings) -> Starlette:
    """The ASGI app for one deployment; everything it needs comes from `settings`."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = es.create_client(settings)
        try:
            yield {"client": client, "settings": settings}
        finally:
            await client.close()

    web = assets.asset_dir("web")

    async def page(request: Request) -> Response:
        return FileResponse(web / "index.html")

    routes = [
        Route("/", page),
        Route("/api/search", search),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Mount("/static", StaticFiles(directory=web), name="static"),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=exception_handlers(settings.elasticsearch_url),  # type: ignore[arg-type]
    )
