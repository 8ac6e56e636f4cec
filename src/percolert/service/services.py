"""The running services of one app, and the typed state every endpoint reads them through."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TypedDict

import anyio
import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.accounts.erasure import Erasure
from percolert.accounts.ids import is_account
from percolert.alerts.breadth import Breadth
from percolert.alerts.dispatch import AlertDispatcher
from percolert.alerts.log import AlertLog
from percolert.broker.base import Broker
from percolert.broker.memory import MemoryBroker
from percolert.broker.redis import RedisBroker
from percolert.core.breaker import Breaker
from percolert.core.messages import ServerMessage
from percolert.core.metrics import Metrics
from percolert.core.settings import Settings, default_instance_id
from percolert.core.supervisor import Loop, Supervisor
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.engine.readiness import ClusterReadiness
from percolert.engine.reads import BatchedReads
from percolert.insights.activity import ActivityLog
from percolert.insights.view import DemandView
from percolert.insights.visits import VisitsSeen
from percolert.offsite.attempts import Attempt
from percolert.offsite.service import Offsite
from percolert.products import catalog
from percolert.products.feed import ProductFeed
from percolert.products.matching import PERCOLATE_CONCURRENCY, ProductAlerting
from percolert.products.seen import SeenMarks
from percolert.products.shown import ShownAlerts
from percolert.realtime.centrifugo import CentrifugoDelivery
from percolert.realtime.hub import Hub
from percolert.watches.percolator import Percolator
from percolert.watches.reachability import Leases, lease_seconds
from percolert.watches.store import WatchStore


class State(TypedDict):
    client: AsyncElasticsearch
    settings: Settings
    hub: Hub
    broker: Broker
    percolator: Percolator
    dispatcher: AlertDispatcher
    watches: WatchStore
    alert_log: AlertLog
    # Catalog changes (the admin API) into product alerts.
    product_alerting: ProductAlerting
    # Product alerts to this instance's sockets (live) and to greetings (`away`).
    product_feed: ProductFeed
    metrics: Metrics
    # The greetings' reads (watches and history of a new socket), those asked at once sent
    # together.
    greeting_reads: BatchedReads
    # The background loops: which of them are down (readiness).
    background: Supervisor
    # Leases of connected users' watches, which search percolation verifies.
    reachability: Leases
    # What /readyz asks of Elasticsearch, at most once per interval.
    readiness: ClusterReadiness
    # Open while the cluster is known to hang: the API answers 503 at once.
    cluster: Breaker
    # Accounts erased at the shop's request (here, and what erasures elsewhere leave here).
    erasure: Erasure
    # The shop's webhook and e-mail, for accounts that are away.
    offsite: Offsite
    # The search log's writer, and the admin's demand view over it.
    activity: ActivityLog
    demand: DemandView
    # Click-throughs counted already (each once per shopper and alert).
    visits_seen: VisitsSeen
    # Delivery through Centrifugo (None: the hub's sockets): its tokens' sessions.
    centrifugo: CentrifugoDelivery | None


def encode_message(message: ServerMessage) -> str:
    """A WebSocket message as JSON text, encoded once for however many sockets get it."""
    return msgspec.json.encode(message).decode()


def _watch_lock(broker: RedisBroker, owner: str) -> AbstractAsyncContextManager[None]:
    return broker.exclusive(f"watches:{owner}")


def _observe_offsite(metrics: Metrics) -> Callable[[str, Attempt], None]:
    def observe(channel: str, attempt: Attempt) -> None:
        metrics.offsite_attempts.labels(channel, attempt.outcome).inc()
        metrics.offsite_attempt_seconds.labels(channel).observe(attempt.duration_ms / 1000)

    return observe


def _observe_percolate(metrics: Metrics) -> Callable[[float | None, int], None]:
    def observe(seconds: float | None, batch_size: int) -> None:
        if seconds is None:
            metrics.elasticsearch_errors.labels("percolate").inc()
            return
        metrics.percolate_seconds.observe(seconds)
        metrics.percolate_batch_size.observe(batch_size)

    return observe


class Services:
    """What serves one deployment while the app runs: the Elasticsearch client, the alert log,
    the broker, the dispatcher, the percolator and the watch store, and the background loops
    that drive them, each under a supervisor. The hub and the metrics are the app's: they
    outlive the services (the server drains the hub after they stop; scrapes may come at any
    time).

    `Services.running(...)` builds and starts them, and stops them and closes the client when
    its block ends. `percolator_type` is the percolator's class (tests hand one with faults).
    """

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        metrics: Metrics,
        client: AsyncElasticsearch,
        *,
        percolator_type: type[Percolator] = Percolator,
        percolation_client: AsyncElasticsearch | None = None,
        cluster: Breaker | None = None,
        secret: str = "",
    ) -> None:
        self.settings = settings
        # Whether the cluster is known to hang (tripped by the HTTP edge), probed by a loop.
        self.cluster = cluster or Breaker("Elasticsearch")
        self.hub = hub
        self.metrics = metrics
        self.client = client
        normalizer = TextNormalizer()
        # What happened, never who: the admin's demand view reads it (percolert.insights).
        self.activity = ActivityLog(
            client, settings, lambda: (len(hub.users()), hub.socket_count())
        )
        self.alert_log = AlertLog(
            client,
            indices.alias_for(settings, "alerts"),
            flush_seconds=settings.alert_log_flush_seconds,
        )
        # With a shared Redis, instances sharing the indices act as one service; without,
        # this process is the whole service.
        self.shared: RedisBroker | None = None
        self.broker: Broker
        # Search alerts published to Centrifugo's channels rather than to sockets here.
        self.centrifugo: CentrifugoDelivery | None = None
        if settings.delivery == "centrifugo":
            url, key = settings.centrifugo_api_url, settings.centrifugo_api_key
            if url is None or key is None:
                raise ValueError("Centrifugo delivery needs its API's URL and key")
            self.centrifugo = CentrifugoDelivery(
                url,
                key,
                grace_seconds=settings.reconnect_grace_seconds,
                token_seconds=settings.centrifugo_token_seconds,
                on_delivered=self.activity.delivered,
            )
        if settings.redis_url is None:
            self.broker = MemoryBroker(
                hub,
                self.alert_log,
                window_seconds=settings.coalesce_seconds,
                on_erased=self._erased_here,
                on_delivered=self.activity.delivered,
                delivery=self.centrifugo,
            )
        else:
            self.shared = self.broker = RedisBroker(
                settings,
                hub,
                self.alert_log,
                url=settings.redis_url,
                instance_id=settings.instance_id or default_instance_id(settings),
                observer=metrics.broker(),
                on_erased=self._erased_here,
                on_delivered=self.activity.delivered,
            )
            self.alert_log.mirrored_by(self.shared)
        self.dispatcher = AlertDispatcher(
            self.broker,
            window_seconds=settings.coalesce_seconds,
            spool=settings.broker_spool,
            breadth=Breadth(
                share=settings.broad_watch_share,
                minimum_searches=settings.broad_watch_min_searches,
                period_seconds=settings.broad_watch_period_seconds,
            ),
            on_published=self.activity.published,
        )
        self.reachability = Leases(
            client,
            indices.alias_for(settings, "watches"),
            settings,
            hub.users if self.centrifugo is None else self.centrifugo.users,
        )
        self.percolator = percolator_type(
            percolation_client or client,
            indices.alias_for(settings, "watches"),
            normalizer,
            self.dispatcher.on_batch,
            batch_size=settings.percolate_batch_size,
            concurrency=settings.percolate_concurrency,
            timeout=settings.percolate_seconds,
            observe=_observe_percolate(metrics),
            leases_hold=self.reachability.hold,
        )
        self.watches = WatchStore(
            client,
            indices.alias_for(settings, "watches"),
            normalizer,
            max_per_user=settings.max_watches_per_user,
            known_categories=catalog.CategoryCache(
                client, indices.alias_for(settings, "products")
            ).names,
            product_name=partial(
                catalog.product_name, client, indices.alias_for(settings, "products")
            ),
            lease_seconds=lease_seconds(settings),
            # With several instances, one owner's adds are held apart across all of them.
            owner_lock=(None if self.shared is None else partial(_watch_lock, self.shared)),
        )
        self.offsite = Offsite(
            client,
            settings,
            owner=settings.instance_id or default_instance_id(settings),
            # The unsubscribe links' key; any secret does where no e-mail is sent.
            secret=secret or "no e-mail here",
            watch_frequencies=self.watches.frequencies,
            turn_frequency=self.watches.turn_frequency,
            observe=_observe_offsite(metrics),
        )
        self.erasure = Erasure(
            client, settings, self.broker, self.alert_log, self.reachability, self.offsite
        )
        self.demand = DemandView(client, settings, self.watches)
        self.visits_seen = VisitsSeen()
        self.product_alerting = ProductAlerting(client, settings, self.percolator)
        # Off-site delivery leaves alerts a socket was sent alone (accounts' only).
        self.shown = (
            ShownAlerts(client, indices.alias_for(settings, "product_alerts"), is_account)
            if settings.offsite.enabled
            else None
        )
        self.product_feed = ProductFeed(
            client,
            settings,
            hub,
            SeenMarks(client, indices.alias_for(settings, "product_seen")),
            self.shown,
            on_delivered=self.activity.product_alert_delivered,
        )
        # A reconnect storm's greetings read through at most a quarter of the client's
        # connections (an eighth for searches, an eighth for documents), leaving the rest to
        # searches, percolation and the log; each request carries the reads of many.
        self.greeting_reads = BatchedReads(
            client, width=max(1, settings.elasticsearch_connections // 8)
        )
        self.readiness = ClusterReadiness(client, settings, on_timeout=self.cluster.trip)
        self.background = Supervisor(on_restart=self._count_restart)

    @classmethod
    @asynccontextmanager
    async def running(
        cls,
        settings: Settings,
        hub: Hub,
        metrics: Metrics,
        *,
        percolator_type: type[Percolator] = Percolator,
        cluster: Breaker | None = None,
        loops: Mapping[str, Loop] | None = None,
        secret: str = "",
    ) -> AsyncIterator[Services]:
        """The services, running until the block ends. `cluster` is tripped by callers that
        saw the cluster hang; here it is probed until it answers. `loops` are the caller's
        own background loops, run and supervised with the services'."""
        client = es.create_client(settings)
        # Percolation's own client hands its responses on undecoded (see Percolator), with
        # a connection for each request it may have in flight: searches' and a product run's.
        percolation_client = es.create_client(
            settings,
            raw_json=True,
            connections=settings.percolate_concurrency + PERCOLATE_CONCURRENCY,
        )
        shared: RedisBroker | None = None
        services: Services | None = None
        try:
            services = cls(
                settings,
                hub,
                metrics,
                client,
                percolator_type=percolator_type,
                percolation_client=percolation_client,
                cluster=cluster,
                secret=secret,
            )
            shared = services.shared
            if shared is not None:
                await shared.start()
            with metrics.observing_gc():
                async with anyio.create_task_group() as group:
                    if shared is not None:
                        services.background.start(group, "broker", shared.run)
                    if services.centrifugo is not None:
                        services.background.start(group, "centrifugo", services.centrifugo.run)
                    services.background.start(group, "percolator", services.percolator.run)
                    services.background.start(group, "dispatcher", services.dispatcher.run)
                    services.background.start(group, "alert_log", services.alert_log.run)
                    services.background.start(group, "search_log", services.activity.run)
                    services.background.start(
                        group, "product_retention", services.product_alerting.retain
                    )
                    services.background.start(group, "event_loop_lag", metrics.watch_event_loop)
                    services.background.start(group, "product_feed", services.product_feed.run)
                    services.background.start(group, "reachability", services.reachability.run)
                    services.background.start(group, "erasure", services.erasure.run)
                    services.background.start(
                        group, "cluster_probe", lambda: services.cluster.run(services.probe_cluster)
                    )
                    if services.shown is not None:
                        services.background.start(group, "shown_alerts", services.shown.run)
                    for name, loop in services.offsite.loops().items():
                        services.background.start(group, name, loop)
                    for name, loop in (loops or {}).items():
                        services.background.start(group, name, loop)
                    yield services
                    group.cancel_scope.cancel()
        finally:
            if services is not None:
                await services.offsite.close()
            if shared is not None:
                await shared.close()
            await percolation_client.close()
            await client.close()

    async def probe_cluster(self) -> None:
        """Whether the cluster answers searches again (the breaker's probe)."""
        await es.answers_searches(
            self.client,
            indices.alias_for(self.settings, "products"),
            request_timeout=min(1.0, self.settings.elasticsearch_timeout),
        )

    def _erased_here(self, user: str) -> None:
        # The broker's listener, set before the erasure exists: called only while running.
        self.erasure.erased_here(user)
        self.offsite.contacts.forget(user)

    def _count_restart(self, loop: str) -> None:
        self.metrics.background_restarts.labels(loop).inc()

    def state(self) -> State:
        return {
            "client": self.client,
            "settings": self.settings,
            "hub": self.hub,
            "broker": self.broker,
            "percolator": self.percolator,
            "dispatcher": self.dispatcher,
            "watches": self.watches,
            "alert_log": self.alert_log,
            "product_alerting": self.product_alerting,
            "product_feed": self.product_feed,
            "metrics": self.metrics,
            "greeting_reads": self.greeting_reads,
            "background": self.background,
            "reachability": self.reachability,
            "readiness": self.readiness,
            "cluster": self.cluster,
            "erasure": self.erasure,
            "offsite": self.offsite,
            "activity": self.activity,
            "demand": self.demand,
            "visits_seen": self.visits_seen,
            "centrifugo": self.centrifugo,
        }

    def readings(self) -> dict[str, float]:
        """The services' own counters, for a metrics scrape."""
        readings: dict[str, float] = {
            "alerts_created": self.dispatcher.alerts,
            "alerts_coalesced": self.dispatcher.coalesced,
            "coalescing_windows": self.dispatcher.open_windows,
            "search_events_dropped": self.percolator.dropped,
            "alert_log_write_failures": self.alert_log.write_failures,
            "alert_log_rejected": self.alert_log.rejected,
            "percolate_batches_failed": self.percolator.failed_batches,
            "product_alerts_sent": self.product_feed.delivered,
            "product_feed_failures": self.product_feed.failures,
            "product_changes_percolated": self.product_alerting.changes_percolated,
            "product_alerts_written": self.product_alerting.alerts_written,
            "watch_lease_writes": self.reachability.writes,
            "watch_lease_refreshes": self.reachability.refreshes,
            "watch_lease_failures": self.reachability.failures,
            "watch_leases_written": self.reachability.leased,
            "offsite_alerts_routed": self.offsite.router.routed,
            "offsite_digests_made": self.offsite.digests.sent,
            "outbox_events_written": self.offsite.outbox.written,
            "outbox_attempts_recorded": self.offsite.outbox.recorded,
            "outbox_leases_lost": self.offsite.outbox.lost_leases,
            "search_log_written": self.activity.written,
            "search_log_dropped": self.activity.dropped,
            "search_log_write_failures": self.activity.write_failures,
            # The greetings' reads, and the requests that carried them: their mean batch.
            "greeting_search_reads": self.greeting_reads.searches.requests,
            "greeting_search_requests": self.greeting_reads.searches.batches,
            "greeting_get_reads": self.greeting_reads.gets.requests,
            "greeting_get_requests": self.greeting_reads.gets.batches,
            "alert_log_cache_hits": self.alert_log.cache.hits,
            "alert_log_cache_fetched": self.alert_log.cache.fetched,
        }
        if self.shared is not None:
            readings["broker_spooled"] = self.dispatcher.spooled
            readings["broker_spool_dropped"] = self.dispatcher.spool_dropped
        if self.centrifugo is not None:
            readings["centrifugo_present"] = len(self.centrifugo.users())
            readings["centrifugo_published"] = self.centrifugo.published
            readings["centrifugo_failed"] = self.centrifugo.failed
        return readings

    async def deliver_pending(self, seconds: float) -> None:
        """At shutdown: percolate the searches already answered (for `seconds` at most) and
        send every pending follow-up, so that their alerts reach the sockets still open."""
        began = time.monotonic()
        with anyio.move_on_after(seconds):
            while not self.percolator.idle():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        await self.dispatcher.flush_all()
        if self.centrifugo is not None:  # what was handed to it, sent before the loops stop
            await self.centrifugo.drain(max(0.5, seconds - (time.monotonic() - began)))
