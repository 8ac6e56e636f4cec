"""The HTTP and WebSocket application: routes, and the lifespan that owns every service."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from percolert.accounts.tokens import Tokens
from percolert.core import assets
from percolert.core.breaker import Breaker
from percolert.core.messages import (
    Categories,
    Health,
    Readiness,
    WatchesChanged,
    WatchList,
    WatchSpec,
    WatchUpdate,
)
from percolert.core.metrics import Metrics
from percolert.core.settings import Settings, SettingsError, default_instance_id
from percolert.engine import es, indices
from percolert.engine.search import MAX_QUERY_LENGTH, MAX_SIZE, search_products
from percolert.offsite.events import WATCH_CREATED, WATCH_DELETED
from percolert.offsite.targets import TargetRefused, check_url
from percolert.products import catalog
from percolert.realtime.hub import Hub
from percolert.service.services import Services, State, encode_message
from percolert.watches.percolator import Percolator, SearchEvent
from percolert.web import (
    account_api,
    admin_api,
    admin_page,
    insights_api,
    offsite_api,
    realtime_api,
    unsubscribe,
)
from percolert.web.alert_socket import alerts_socket
from percolert.web.errors import ApiError, decode_json, error_response, exception_handlers
from percolert.web.logs import AccessLogMiddleware, as_instance
from percolert.web.middleware.admission import Admission, AdmissionMiddleware
from percolert.web.middleware.bearer import BearerMiddleware, account_of
from percolert.web.middleware.bodylimit import BodyLimitMiddleware
from percolert.web.middleware.browser_guard import BrowserGuardMiddleware
from percolert.web.middleware.cluster_breaker import ClusterBreakerMiddleware
from percolert.web.middleware.cors import StorefrontCorsMiddleware
from percolert.web.middleware.ratelimits import RateLimits
from percolert.web.middleware.sessions import (
    SessionMiddleware,
    SessionSigner,
    current_user,
    load_secret,
)
from percolert.web.openapi import openapi_document
from percolert.web.paths import SESSION_PATH
from percolert.web.responses import json_response
from percolert.web.state import state_of

logger = logging.getLogger(__name__)

_MAX_BODY_BYTES = 4096


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
    # When the search was made: a session begun while it ran is not told of it.
    made_at = time.time()
    started = time.perf_counter()
    answer, found, products = await search_products(
        state["client"], alias, text, size, made_at=made_at
    )
    state["metrics"].search_seconds.observe(time.perf_counter() - started)
    # Counted in memory and logged in bulk once a second: the search waits for nothing.
    state["activity"].searched(text, answer.total)
    # Percolation happens after the answer is composed and never delays it.
    if state["settings"].alerts_enabled:
        state["percolator"].submit(
            SearchEvent(text=text, searcher=user, found=found, at=made_at, products=products)
        )
    return json_response(answer)


async def _decode_spec(request: Request) -> WatchSpec:
    body = await request.body()  # at most _MAX_BODY_BYTES: BodyLimitMiddleware saw to it
    try:
        return msgspec.json.decode(body, type=WatchSpec)
    except msgspec.ValidationError as error:
        message = f"invalid watch: {error}"
        if "`$.on" in message:  # `$.on` or `$.on[n]`
            # msgspec names what is wrong; the shopper also needs what is taken.
            message += (
                "; `on` lists back_in_stock and/or price_drop (never new: a watched "
                "product is in the catalog already)"
            )
        raise ApiError(400, "invalid_watch", message) from None
    except msgspec.DecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None


async def _decode_update(request: Request) -> WatchUpdate:
    body = await request.body()  # at most _MAX_BODY_BYTES: BodyLimitMiddleware saw to it
    hint = (
        'send {"notify": "searches", "products" or "both"} and/or '
        '{"frequency": "instant", "daily", "weekly" or "off"}'
    )
    update = decode_json(body, WatchUpdate, code="invalid_watch", what="watch update", hint=hint)
    if update.notify is None and update.frequency is None:
        raise ApiError(400, "invalid_watch", f"the update changes nothing; {hint}")
    return update


async def _watches_changed(state: State, user: str) -> None:
    watches = await state["watches"].visible_to(user)
    await state["broker"].notify_user(user, encode_message(WatchesChanged(watches=watches)))


async def list_watches(request: Request) -> Response:
    state = state_of(request)
    return json_response(WatchList(watches=await state["watches"].visible_to(_user(request))))


async def add_watch(request: Request) -> Response:
    user = _user(request)
    spec = await _decode_spec(request)
    state = state_of(request)
    account = account_of(request.scope)
    if account is not None:
        # Creating a watch is the opt-in: who the shop says this is, for when they are away.
        await state["offsite"].saw(account.user, account.subject, account.email)
    watch = await state["watches"].add(user, spec)
    await _watches_changed(state, user)
    if account is not None:
        await state["offsite"].watch_changed(WATCH_CREATED, user, watch)
    return json_response(watch, status=201)


async def remove_watch(request: Request) -> Response:
    user = _user(request)
    state = state_of(request)
    watch = await state["watches"].remove(user, request.path_params["watch_id"])
    await _watches_changed(state, user)
    if account_of(request.scope) is not None:
        await state["offsite"].watch_changed(WATCH_DELETED, user, watch)
    return Response(status_code=204)


async def update_watch(request: Request) -> Response:
    user = _user(request)
    update = await _decode_update(request)
    state = state_of(request)
    watch_id = request.path_params["watch_id"]
    if update.frequency is not None:
        watch = await state["watches"].set_frequency(user, watch_id, update.frequency)
    if update.notify is not None:
        watch = await state["watches"].set_notify(user, watch_id, update.notify)
    await _watches_changed(state, user)
    return json_response(watch)


async def categories(request: Request) -> Response:
    state = state_of(request)
    products = indices.alias_for(state["settings"], "products")
    return json_response(
        Categories(categories=await catalog.category_names(state["client"], products))
    )


async def session(request: Request) -> Response:
    """The page asks for its session here first: the session middleware has given it one,
    if it had none (204 either way; 429 when its address may start no more for now)."""
    _user(request)
    return Response(status_code=204)


async def metrics(request: Request) -> Response:
    # Only for the token's holders, or this machine: admission.py sees to it.
    return Response(state_of(request)["metrics"].render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return json_response(openapi_document())


async def healthz(request: Request) -> Response:
    return json_response(Health(status="ok"))


async def readyz(request: Request) -> Response:
    # Only for the token's holders, or this machine: admission.py sees to it.
    state = state_of(request)
    down = state["background"].down()
    if down:
        return error_response(
            503, "background_down", f"restarting after a crash: {', '.join(down)}"
        )
    broker = state["broker"].status
    if broker == "down":
        # Search and open sockets go on; alerts wait until Redis is back. Its address is
        # for the log (broker_redis), not for whoever asks.
        return error_response(
            503, "broker_unavailable", "the alert broker is unavailable; alerts are delayed"
        )
    if state["cluster"].open:
        return error_response(503, "elasticsearch_unavailable", "Elasticsearch is unavailable")
    try:
        cluster = await state["readiness"].check()
    except es.ElasticsearchProblem as problem:
        # The details name the cluster's address: for the log, not for whoever asks.
        logger.warning("not ready: %s", problem)
        return error_response(503, "elasticsearch_unavailable", "Elasticsearch is unavailable")
    if cluster.needed:
        needed = "; ".join(cluster.needed)
        return error_response(503, "not_set_up", f"{needed}: run `percolert setup`")
    return json_response(Readiness(status="ready", elasticsearch=cluster.version, broker=broker))


class _Lifespan:
    """Runs the services while the app runs. Metric scrapes and the shutdown drain come
    from outside any request, so they reach the services here: `services` is None before the
    lifespan starts them and after it has stopped them."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        metrics: Metrics,
        percolator_type: type[Percolator],
        limits: RateLimits,
        cluster: Breaker,
        tokens: Tokens | None,
        secret: str,
    ) -> None:
        self._settings = settings
        self._secret = secret
        self._cluster = cluster
        self._tokens = tokens
        self._hub = hub
        self._metrics = metrics
        self._limits = limits
        self._percolator_type = percolator_type
        self.services: Services | None = None

    @asynccontextmanager
    async def __call__(self, app: Starlette) -> AsyncIterator[State]:
        assert self._settings.instance_id is not None  # create_app decided it
        # The background loops start in here, and log as this instance.
        loops = {"rate_limit_store": self._limits.watch_store}
        jwks = None if self._tokens is None else self._tokens.jwks
        if jwks is not None:
            loops["jwks_refresh"] = jwks.run
        with as_instance(self._settings.instance_id):
            async with Services.running(
                self._settings,
                self._hub,
                self._metrics,
                percolator_type=self._percolator_type,
                cluster=self._cluster,
                loops=loops,
                secret=self._secret,
            ) as services:
                self.services = services
                try:
                    yield services.state()
                finally:
                    self.services = None
                    await self._limits.close()
                    if jwks is not None:
                        await jwks.close()

    def readings(self) -> dict[str, float]:
        values: dict[str, float] = {
            "sockets": self._hub.socket_count(),
            "users": len(self._hub.users()),
            "alerts_sent": self._hub.delivered,
            "alerts_dropped_slow_socket": self._hub.slow_closed,
        }
        if self.services is not None:
            values.update(self.services.readings())
        return values

    async def drain(self, seconds: float) -> None:
        """Shutdown: deliver what answered searches will still produce, then close sockets."""
        assert self._settings.instance_id is not None
        with as_instance(self._settings.instance_id):
            if self.services is not None:
                await self.services.deliver_pending(seconds / 2)
            await self._hub.close_all(seconds / 2)


