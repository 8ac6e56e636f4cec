"""Prometheus metrics, in a registry of the app's own (no process-global state).

Counters the services keep anyway (sockets, alerts, coalesced, dropped) are read when
scraped; latencies are observed where they happen. Every instance exports its id
(`percolert_instance_info{instance}`); one on a shared Redis also its broker's traffic
(`BrokerMetrics`, handed to the broker).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_GC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A Redis round trip on a LAN is a fraction of a millisecond; the top buckets are for a
# blocking read that waited out its block, and for a struggling Redis.
_ROUND_TRIP_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    2.5,
)


class _Readings(Collector):
    """Reads the services' own counters at scrape time."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        yield GaugeMetricFamily(
            "percolert_connected_sockets", "Open alert sockets", value=values["sockets"]
        )
        yield GaugeMetricFamily(
            "percolert_connected_users", "Users with an open socket", value=values["users"]
        )
        yield GaugeMetricFamily(
            "percolert_coalescing_windows",
            "Coalescing windows open: (recipient, watch) pairs whose repeats are being folded",
            value=values.get("coalescing_windows", 0.0),
        )
        for name, help_text in [
            ("alerts_sent", "Alert messages queued to sockets"),
            ("alerts_created", "Alerts created (one per recipient, or per default broadcast)"),
            ("alerts_coalesced", "Matches folded into a follow-up alert"),
            ("alerts_dropped_slow_socket", "Sockets closed for falling behind (1013)"),
            ("search_events_dropped", "Searches not percolated because the queue was full"),
            ("alert_log_write_failures", "Failed writes of the alert log (retried)"),
            (
                "percolate_batches_failed",
                "Percolate batches given up (Elasticsearch error, timeout or a bug): their "
                "searches alert nobody",
            ),
            ("alert_log_rejected", "Alert-log sendings Elasticsearch refused for good (dropped)"),
            (
                "alert_log_cache_hits",
                "Stored sendings a read of the alert log took from the cache (greetings)",
            ),
            (
                "alert_log_cache_fetched",
                "Stored sendings fetched whole into the cache, once for all who wanted them",
            ),
            ("product_alerts_sent", "Product alert messages queued to sockets (live)"),
            (
                "product_feed_failures",
                "Reads of new product alerts that failed (Elasticsearch): retried next tick",
            ),
            (
                "product_changes_percolated",
                "Catalog changes this process percolated against product watches",
            ),
            (
                "product_alerts_written",
                "Product alerts this process wrote (one per owner and watch and run: a digest)",
            ),
            ("watch_lease_writes", "Bulk requests leasing watches of connected users"),
            ("watch_lease_refreshes", "Refreshes making new leases visible before a hello"),
            ("watch_lease_failures", "Lease writes that failed (the users are retried)"),
            ("watch_leases_written", "Watch leases written (connects and renewals)"),
            (
                "offsite_alerts_routed",
                "Accounts' product alerts no socket showed in time, routed off-site",
            ),
            ("offsite_digests_made", "Daily or weekly digests this process made"),
            ("outbox_events_written", "Off-site events this process wrote to the outbox"),
            ("outbox_attempts_recorded", "Off-site attempts this process recorded"),
            (
                "outbox_leases_lost",
                "Attempts recorded too late: the lease ran out and another instance took the event",
            ),
            ("search_log_written", "Search log entries written (searches counted by text)"),
            (
                "search_log_dropped",
                "Search log entries dropped: the buffer was full or Elasticsearch refused them",
            ),
            ("search_log_write_failures", "Failed writes of the search log (retried)"),
        ]:
            yield CounterMetricFamily(f"percolert_{name}", help_text, value=values.get(name, 0.0))
        if "greeting_search_reads" in values:
            # Reads ÷ requests is the greetings' mean batch (engine/reads.py).
            reads = CounterMetricFamily(
                "percolert_greeting_reads",
                "Elasticsearch reads of sockets' greetings (searches, and gets of seen marks)",
                labels=["kind"],
            )
            requests = CounterMetricFamily(
                "percolert_greeting_read_requests",
                "Requests (_msearch, _mget) that carried the greetings' reads, batched",
                labels=["kind"],
            )
            for kind in ("search", "get"):
                reads.add_metric([kind], values[f"greeting_{kind}_reads"])
                requests.add_metric([kind], values[f"greeting_{kind}_requests"])
            yield reads
            yield requests
        if "centrifugo_present" in values:  # delivery through Centrifugo
            yield GaugeMetricFamily(
                "percolert_centrifugo_present",
                "Users with a client on their Centrifugo personal channel (last read)",
                value=values["centrifugo_present"],
            )
            yield CounterMetricFamily(
                "percolert_centrifugo_published",
                "Alert messages Centrifugo took (a broadcast counts each channel)",
                value=values["centrifugo_published"],
            )
            yield CounterMetricFamily(
                "percolert_centrifugo_failed",
                "Alert messages Centrifugo refused or did not answer for (not retried)",
                value=values["centrifugo_failed"],
            )
        if "broker_spooled" in values:  # a shared broker's (an embedded one is never away)
            yield GaugeMetricFamily(
                "percolert_broker_spooled",
                "Searches with matches waiting for the broker (Redis unreachable)",
                value=values["broker_spooled"],
            )
            yield CounterMetricFamily(
                "percolert_broker_spool_dropped",
                "Searches dropped from a full broker spool (their alerts are lost)",
                value=values["broker_spool_dropped"],
            )


