"""Prometheus metrics, in a registry of the app's own (no process-global state).

Counters the services keep anyway (sockets, alerts, coalesced, dropped) are read when
scraped; latencies are observed where they happen.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_GC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
        ]:
            yield CounterMetricFamily(f"percolert_{name}", help_text, value=values.get(name, 0.0))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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

    def read_from(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_Readings(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
