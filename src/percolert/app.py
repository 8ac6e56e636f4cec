"""The HTTP and WebSocket application: routes, and the lifespan that owns every service."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict, cast

import anyio
import msgspec
from elasticsearch import AsyncElasticsearch
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from percolert import assets, es, indices
from percolert.alerts import AlertDispatcher
from percolert.errors import ApiError, error_response, exception_handlers
from percolert.hub import SLOW_CLIENT_CLOSE, Connection, Hub
from percolert.messages import (
    Categories,
    ClientMessages,
    Health,
    Hello,
    Ping,
    Pong,
    Readiness,
    ServerMessage,
    Watch,
    WatchesChanged,
    WatchList,
    WatchSpec,
)
from percolert.percolator import Percolator, SearchEvent
from percolert.search import MAX_QUERY_LENGTH, MAX_SIZE, search_products
from percolert.sessions import SessionMiddleware, SessionSigner, current_user, load_secret
from percolert.settings import Settings
from percolert.text import TextNormalizer
from percolert.watches import WatchStore

logger = logging.getLogger("percolert.app")

_MAX_BODY_BYTES = 4096
# WebSocket close code for a handshake without a valid session or from a foreign origin.
POLICY_VIOLATION = 1008


class State(TypedDict):
    client: AsyncElasticsearch
    settings: Settings
    hub: Hub
    percolator: Percolator
    dispatcher: AlertDispatcher
    watches: WatchStore


def _state(connection: Request | WebSocket) -> State:
    return cast(State, connection.scope["state"])


def json_response(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _user(request: Request) -> str:
    user = current_user(request)
    if user is None:  # the session middleware gives every HTTP request one
        raise ApiError(401, "no_session", "no session")
    return user


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
    user = _user(request)
    state = _state(request)
    alias = indices.alias_for(state["settings"], "products")
    found = await search_products(state["client"], alias, text, size)
    # Percolation happens after the answer is composed and never delays it.
    state["percolator"].submit(
        SearchEvent(
            text=text,
            searcher=user,
            categories=tuple(sorted({hit.category for hit in found.results})),
            min_price=min((hit.price for hit in found.results), default=None),
            at=time.time(),
        )
    )
    return json_response(found)


async def _decode_spec(request: Request) -> WatchSpec:
    body = await request.body()
    if len(body) > _MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"the body may be at most {_MAX_BODY_BYTES} bytes")
    try:
        return msgspec.json.decode(body, type=WatchSpec)
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_watch", f"invalid watch: {error}") from None
    except msgspec.DecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None


async def _watches_changed(state: State, user: str) -> list[Watch]:
    watches = await state["watches"].visible_to(user)
    state["hub"].send_to_user(user, _encode_message(WatchesChanged(watches=watches)))
    return watches


async def list_watches(request: Request) -> Response:
    state = _state(request)
    return json_response(WatchList(watches=await state["watches"].visible_to(_user(request))))


async def add_watch(request: Request) -> Response:
    user = _user(request)
    spec = await _decode_spec(request)
    state = _state(request)
    watch = await state["watches"].add(user, spec)
    await _watches_changed(state, user)
    return json_response(watch, status=201)


async def remove_watch(request: Request) -> Response:
    user = _user(request)
    state = _state(request)
    if not await state["watches"].remove(user, request.path_params["watch_id"]):
        raise ApiError(404, "watch_not_found", "no such watch of yours")
    await _watches_changed(state, user)
    return Response(status_code=204)


async def categories(request: Request) -> Response:
    state = _state(request)
    response = await state["client"].search(
        index=indices.alias_for(state["settings"], "products"),
        size=0,
        aggs={
            "categories": {"terms": {"field": "category", "size": 100, "order": {"_key": "asc"}}}
        },
    )
    buckets = response["aggregations"]["categories"]["buckets"]
    return json_response(Categories(categories=[bucket["key"] for bucket in buckets]))


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


def _encode_message(message: ServerMessage) -> str:
    return msgspec.json.encode(message).decode()


def _origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    origin = websocket.headers.get("origin")
    if origin is None:
        return False
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    own = f"{scheme}://{websocket.headers.get('host', '')}"
    return origin.rstrip("/") in {own, *settings.allowed_origins}


async def alerts_socket(websocket: WebSocket) -> None:
    state = _state(websocket)
    user = current_user(websocket)
    if user is None or not _origin_allowed(websocket, state["settings"]):
        # Closing before accepting refuses the handshake (HTTP 403).
        logger.info("refused a WebSocket handshake: %s", "origin" if user else "no session")
        await websocket.close(code=POLICY_VIOLATION)
        return
    await websocket.accept()
    hub = state["hub"]
    connection = Connection(user, websocket.send_text, state["settings"].socket_queue_size)
    hello = Hello(
        coalesce_seconds=state["settings"].coalesce_seconds,
        watches=await state["watches"].visible_to(user),
    )
    connection.offer(_encode_message(hello))
    hub.add(connection)
    decoder = msgspec.json.Decoder(ClientMessages)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(connection.write_until_cancelled, tasks.cancel_scope)
            while True:
                raw = await websocket.receive_text()
                try:
                    message = decoder.decode(raw)
                except msgspec.DecodeError:
                    break  # hardening of client frames is issue 4's; drop such a client
                if isinstance(message, Ping):
                    connection.offer(_encode_message(Pong()))
    except WebSocketDisconnect:
        pass
    finally:
        hub.remove(connection)
        connection.close()
    # Bounded: a client that stopped reading may never take the close frame.
    with anyio.move_on_after(1), contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
        await websocket.close(code=SLOW_CLIENT_CLOSE if connection.overflowed else 1000)


def create_app(settings: Settings) -> Starlette:
    """The ASGI app for one deployment; everything it needs comes from `settings`."""
    signer = SessionSigner(load_secret(settings))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = es.create_client(settings)
        normalizer = TextNormalizer()
        hub = Hub()
        dispatcher = AlertDispatcher(hub, window_seconds=settings.coalesce_seconds)
        percolator = Percolator(
            client,
            indices.alias_for(settings, "watches"),
            normalizer,
            dispatcher.on_matches,
            batch_size=settings.percolate_batch_size,
            concurrency=settings.percolate_concurrency,
        )
        store = WatchStore(
            client,
            indices.alias_for(settings, "watches"),
            normalizer,
            max_per_user=settings.max_watches_per_user,
        )
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(percolator.run)
                background.start_soon(dispatcher.run)
                yield {
                    "client": client,
                    "settings": settings,
                    "hub": hub,
                    "percolator": percolator,
                    "dispatcher": dispatcher,
                    "watches": store,
                }
                background.cancel_scope.cancel()
        finally:
            await client.close()

    web = assets.asset_dir("web")

    async def page(request: Request) -> Response:
        return FileResponse(web / "index.html")

    routes = [
        Route("/", page),
        Route("/api/search", search),
        Route("/api/watches", list_watches, methods=["GET"]),
        Route("/api/watches", add_watch, methods=["POST"]),
        Route("/api/watches/{watch_id}", remove_watch, methods=["DELETE"]),
        Route("/api/categories", categories),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        WebSocketRoute("/ws", alerts_socket),
        Mount("/static", StaticFiles(directory=web), name="static"),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(SessionMiddleware, signer=signer, secure=settings.secure_cookies)],
        exception_handlers=exception_handlers(settings.elasticsearch_url),  # type: ignore[arg-type]
    )
