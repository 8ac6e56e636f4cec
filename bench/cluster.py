"""`bench/harness.py --instances 2`: one instance versus two sharing one Redis, in one run.

The same Elasticsearch node, watches, users, sockets and searches for every design:
- `percolert-per-user`: one instance, the in-process broker (what `nox -s bench` measures);
- `percolert-redis-1`: one instance on the Redis broker (isolates what the broker costs);
- `percolert-redis-2`: two instances sharing that Redis, the sockets split over the two ports
  (socket k on instance k mod 2, so each user's two tabs sit on both instances, the case
  where every sending goes to both inboxes) and the searches alternating between them;
- `percolert-cluster-2`: the same two instances on a Redis Cluster of three primaries, each
  with a replica (`redis+cluster://`, the client in cluster mode; tests/redis_topologies.py),
  as an operator runs it for failover. Every key of the service shares one hash tag, so one
  primary does the broker's work and its replica follows: what the Cluster costs against
  one server is the client's cluster mode and the replication (Redis CPU counts all six
  processes; round trips, the primaries').

The designs take turns (the order rotates every round), so that a machine shared with other
work slows them alike; `--repeat` rounds, medians in the report. Redis is one real
`redis-server` (percolert.dev.redisnode), the Cluster six more (started only when its design
runs), each emptied before its design starts.

    python bench/harness.py --instances 2 --quick   # < 3 minutes: 10k watches, 1k sockets
    python bench/harness.py --instances 2           # 100k watches, 5k sockets, 100/s

Writes docs/benchmarks/multi-instance.json and multi-instance-results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import psutil
import redis

from bench.rig import (
    REPORT_DIR,
    Server,
    Subscribers,
    cpu_seconds,
    drive,
    es_stats,
    make_users,
    percentiles,
    scrape_metrics,
    warm_up,
)
from percolert.dev.redisnode import RedisNode
from tests.redis_topologies import RedisClusterNodes
from tests.servers import free_port

DESIGNS = ("percolert-per-user", "percolert-redis-1", "percolert-redis-2", "percolert-cluster-2")
# Each design's search ids start with its own tag (a round's files are named by it).
TAGS = {
    "percolert-per-user": "u1",
    "percolert-redis-1": "11",
    "percolert-redis-2": "22",
    "percolert-cluster-2": "c2",
}
# Run unless --designs names them: the Cluster's own design is asked for.
DEFAULT_DESIGNS = DESIGNS[:3]
LABELS = {
    "percolert-per-user": "1 instance, in-process broker",
    "percolert-redis-1": "1 instance, Redis broker",
    "percolert-redis-2": "2 instances, Redis broker",
    "percolert-cluster-2": "2 instances, Redis Cluster broker (3 primaries, 3 replicas)",
}
TABS = 2
# After the last search, a step waits for its alerts until none has arrived for this long.
LATE_SECONDS = 3.0
SETTLE_SECONDS = 120.0
# Commands the harness itself sends to Redis while measuring (not the broker's round trips).
HARNESS_COMMANDS = {"info", "flushall", "config|resetstat"}


@dataclass
class ClusterStep:
    design: str
    instances: int
    round: int
    watches: int
    sockets: int
    rate: float
    searches: int = 0
    search_errors: int = 0
    alerts_expected: int = 0
    alerts_delivered: int = 0
    # Alerts past the expected count of their search (a socket alerted twice, say).
    alerts_extra: int = 0
    # The step's alerts that had arrived when the design's last step was done (late ones
    # of an earlier step arrive during the next): what was lost is expected minus these.
    alerts_arrived_by_end: int = 0
    alert_ms: dict[str, float] = field(default_factory=dict)
    dispatch_ms: dict[str, float] = field(default_factory=dict)
    search_ms: dict[str, float] = field(default_factory=dict)
    sockets_closed: int = 0
    # Percent of one core over the step; servers summed over the instances.
    server_cpu_percent: float = 0.0
    redis_cpu_percent: float = 0.0
    client_cpu_percent: float = 0.0
    es_cpu_percent: float = 0.0
    # CPU milliseconds of the servers plus redis-server per delivered alert.
    cpu_ms_per_alert: float = 0.0
    # Requests the instances made to Redis (script calls, inbox reads, ...) per search, and
    # every command Redis ran (inside scripts too) per search; by command in redis_calls.
    redis_round_trips_per_search: float = 0.0
    redis_commands_per_search: float = 0.0
    redis_calls: dict[str, int] = field(default_factory=dict)
    redis_used_memory_mb: float = 0.0
    loop_lags_over_25ms: int = 0
    loop_lags_over_100ms: int = 0
    # Elasticsearch over the step: young-collection time, old collections, and ms per
    # second by index clock (what else it was busy with).
    es_young_gc_ms: float = 0.0
    es_old_gcs: int = 0
    es_ms_per_s: dict[str, float] = field(default_factory=dict)


def script_commands() -> set[str]:
    """The commands the broker's Lua scripts run inside Redis: counted by `INFO
    commandstats` like any other, but no round trip of their own."""
    folder = resources.files("percolert.broker").joinpath("lua")
    found: set[str] = set()
    for script in folder.iterdir():
        if script.name.endswith(".lua"):
            found.update(
                name.lower()
                for name in re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", script.read_text())
            )
    return found


@dataclass
class RedisUnderTest:
    """The Redis a design runs on: its URL for the instances, every process it runs (whose
    CPU counts) and the primaries that take the instances' commands."""

    url: str
    processes: list[psutil.Process]
    primaries: list[redis.Redis]

    @classmethod
    def server(cls, url: str, pid: int) -> RedisUnderTest:
        return cls(url, [psutil.Process(pid)], [redis.Redis.from_url(url)])

    @classmethod
    def cluster(cls, nodes: RedisClusterNodes) -> RedisUnderTest:
        return cls(
            nodes.url,
            [psutil.Process(pid) for pid in nodes.pids()],
            [redis.Redis(port=port) for port in nodes.primaries()],
        )

    def empty(self) -> None:
        for primary in self.primaries:
            primary.flushall()  # a Cluster's replicas follow their primary

    def command_calls(self) -> dict[str, int]:
        """Commands run so far, by name, summed over the primaries."""
        calls: dict[str, int] = defaultdict(int)
        for primary in self.primaries:
            for name, value in primary.info("commandstats").items():
                calls[name.removeprefix("cmdstat_")] += int(value["calls"])
        return calls

    def used_memory_mb(self) -> float:
        used = sum(int(primary.info("memory")["used_memory"]) for primary in self.primaries)
        return round(used / 2**20, 1)

    def close(self) -> None:
        for primary in self.primaries:
            primary.close()


def wait_for_alerts(subscribers: list[Subscribers], prefix: str, expected: int) -> None:
    """Until the step's `expected` alerts have arrived, or none has for LATE_SECONDS: an
    alert that is late counts as delivered (and in the latencies), one that never comes
    does not."""
    count, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < LATE_SECONDS:
        time.sleep(0.5)
        now = sum(
            len(arrived)
            for subscriber in subscribers
            for rid, arrived in subscriber.arrivals()[0].items()
            if rid.startswith(prefix)
        )
        if now >= expected:
            return
        if now != count:
            count, last_change = now, time.monotonic()


def settle(node_url: str) -> None:
    """Wait until Elasticsearch has stopped reading the alert log after the sockets opened.
    Seen here: once users had long histories, Elasticsearch kept fetching from the alerts
    index at 1.4 s per second for tens of seconds after every socket had its hello, and every
    design's alerts waited seconds behind it. The same for every design; not what this
    benchmark compares."""

    def reading() -> float:
        stats = es_stats(node_url)
        return stats.get("alerts query", 0.0) + stats.get("alerts fetch", 0.0)

    deadline = time.monotonic() + SETTLE_SECONDS
    before = reading()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = reading()
        if now - before < 50.0:  # ms of alert-log reading in the last second
            return
        before = now
    print("  Elasticsearch still reading the alert log; measuring anyway", flush=True)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def run_design(
    design: str,
    round_number: int,
    node: psutil.Process,
    node_url: str,
    under_test: RedisUnderTest,
    scratch: Path,
    watches: int,
    cookies: list[str | None],
    sockets_per_word: dict[str, int],
    rates: list[float],
    seconds: float,
) -> list[ClusterStep]:
    on_redis = design != "percolert-per-user"
    count = 2 if design.endswith("-2") else 1
    if on_redis:
        under_test.empty()  # no presence, inbox or window left by the design before
    servers: list[Server] = []
    subscribers: list[Subscribers] = []
    inside_scripts = script_commands()
    steps: list[ClusterStep] = []
    sent_by_step: list[set[str]] = []
    try:
        for number in range(count):
            servers.append(
                Server(
                    design,
                    node_url,
                    scratch,
                    redis_url=under_test.url if on_redis else None,
                    name=f"{design}-{number + 1}",
                )
            )
        for number, server in enumerate(servers):
            try:
                subscribers.append(Subscribers(server, cookies[number::count], scratch))
            except SystemExit:
                for each in servers:
                    print(f"{each.name}'s log ends:\n{each.tail_of_log()}", flush=True)
                raise
        settle(node_url)
        first, others = servers[0], servers[1:]
        tag = f"{TAGS[design]}r{round_number}"
        drive(first, rates[0], seconds, f"warm-{tag}", scratch, also=others)
        for step_number, rate in enumerate(rates):
            step = ClusterStep(
                design=design,
                instances=count,
                round=round_number,
                watches=watches,
                sockets=len(cookies),
                rate=rate,
            )
            processes = [
                *(server.ps for server in servers),
                *under_test.processes,
                *(subscriber.ps for subscriber in subscribers),
                node,
            ]
            cpu_before = [cpu_seconds(process) for process in processes]
            calls_before = under_test.command_calls()
            metrics_before = [scrape_metrics(server.url) for server in servers]
            es_before = es_stats(node_url)
            started = time.monotonic()
            sent, words, search_ms, errors = drive(
                first, rate, seconds, f"{tag}s{step_number}", scratch, also=others
            )
            expected = sum(sockets_per_word[word] for word in words.values())
            wait_for_alerts(subscribers, f"{tag}s{step_number}-", expected)
            wall = time.monotonic() - started
            used = [
                cpu_seconds(process) - before
                for process, before in zip(processes, cpu_before, strict=True)
            ]
            calls_after = under_test.command_calls()
            es_change = {
                name: value - es_before.get(name, 0.0) for name, value in es_stats(node_url).items()
            }
            step.es_young_gc_ms = es_change.pop("young_gc_ms")
            step.es_old_gcs = int(es_change.pop("old_gcs"))
            step.es_ms_per_s = {
                name: round(value / wall, 1) for name, value in es_change.items() if value
            }
            server_cpu = sum(used[:count])
            clients_from = count + len(under_test.processes)
            redis_cpu = sum(used[count:clients_from])
            step.server_cpu_percent = round(100 * server_cpu / wall, 1)
            step.redis_cpu_percent = round(100 * redis_cpu / wall, 1)
            step.client_cpu_percent = round(100 * sum(used[clients_from:-1]) / wall, 1)
            step.es_cpu_percent = round(100 * used[-1] / wall, 1)
            step.redis_calls = {
                name: calls - calls_before.get(name, 0)
                for name, calls in sorted(calls_after.items())
                if calls - calls_before.get(name, 0) and name not in HARNESS_COMMANDS
            }
            step.redis_used_memory_mb = under_test.used_memory_mb()
            for before, server in zip(metrics_before, servers, strict=True):
                after = scrape_metrics(server.url)
                step.loop_lags_over_25ms += int(after["lags_over_25ms"] - before["lags_over_25ms"])
                step.loop_lags_over_100ms += int(
                    after["lags_over_100ms"] - before["lags_over_100ms"]
                )
            step.searches = len(sent)
            step.search_errors = errors
            step.search_ms = percentiles(search_ms)
            if step.searches:
                step.redis_commands_per_search = round(
                    sum(step.redis_calls.values()) / step.searches, 2
                )
                step.redis_round_trips_per_search = round(
                    sum(
                        calls
                        for name, calls in step.redis_calls.items()
                        if name not in inside_scripts
                    )
                    / step.searches,
                    2,
                )
            received: dict[str, list[tuple[float, int]]] = defaultdict(list)
            first_sent = min(sent.values())
            for subscriber in subscribers:
                arrived, closed = subscriber.arrivals()
                for rid, got in arrived.items():
                    received[rid] += got
                step.sockets_closed += sum(1 for at in closed if at >= first_sent)
            latencies: list[float] = []
            to_dispatch: list[float] = []
            for rid, at in sent.items():
                expected = sockets_per_word[words[rid]]
                got = received.get(rid, [])
                step.alerts_expected += expected
                step.alerts_extra += max(0, len(got) - expected)
                for arrival, seq in got:
                    latencies.append((arrival - at) * 1000)
                    # Both brokers number a sending at or above the µs time it was made
                    # (the Redis one on Redis's clock, the same machine's here).
                    to_dispatch.append(seq / 1000 - at * 1000)
            step.alerts_delivered = len(latencies)
            step.alert_ms = percentiles(latencies)
            step.dispatch_ms = percentiles(to_dispatch)
            if step.alerts_delivered:
                step.cpu_ms_per_alert = round(
                    1000 * (server_cpu + (redis_cpu if on_redis else 0.0)) / step.alerts_delivered,
                    4,
                )
            steps.append(step)
            sent_by_step.append(set(sent))
            print(
                f"  round {round_number} {design} ({count} instance(s)) {rate:g}/s: "
                f"alert p50 {step.alert_ms.get('p50')} p99 {step.alert_ms.get('p99')} ms, "
                f"{step.alerts_delivered}/{step.alerts_expected} alerts "
                f"(+{step.alerts_extra} extra, {step.sockets_closed} sockets closed); "
                f"search p99 {step.search_ms.get('p99')} ms, errors {errors}; "
                f"CPU servers {step.server_cpu_percent}% redis {step.redis_cpu_percent}% "
                f"client {step.client_cpu_percent}% es {step.es_cpu_percent}%; "
                f"{step.cpu_ms_per_alert} CPU ms/alert; Redis round trips/search "
                f"{step.redis_round_trips_per_search}, commands/search "
                f"{step.redis_commands_per_search}; loop lags >25 ms "
                f"{step.loop_lags_over_25ms}; ES young GC {step.es_young_gc_ms:g} ms, "
                f"ms/s {step.es_ms_per_s}",
                flush=True,
            )
        wait_for_alerts(subscribers, f"{tag}s", sum(s.alerts_expected for s in steps))
        for step, rids in zip(steps, sent_by_step, strict=True):
            step.alerts_arrived_by_end = sum(
                len(arrived)
                for subscriber in subscribers
                for rid, arrived in subscriber.arrivals()[0].items()
                if rid in rids
            )
    finally:
        for subscriber in subscribers:
            subscriber.stop()
        for server in servers:
            server.stop()
    return steps


def run(
    node: psutil.Process,
    node_url: str,
    scratch: Path,
    watches: int,
    sockets: int,
    rates: list[float],
    seconds: float,
    rounds: int,
    warm_up_seconds: float,
    designs: list[str],
) -> list[ClusterStep]:
    """Every design `rounds` times, in turns, on one configuration already loaded."""
    redis_node = RedisNode(scratch / "redis-state")
    state, _ = redis_node.start(free_port())
    cluster_nodes = None
    under_test = {"server": RedisUnderTest.server(state.url, state.pid)}
    try:
        if "percolert-cluster-2" in designs:
            cluster_nodes = RedisClusterNodes(scratch / "redis-cluster")
            under_test["cluster"] = RedisUnderTest.cluster(cluster_nodes)
        # The users (and their watches) once, for every design: the same sockets each time.
        maker = Server("percolert-per-user", node_url, scratch, name="make-users")
        try:
            users = asyncio.run(make_users(maker.url, sockets // TABS, "percolert-per-user"))
        finally:
            maker.stop()
        cookies = [cookie for cookie, _ in users for _ in range(TABS)]
        sockets_per_word: dict[str, int] = defaultdict(int)
        for _, word in users:
            if word is not None:
                sockets_per_word[word] += TABS
        warm_up(node, node_url, scratch, warm_up_seconds)
        steps: list[ClusterStep] = []
        for round_number in range(rounds):
            turn = round_number % len(designs)
            for design in designs[turn:] + designs[:turn]:
                steps += run_design(
                    design,
                    round_number,
                    node,
                    node_url,
                    under_test["cluster" if design == "percolert-cluster-2" else "server"],
                    scratch,
                    watches,
                    cookies,
                    sockets_per_word,
                    rates,
                    seconds,
                )
        return steps
    finally:
        for each in under_test.values():
            each.close()
        if cluster_nodes is not None:
            cluster_nodes.stop()
        redis_node.stop()


def summary_rows(steps: list[ClusterStep]) -> list[str]:
    """One row per (configuration, rate, design): the medians over the rounds."""
    groups: dict[tuple[int, int, float, str], list[ClusterStep]] = defaultdict(list)
    for step in steps:
        groups[(step.watches, step.sockets, step.rate, step.design)].append(step)
    rows = []
    for (watches, sockets, rate, design), group in groups.items():
        delivered = sum(s.alerts_arrived_by_end for s in group)
        expected = sum(s.alerts_expected for s in group)
        extra = sum(s.alerts_extra for s in group)
        p99s = [s.alert_ms.get("p99", 0.0) for s in group]
        reference = groups.get((watches, sockets, rate, "percolert-per-user"), [])
        reference_p99 = median([s.alert_ms.get("p99", 0.0) for s in reference])
        versus = f"{median(p99s) / reference_p99:.2f}x" if reference_p99 else "-"
        rows.append(
            f"| {LABELS.get(design, design)} | {watches} | {sockets} | {rate:g} | {len(group)} "
            f"| {100 * delivered / expected if expected else 0:.2f}% ({delivered}/{expected}"
            f"{f', +{extra} extra' if extra else ''}) "
            f"| {median([s.alert_ms.get('p50', 0.0) for s in group])} "
            f"| {median(p99s)} ({', '.join(f'{p:g}' for p in p99s)}) | {versus} "
            f"| {median([s.cpu_ms_per_alert for s in group])} "
            f"| {median([s.server_cpu_percent for s in group])}% "
            + (
                # The Redis is there, but not this design's (it holds the others' keys).
                "| - | - | - | - |"
                if design == "percolert-per-user"
                else f"| {median([s.redis_cpu_percent for s in group])}% "
                f"| {median([s.redis_round_trips_per_search for s in group])} "
                f"| {median([s.redis_commands_per_search for s in group])} "
                f"| {median([s.redis_used_memory_mb for s in group])} MB |"
            )
        )
    return rows


def write_report(steps: list[ClusterStep], load: str) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "multi-instance.json").write_text(
        json.dumps([asdict(s) for s in steps], indent=2) + "\n"
    )
    lines = [
        "# One instance versus two sharing one Redis",
        "",
        f"Generated by `nox -s bench -- --instances 2` (bench/cluster.py) on {os.cpu_count()} "
        f"cores shared by everything (Elasticsearch, the servers, redis-server, the Go load "
        f"client). Load average before the run: {load}. Medians over the rounds; the p99 "
        "column also lists each round's. CPU per alert: the servers' plus redis-server's CPU "
        "time over the step, divided by the alerts delivered. Round trips: requests the "
        "instances sent to Redis (`INFO commandstats`, less the commands run inside scripts) "
        "per search, background traffic (heartbeats, blocking inbox reads, window sweeps) "
        "included. Delivered: alerts that had arrived when the design's last step was done "
        "(the step table also shows those within the step and its wait). Analysis: "
        "docs/benchmarks/multi-instance.md.",
        "",
        "| design | watches | sockets | searches/s | rounds | delivered | alert p50 ms "
        "| p99 ms (each round) | p99 ÷ 1 instance in-process | CPU ms/alert | CPU servers "
        "| CPU redis | Redis round trips/search | Redis commands/search | Redis memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *summary_rows(steps),
        "",
        "## Every step",
        "",
        "| round | design | rate/s | alert p50 | p90 | p99 | max | dispatched p99 | delivered "
        "| search p99 | CPU servers | redis | client | ES | CPU ms/alert | round trips/search "
        "| loop lags >25 ms | Redis calls |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in steps:
        a = s.alert_ms
        calls = ", ".join(f"{name} {calls}" for name, calls in s.redis_calls.items())
        late = s.alerts_arrived_by_end != s.alerts_delivered
        by_end = f" ({s.alerts_arrived_by_end} by the end)" if late else ""
        lines.append(
            f"| {s.round} | {s.design} | {s.rate:g} | {a.get('p50', '-')} | {a.get('p90', '-')} "
            f"| {a.get('p99', '-')} | {a.get('max', '-')} | {s.dispatch_ms.get('p99', '-')} "
            f"| {s.alerts_delivered}/{s.alerts_expected}{by_end} | {s.search_ms.get('p99', '-')} "
            f"| {s.server_cpu_percent}% | {s.redis_cpu_percent}% | {s.client_cpu_percent}% "
            f"| {s.es_cpu_percent}% | {s.cpu_ms_per_alert} | {s.redis_round_trips_per_search} "
            f"| {s.loop_lags_over_25ms} | {calls or '-'} |"
        )
    (REPORT_DIR / "multi-instance-results.md").write_text("\n".join(lines) + "\n")


def configure(args: argparse.Namespace) -> tuple[int, int, list[float], float, int, float]:
    """(watches, sockets, rates, seconds, rounds, warm-up) of the issue's configuration, or
    of the quick one."""
    if args.quick:
        watches, sockets, rates, seconds, rounds, warm = 10_000, 1_000, [100.0], 5.0, 2, 10.0
    else:
        watches, sockets, rates, seconds, rounds, warm = (
            100_000,
            5_000,
            [50.0, 100.0],
            10.0,
            3,
            60.0,
        )
    if args.configs:
        watches, sockets = (int(part) for part in args.configs.split(",")[0].split(":"))
    if args.rates:
        rates = [float(rate) for rate in args.rates.split(",")]
    return (
        watches,
        sockets,
        rates,
        args.seconds or seconds,
        args.repeat or rounds,
        warm if args.warm_up is None else args.warm_up,
    )