def _trip_unless_admin(cluster: Breaker, path: str, reason: str) -> None:
    """A shopper's request timed out: the cluster hangs. An admin's may be slow for its own
    sake (a price change percolated against many watches): it trips nothing."""
    if not path.startswith(admin_api.PREFIX):
        cluster.trip(reason)


def create_app(settings: Settings, *, percolator_type: type[Percolator] = Percolator) -> Starlette:
    """The ASGI app for one deployment; everything it needs comes from `settings`
    (`percolator_type`: the percolator's class; tests hand one with faults injected)."""
    # One id names this app in its logs, its metrics and (on a shared Redis) the broker.
    instance_id = settings.instance_id or default_instance_id(settings)
    settings = msgspec.structs.replace(settings, instance_id=instance_id)
    with as_instance(instance_id):  # it may warn of a development secret
        secret = load_secret(settings)
    signer = SessionSigner(secret)
    webhook_url = settings.offsite.webhook_url
    if webhook_url is not None:
        try:
            check_url(webhook_url, allow_private=settings.offsite.webhook_allow_private)
        except TargetRefused as refused:
            raise SettingsError(f"PERCOLERT_WEBHOOK_URL: {refused}") from None
    # The hub outlives the lifespan's services: the server drains it before shutting down.
    hub = Hub(grace_seconds=settings.reconnect_grace_seconds)
    app_metrics = Metrics(instance_id)
    limits = RateLimits(settings)
    # Known to hang after a request timed out: the API answers 503 at once until it answers.
    cluster = Breaker("Elasticsearch")
    admission = Admission(
        limits,
        max_sockets_per_user=settings.max_sockets_per_user,
        metrics_token=settings.metrics_token,
        on_refused=lambda limit: app_metrics.refused.labels(limit).inc(),
    )
    # Shops' tokens, when the deployment takes them (a secret or a JWKS URL is set).
    tokens = Tokens(settings) if settings.accounts else None
    lifespan = _Lifespan(
        settings, hub, app_metrics, percolator_type, limits, cluster, tokens, secret
    )
    app_metrics.read_from(lifespan.readings)

    web = assets.asset_dir("web")

    async def page(request: Request) -> Response:
        # No session here: the page asks for one (POST /api/session) when it needs it.
        return FileResponse(web / "index.html")

    async def socket(websocket: WebSocket) -> None:
        await alerts_socket(websocket, tokens, admission)

    routes = [
        Route("/", page),
        Route(SESSION_PATH, session, methods=["POST"]),
        Route("/api/search", search),
        Route("/api/watches", list_watches, methods=["GET"]),
        Route("/api/watches", add_watch, methods=["POST"]),
        Route("/api/watches/{watch_id}", remove_watch, methods=["DELETE"]),
        Route("/api/watches/{watch_id}", update_watch, methods=["PATCH"]),
        Route("/api/categories", categories),
        *account_api.routes(),  # /api/me/: the caller's own data
        *offsite_api.routes(),  # /api/me/preferences: an account's e-mail
        *unsubscribe.routes(),  # e-mail's one-click unsubscribe links
        *insights_api.routes(),  # /api/alerts/visits: the SDK's click-throughs
        *realtime_api.routes(),  # /api/realtime/token: sockets on Centrifugo instead
        *admin_page.routes(settings, secret),  # /admin: the demand view, behind a cookie
        Route("/openapi.json", openapi),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        WebSocketRoute("/ws", socket),
        Mount("/static", StaticFiles(directory=web), name="static"),
        # All of /api/admin/, behind the admin token: with the webhook's endpoint and
        # delivery log, and accounts' e-mail addresses.
        *admin_api.routes(
            settings,
            [*offsite_api.admin_routes(), *insights_api.admin_routes(admin_api.PREFIX)],
        ),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(AccessLogMiddleware, instance_id=instance_id),
            Middleware(StorefrontCorsMiddleware, allowed_origins=settings.allowed_origins),
            Middleware(
                BrowserGuardMiddleware,
                allowed_origins=settings.allowed_origins,
                frame_ancestors=settings.frame_ancestors,
            ),
            Middleware(
                BodyLimitMiddleware,
                max_bytes=_MAX_BODY_BYTES,
                max_bytes_under={admin_api.PREFIX: admin_api.MAX_BODY_BYTES},
            ),
            Middleware(
                SessionMiddleware,
                signer=signer,
                secure=settings.secure_cookies,
                may_start=admission.may_start_session,
            ),
            Middleware(BearerMiddleware, tokens=tokens),
            Middleware(AdmissionMiddleware, admission=admission),
            Middleware(ClusterBreakerMiddleware, breaker=cluster),
        ],
        exception_handlers=exception_handlers(  # type: ignore[arg-type]
            settings.elasticsearch_url,
            on_elasticsearch_error=app_metrics.elasticsearch_errors.labels("http").inc,
            on_elasticsearch_timeout=partial(_trip_unless_admin, cluster),
        ),
    )

    app.state.drain = lifespan.drain
    app.state.instance_id = instance_id
    return app
