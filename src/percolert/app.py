"""The HTTP and WebSocket application: routes, and the lifespan that owns every service."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from percolert import assets, catalog, es, indices
from percolert.alert_socket import alerts_socket
from percolert.alertlog import AlertLog
from percolert.alerts import AlertDispatcher
from percolert.browser_guard import BrowserGuardMiddleware
from percolert.errors import ApiError, error_response, exception_handlers
from percolert.hub import Hub
from percolert.logs import AccessLogMiddleware
from percolert.messages import (
    Categories,
    Health,
    Readiness,
    WatchesChanged,
    WatchList,
    WatchSpec,
)
from percolert.metrics import Metrics
from percolert.openapi import openapi_document
from percolert.percolator import Percolator, SearchEvent
from percolert.search import MAX_QUERY_LENGTH, MAX_SIZE, search_products
from percolert.services import State, encode_message, state_of
from percolert.sessions import (
    SessionMiddleware,
    SessionSigner,
    current_user,
    load_secret,
)
from percolert.settings import Settings
from percolert.text import TextNormalizer
from percolert.watches import WatchStore

logger = logging.getLogger("percolert.app")

_MAX_BODY_BYTES = 4096


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
    # ASCII digits only: int() would also take spaces, signs, "1_0" and other scripts' digits.
    if not (raw.isascii() and raw.isdigit()):
        raise ApiError(
            400, "invalid_size", f"size must be a whole number (digits 0-9), got {raw[:20]!r}"
        )
    size = int(raw) if len(raw) <= 4 else 0
    if not 1 <= size <= MAX_SIZE:
        raise ApiError(400, "invalid_size", f"size must be between 1 and {MAX_SIZE}")
    return size


async def search(request: Request) -> Response:
    text = _query_text(request)
    size = _size(request)
    user = _user(request)
    state = state_of(request)
    alias = indices.alias_for(state["settings"], "products")
    started = time.perf_counter()
    found = await search_products(state["client"], alias, text, size)
    state["metrics"].search_seconds.observe(time.perf_counter() - started)
    # Percolation happens after the answer is composed and never delays it.
    if state["settings"].alerts_enabled:
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


async def _watches_changed(state: State, user: str) -> None:
    watches = await state["watches"].visible_to(user)
    state["hub"].send_to_user(user, encode_message(WatchesChanged(watches=watches)))


async def list_watches(request: Request) -> Response:
    state = state_of(request)
    return json_response(WatchList(watches=await state["watches"].visible_to(_user(request))))


async def add_watch(request: Request) -> Response:
    user = _user(request)
    spec = await _decode_spec(request)
    state = state_of(request)
    watch = await state["watches"].add(user, spec)
    await _watches_changed(state, user)
    return json_response(watch, status=201)


async def remove_watch(request: Request) -> Response:
    user = _user(request)
    state = state_of(request)
    await state["watches"].remove(user, request.path_params["watch_id"])
    await _watches_changed(state, user)
    return Response(status_code=204)


async def categories(request: Request) -> Response:
    state = state_of(request)
    products = indices.alias_for(state["settings"], "products")
    return json_response(
        Categories(categories=await catalog.category_names(state["client"], products))
    )


async def metrics(request: Request) -> Response:
    return Response(state_of(request)["metrics"].render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return json_response(openapi_document())


async def healthz(request: Request) -> Response:
    return json_response(Health(status="ok"))


async def readyz(request: Request) -> Response:
    state = state_of(request)
    settings = state["settings"]
    try:
        version = await es.check_connection(state["client"], settings.elasticsearch_url)
        needed = await indices.needing_setup(state["client"], settings)
    except es.ElasticsearchProblem as problem:
        # The details name the cluster's address: for the log, not for whoever asks.
        logger.warning("not ready: %s", problem)
        return error_response(503, "elasticsearch_unavailable", "Elasticsearch is unavailable")
    if needed:
        return error_response(503, "not_set_up", f"{'; '.join(needed)}: run `percolert setup`")
    return json_response(Readiness(status="ready", elasticsearch=version))


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
    hub = Hub(grace_seconds=settings.reconnect_grace_seconds)
    app_metrics = Metrics()
    # The lifespan's state while it runs: read by metric scrapes and by the shutdown drain,
    # which both live outside any request.
    running: list[State] = []

    def readings() -> dict[str, float]:
        values: dict[str, float] = {
            "sockets": hub.socket_count(),
            "users": len(hub.users()),
            "alerts_sent": hub.delivered,
            "alerts_dropped_slow_socket": hub.slow_closed,
        }
        for state in running:
            values.update(
                alerts_created=state["dispatcher"].alerts,
                alerts_coalesced=state["dispatcher"].coalesced,
                search_events_dropped=state["percolator"].dropped,
                alert_log_write_failures=state["alert_log"].write_failures,
            )
        return values

    app_metrics.read_from(readings)

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
        store = WatchStore(
            client,
            indices.alias_for(settings, "watches"),
            normalizer,
            max_per_user=settings.max_watches_per_user,
            known_categories=catalog.CategoryCache(
                client, indices.alias_for(settings, "products")
            ).names,
        )
        try:
            with app_metrics.observing_gc():
                async with anyio.create_task_group() as background:
                    background.start_soon(percolator.run)
                    background.start_soon(dispatcher.run)
                    background.start_soon(alert_log.run)
                    background.start_soon(app_metrics.watch_event_loop)
                    state: State = {
                        "client": client,
                        "settings": settings,
                        "hub": hub,
                        "percolator": percolator,
                        "dispatcher": dispatcher,
                        "watches": store,
                        "alert_log": alert_log,
                        "metrics": app_metrics,
                        # A reconnect storm's greetings queue here, leaving three quarters
                        # of the client's connections to searches, percolation and the log.
                        "greetings": anyio.Semaphore(
                            max(1, settings.elasticsearch_connections // 4)
                        ),
                    }
                    running.append(state)
                    yield state
                    background.cancel_scope.cancel()
        finally:
            running.clear()
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
            Middleware(BrowserGuardMiddleware, allowed_origins=settings.allowed_origins),
            Middleware(SessionMiddleware, signer=signer, secure=settings.secure_cookies),
        ],
        exception_handlers=exception_handlers(  # type: ignore[arg-type]
            settings.elasticsearch_url,
            on_elasticsearch_error=app_metrics.elasticsearch_errors.labels("http").inc,
        ),
    )

    async def drain(seconds: float) -> None:
        """Shutdown: deliver what answered searches will still produce, then close sockets."""
        for state in running:
            with anyio.move_on_after(seconds / 2):
                while not state["percolator"].idle():  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            state["dispatcher"].flush_all()
        await hub.close_all(seconds / 2)

    app.state.drain = drain
    return app
