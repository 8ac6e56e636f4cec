"""The HTTP and WebSocket application: routes, and the lifespan that owns every service."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypedDict, cast

import anyio
import elasticsearch
import msgspec
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from percolert import assets, es, indices
from percolert.alertlog import AlertLog
from percolert.alerts import AlertDispatcher
from percolert.errors import ApiError, error_response, exception_handlers
from percolert.hub import (
    GOING_AWAY,
    POLICY_VIOLATION,
    SLOW_CLIENT,
    UNSUPPORTED_DATA,
    Connection,
    Hub,
)
from percolert.logs import AccessLogMiddleware, event, user_tag
from percolert.messages import (
    Alert,
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
from percolert.metrics import Metrics
from percolert.openapi import openapi_document
from percolert.percolator import Percolator, SearchEvent
from percolert.search import MAX_QUERY_LENGTH, MAX_SIZE, search_products
from percolert.sessions import (
    SessionMiddleware,
    SessionSigner,
    current_user,
    load_secret,
    session_started,
)
from percolert.settings import Settings
from percolert.text import TextNormalizer
from percolert.watches import WatchStore

logger = logging.getLogger("percolert.app")

_MAX_BODY_BYTES = 4096


class State(TypedDict):
    client: AsyncElasticsearch
    settings: Settings
    hub: Hub
    percolator: Percolator
    dispatcher: AlertDispatcher
    watches: WatchStore
    alert_log: AlertLog
    metrics: Metrics


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
    started = time.perf_counter()
    found = await search_products(state["client"], alias, text, size)
    state["metrics"].search_seconds.observe(time.perf_counter() - started)
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


async def metrics(request: Request) -> Response:
    return Response(_state(request)["metrics"].render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return json_response(openapi_document())


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


def _resume_position(websocket: WebSocket) -> int | None:
    raw = websocket.query_params.get("after")
    if raw is None:
        return None
    return int(raw) if raw.isdigit() and len(raw) < 20 else None


async def _greeting(
    state: State, websocket: WebSocket, user: str, cut: int
) -> tuple[Hello, list[Alert]]:
    """The hello message and the alerts missed since the client's `after` position.

    Elasticsearch being down must not keep a page from connecting: the page then gets no
    watch list (None) and no history, and live alerts as usual.
    """
    after = _resume_position(websocket)
    try:
        watches: list[Watch] | None = await state["watches"].visible_to(user)
        recent = await state["alert_log"].recent(user, session_started(websocket))
        missed = [] if after is None else await state["alert_log"].missed(user, after, cut)
    except (TransportError, elasticsearch.ApiError) as error:
        logger.warning("greeting without history, Elasticsearch failed: %s", error)
        watches, recent, missed = None, [], []
    hello = Hello(
        coalesce_seconds=state["settings"].coalesce_seconds,
        watches=watches,
        recent=[entry.alert for entry in recent],
        last_seq=cut,
    )
    return hello, [entry.alert for entry in missed]


async def _read_until_closed(websocket: WebSocket, connection: Connection) -> tuple[int, str]:
    """Answer pings; returns the close code and reason when the client leaves or misbehaves."""
    decoder = msgspec.json.Decoder(ClientMessages)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return 0, ""
        text = message.get("text")
        if text is None:
            return UNSUPPORTED_DATA, "only JSON text messages are accepted"
        try:
            decoded = decoder.decode(text)
        except msgspec.DecodeError:
            return POLICY_VIOLATION, "malformed message"
        match decoded:
            case Ping():
                connection.offer(_encode_message(Pong()))


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
    # Alerts numbered up to `cut` are replayed from the log; later ones arrive live through
    # the queue, which starts filling now. Nothing is sent twice or skipped.
    cut = state["alert_log"].last_seq
    hub.add(connection)
    event(logger, "socket_open", user=user_tag(user), sockets=hub.socket_count())
    close_code, reason = 0, ""
    try:
        hello, missed = await _greeting(state, websocket, user, cut)
        await websocket.send_text(_encode_message(hello))
        for alert in missed:
            await websocket.send_text(_encode_message(alert))

        async with anyio.create_task_group() as tasks:

            async def read() -> None:
                nonlocal close_code, reason
                close_code, reason = await _read_until_closed(websocket, connection)
                tasks.cancel_scope.cancel()

            tasks.start_soon(read)
            await connection.write(tasks.cancel_scope)
            tasks.cancel_scope.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        hub.remove(connection)
        connection.close()
    if connection.overflowed:
        close_code, reason = SLOW_CLIENT, "too slow: reconnect to catch up"
    elif connection.finished:
        close_code, reason = GOING_AWAY, "server shutting down"
    event(
        logger,
        "socket_close",
        user=user_tag(user),
        code=close_code or None,
        reason=reason or None,
        sockets=hub.socket_count(),
    )
    if close_code:
        # Bounded: a client that stopped reading may never take the close frame.
        with (
            anyio.move_on_after(1),
            contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError),
        ):
            await websocket.close(code=close_code, reason=reason)


def _observe_percolate(app_metrics: Metrics) -> Callable[[float | None, int], None]:
    def observe(seconds: float | None, batch_size: int) -> None:
        if seconds is None:
            app_metrics.elasticsearch_errors.labels("percolate").inc()
            return
        app_metrics.percolate_seconds.observe(seconds)
        app_metrics.percolate_batch_size.observe(batch_size)

    return observe


def create_app(settings: Settings) -> Starlette:
    """The ASGI app for one deployment; everything it needs comes from `settings`."""
    signer = SessionSigner(load_secret(settings))
    # The hub outlives the lifespan's services: the server drains it before shutting down.
    hub = Hub()
    app_metrics = Metrics()
    readings: dict[str, Callable[[], float]] = {}
    # The lifespan's services, for the shutdown drain (which runs before the lifespan ends).
    services: dict[str, Any] = {}
    app_metrics.read_from(
        lambda: {
            "sockets": hub.socket_count(),
            "users": len(hub.users()),
            "alerts_sent": hub.delivered,
            "alerts_dropped_slow_socket": hub.slow_closed,
            **{name: read() for name, read in readings.items()},
        }
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = es.create_client(settings)
        normalizer = TextNormalizer()
        alert_log = AlertLog(client, indices.alias_for(settings, "alerts"))
        dispatcher = AlertDispatcher(hub, alert_log, window_seconds=settings.coalesce_seconds)
        percolator = Percolator(
            client,
            indices.alias_for(settings, "watches"),
            normalizer,
            dispatcher.on_matches,
            batch_size=settings.percolate_batch_size,
            concurrency=settings.percolate_concurrency,
            observe=_observe_percolate(app_metrics),
        )
        services.update(percolator=percolator, dispatcher=dispatcher)
        readings.update(
            alerts_created=lambda: dispatcher.alerts,
            alerts_coalesced=lambda: dispatcher.coalesced,
            search_events_dropped=lambda: percolator.dropped,
            alert_log_write_failures=lambda: alert_log.write_failures,
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
                background.start_soon(alert_log.run)
                yield {
                    "client": client,
                    "settings": settings,
                    "hub": hub,
                    "percolator": percolator,
                    "dispatcher": dispatcher,
                    "watches": store,
                    "alert_log": alert_log,
                    "metrics": app_metrics,
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
        Route("/openapi.json", openapi),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        WebSocketRoute("/ws", alerts_socket),
        Mount("/static", StaticFiles(directory=web), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(AccessLogMiddleware),
            Middleware(SessionMiddleware, signer=signer, secure=settings.secure_cookies),
        ],
        exception_handlers=exception_handlers(  # type: ignore[arg-type]
            settings.elasticsearch_url,
            on_elasticsearch_error=app_metrics.elasticsearch_errors.labels("http").inc,
        ),
    )

    async def drain(seconds: float) -> None:
        """Shutdown: deliver what answered searches will still produce, then close sockets."""
        with anyio.move_on_after(seconds / 2):
            percolator = services.get("percolator")
            while percolator is not None and not percolator.idle():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        dispatcher = services.get("dispatcher")
        if dispatcher is not None:
            dispatcher.flush_all()
        await hub.close_all(seconds / 2)

    app.state.drain = drain
    return app