class BrokerMetrics:
    """What the Redis broker reports as it works: what it publishes and receives, how long
    each Redis call takes, and the faults it gets over (reconnects, gaps in what it
    received). The broker calls these; it keeps no metrics of its own. Without a registry
    they count for nobody (a broker built outside an app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._publishes = Counter(
            "percolert_broker_publishes",
            "Messages this instance published through Redis: sendings to users, default-watch "
            "sendings to everyone (one per search), and ready-made user messages "
            "(watches_changed)",
            ["kind"],
            registry=registry,
        )
        self._received = Counter(
            "percolert_broker_received",
            "Messages this instance read from its inbox (its own sendings included)",
            registry=registry,
        )
        self._round_trip = Histogram(
            "percolert_broker_round_trip_seconds",
            "One Redis call of the broker, by operation (xread: a blocking read of the inbox, "
            "up to its block time when nothing comes)",
            ["op"],
            buckets=_ROUND_TRIP_BUCKETS,
            registry=registry,
        )
        self._reconnects = Counter(
            "percolert_broker_reconnects",
            "Times the broker got Redis back after losing it",
            registry=registry,
        )
        self._gaps = Counter(
            "percolert_broker_gaps",
            "Gaps detected in what this instance received, by cause; the affected sockets "
            "resume from the alert log",
            ["cause"],
            registry=registry,
        )
        self._resync_closed = Counter(
            "percolert_broker_resync_closed",
            "Sockets closed with 1012 to replay a gap from the alert log",
            registry=registry,
        )
        self._up = Gauge(
            "percolert_broker_up",
            "1 while the last Redis call of the broker succeeded, else 0",
            registry=registry,
        )
        self._instances = Gauge(
            "percolert_broker_instances",
            "Live instances in the presence registry, as of this instance's last heartbeat",
            registry=registry,
        )
        # Exported from the start, at zero: a rate needs a first sample.
        for kind in ("user", "everyone", "user_message"):
            self._publishes.labels(kind)
        for op in ("seed", "heartbeat", "presence", "hits", "claim", "publish", "notify", "xread"):
            self._round_trip.labels(op)

    def published(self, kind: str, count: int = 1) -> None:
        self._publishes.labels(kind).inc(count)

    def received(self, count: int = 1) -> None:
        self._received.inc(count)

    @contextmanager
    def round_trip(self, op: str) -> Iterator[None]:
        """Time one Redis call; whether it succeeded sets `percolert_broker_up`."""
        started = time.perf_counter()
        try:
            yield
        except Exception:  # not a cancellation: that says nothing about Redis
            self._up.set(0)
            raise
        self._round_trip.labels(op).observe(time.perf_counter() - started)
        self._up.set(1)

    def reconnected(self) -> None:
        self._reconnects.inc()

    def gap(self, cause: str) -> None:
        self._gaps.labels(cause).inc()

    def resync_closed(self) -> None:
        self._resync_closed.inc()

    def instances(self, count: int) -> None:
        self._instances.set(count)


class Metrics:
    def __init__(self, instance_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        Info("percolert_instance", "This instance's id", registry=self.registry).info(
            {"instance": instance_id}
        )
        self._broker: BrokerMetrics | None = None
        self.search_seconds = Histogram(
            "percolert_search_seconds",
            "Catalog search latency, as the app sees it",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.percolate_seconds = Histogram(
            "percolert_percolate_seconds",
            "One percolate request (a batch of search events)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.percolate_batch_size = Histogram(
            "percolert_percolate_batch_size",
            "Search events per percolate request",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.elasticsearch_errors = Counter(
            "percolert_elasticsearch_errors",
            "Failed Elasticsearch operations",
            ["operation"],
            registry=self.registry,
        )
        self.background_restarts = Counter(
            "percolert_background_restarts",
            "Background loops restarted after a crash (logged with its traceback)",
            ["loop"],
            registry=self.registry,
        )
        self.offsite_attempts = Counter(
            "percolert_offsite_attempts",
            "Attempts at off-site events, by channel (webhook, email) and outcome (delivered, "
            "retry, failed, gone)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.offsite_attempt_seconds = Histogram(
            "percolert_offsite_attempt_seconds",
            "One attempt at an off-site event, by channel",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.refused = Counter(
            "percolert_refused",
            "Requests and handshakes refused by a limit (searches, watch_changes, new_sessions, "
            "sockets: rate limits; open_sockets: the per-user socket cap)",
            ["limit"],
            registry=self.registry,
        )

        self.gc_pause_seconds = Histogram(
            "percolert_gc_pause_seconds",
            "Pauses of the cyclic garbage collector, by generation (2: a full collection)",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=self.registry,
        )

        self.event_loop_lag_seconds = Histogram(
            "percolert_event_loop_lag_seconds",
            "How late the event loop woke a periodic timer: how long everything waited behind "
            "whatever held the loop",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )

    async def watch_event_loop(self, interval: float = 0.02) -> None:
        """Observe the event loop's lag every `interval`, until cancelled: one socket's
        alert, one search or one collection that holds the loop delays all the others."""
        while True:
            started = time.perf_counter()
            await anyio.sleep(interval)
            self.event_loop_lag_seconds.observe(max(0.0, time.perf_counter() - started - interval))

    @contextmanager
    def observing_gc(self) -> Iterator[None]:
        """Time every garbage collection while inside: a full collection stops every socket,
        so its pauses are part of alert latency (docs/benchmarks/)."""
        started = [0.0]

        def observe(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self.gc_pause_seconds.labels(str(info["generation"])).observe(
                    time.perf_counter() - started[0]
                )

        gc.callbacks.append(observe)
        try:
            yield
        finally:
            gc.callbacks.remove(observe)

    def broker(self) -> BrokerMetrics:
        """The broker's metrics, registered on first use: only an instance on a shared Redis
        has them (the app's services may start more than once; the metrics stay)."""
        if self._broker is None:
            self._broker = BrokerMetrics(self.registry)
        return self._broker

    def read_from(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_Readings(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
