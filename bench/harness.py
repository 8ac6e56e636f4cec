"""The search-to-alert benchmark: Percolert side by side with the seed design (baseline).

Separate processes: Elasticsearch (a fresh dev node), the server under test (Percolert or
bench/baseline.py), the Go load client (tools/wsload: subscriber sockets, and the open-loop
search driver) and this orchestrator. Every alert is timed from the moment its search was
sent to the moment each recipient socket received it. The servers, the load client and the
probes are bench/rig.py's (bench/cluster.py runs on the same).

Designs measured, per configuration (W watches, S sockets):
- `percolert-broadcast`: equal work with the baseline — one default watch that reaches every
  socket (coalescing off, so every search alerts everyone);
- `baseline-broadcast`: the seed design's loop over every socket;
- `percolert-per-user`: the real use — W per-user watches, each search reaching only its
  matching subscribers (the baseline cannot express this);
- `percolert-alerts-off`: per-user again with `PERCOLERT_ALERTS=off`, the reference for
  "search latency with alerts on versus off".

With `--peer centrifugo`, each design that alerts ends its run with a reconnect step at its
first rate (`--reconnect-rate`): a tenth of its sockets (`--reconnect-share`) is closed
abruptly 30 % into the step, stays away 1.5 s (`--reconnect-away`) while alerts keep coming,
and resumes (Percolert: `/ws?after=` the last seq seen; Centrifugo: `recover` from the last
offset). bench/reconnect.py counts what those sockets missed and what came twice.

    python bench/harness.py --quick            # < 3 minutes: 10k watches, 1k sockets
    python bench/harness.py                    # 10k and 100k watches, 1k and 5k sockets
    python bench/harness.py --instances 2      # one instance against two on Redis (cluster.py)
    python bench/harness.py --peer centrifugo [--quick]  # beside Centrifugo (peer_report.py)
    python bench/harness.py --peer centrifugo --peer-nodes 2  # two nodes on Redis (nodes.py)

Writes docs/benchmarks/results.json, results.md and latency_vs_rate.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import cluster
from bench import reconnect as reconnection
from bench.cpu_budget import BudgetError, CpuBudget, budget_note, throttled_note
from bench.nodes import SocketGroup, deploy
from bench.peer_report import write_peer_report
from bench.rig import (
    BROADCAST,
    PER_USER,
    PREFIX,
    REPORT_DIR,
    ROOT,
    Server,
    build_wsload,
    cpu_seconds,
    drive,
    es_stats,
    make_users,
    percentiles,
    scrape_metrics,
    warm_up,
)
from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings, from_environment
from percolert.core.text import STOP_WORDS, TextNormalizer
from percolert.dev.devnode import DevNode
from percolert.dev.localservice import ServiceState
from percolert.engine import es, indices
from percolert.watches.store import WatchStore
from tests.servers import free_port

# `--peer centrifugo`: Percolert's designs and Centrifugo's doing the same work, and the
# reference for Percolert's alert path (bench/peer_report.py).
PEER_DESIGNS = (
    "percolert-alerts-off,percolert-per-user,centrifugo-per-user,"
    "percolert-broadcast,centrifugo-broadcast"
)

# The servers' logs of the last run, kept for a look at what went wrong (refused or slow
# greetings, Elasticsearch errors).
LOG_DIR = ROOT / ".percolert" / "bench-logs"
# Open files each process needs beside its sockets (the server's Elasticsearch
# connections, logs, the load client's record).
SPARE_FILES = 1_000
# A design stops climbing rates after a step this far past the bar (it only gets worse).
GIVE_UP_P99_MS = 2_000.0


@dataclass
class Step:
    design: str
    watches: int
    sockets: int
    rate: float
    searches: int = 0
    search_errors: int = 0
    alerts_expected: int = 0
    alerts_delivered: int = 0
    alert_ms: dict[str, float] = field(default_factory=dict)
    # Search sent -> alert dispatched by the server (the search, percolation and matching);
    # the rest of alert_ms is the fan-out to the sockets. Percolert only.
    dispatch_ms: dict[str, float] = field(default_factory=dict)
    # Alert dispatched (its seq, the dispatch time in microseconds) -> received: the fan-out.
    fanout_ms: dict[str, float] = field(default_factory=dict)
    search_ms: dict[str, float] = field(default_factory=dict)
    alerts_per_s: float = 0.0
    sockets_closed: int = 0  # by the server during the step (a slow-client 1013, say)
    server_cpu_percent: float = 0.0
    # Centrifugo's designs: its process (the sockets' server; Percolert is `server`).
    peer_cpu_percent: float = 0.0
    # The nodes holding the sockets (`--peer-nodes`): 1, or 2 sharing a Redis, Percolert's
    # instances or Centrifugo's nodes (bench/nodes.py); the CPU figures above are then
    # summed over the processes, and this is the Redis's.
    instances: int = 1
    redis_cpu_percent: float = 0.0
    wall_seconds: float = 0.0  # the step's length, the drain of the last alerts included
    client_cpu_percent: float = 0.0  # the load client (subscriber sockets)
    # With `--client-cpus`: how long the load client's budget held it back in the step.
    client_throttled_ms: float | None = None
    es_cpu_percent: float = 0.0
    server_peak_rss_mb: float = 0.0
    percolate_ms_per_batch: float | None = None
    percolate_events_per_batch: float | None = None
    # Elasticsearch requests (as the server timed them) that took over 100 ms.
    percolates_over_100ms: int = 0
    searches_over_100ms: int = 0
    # The server's full garbage collections (which pause every socket) during the step.
    full_gcs: int = 0
    full_gc_ms: float = 0.0
    # Times the server's event loop woke a 20 ms timer over 25 ms / 100 ms late: everything
    # on it (searches, percolation results, every socket) waited that long.
    loop_lags_over_25ms: int = 0
    loop_lags_over_100ms: int = 0
    # Elasticsearch's JVM: time in young-generation collections, and old collections.
    es_young_gc_ms: float = 0.0
    es_old_gcs: int = 0
    # Milliseconds per second Elasticsearch spent, by "index clock" ("alerts index", ...).
    es_ms_per_s: dict[str, float] = field(default_factory=dict)
    # Percolation's cost per search: Elasticsearch's query + fetch time on the watches index
    # in the step, divided by the searches the server percolated in it (`percolated`; the
    # searches sent when none finished). Past the sustained rate, percolation lags the
    # searches: those sent and those percolated in a step then differ.
    es_watches_ms_per_search: float | None = None
    percolated: int = 0
    es_heap_used_mb: float = 0.0  # the JVM's heap in use at the end of the step
    load_average: float = 0.0  # the machine's 1-minute load average as the step began
    turn: int = 0  # peer mode: which round of the designs
    # Per design run (the same in each of its steps): the server's RSS with no socket (users
    # and watches made), then with every socket connected, greeted and idle, before any
    # search; the growth divided by the sockets. And how the connect storm went.
    rss_no_sockets_mb: float = 0.0
    rss_idle_sockets_mb: float = 0.0
    rss_per_idle_socket_kb: float = 0.0
    connect_seconds: float = 0.0
    greet_ms: dict[str, float] = field(default_factory=dict)
    greets_over_1s: int = 0
    dial_retries: int = 0
    # Warning and error lines the server logged while the sockets connected.
    connect_log_warnings: int = 0
    # A reconnect step (peer mode, after a design's rates): what its dropped and resumed
    # sockets missed or got twice (bench/reconnect.py); None for the rate steps.
    reconnect: reconnection.Outcome | None = None

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Step:
        """A step of a saved report (older reports' flat `reconnect_*` fields too)."""
        known = {f.name for f in fields(cls)} - {"reconnect"}
        return cls(
            **{name: value for name, value in saved.items() if name in known},
            reconnect=reconnection.Outcome.from_json(saved),
        )


def catalog_words() -> list[str]:
    """Words of the sample catalog's names a watch may be made of (stop words name nothing)."""
    words: set[str] = set()
    for line in (ROOT / "data/products.ndjson").read_text().splitlines():
        words.update(re.findall(r"[a-z]{3,}", json.loads(line)["product_name"].lower()))
    return sorted(words - STOP_WORDS)


def catalog_categories() -> list[str]:
    lines = (ROOT / "data/products.ndjson").read_text().splitlines()
    return sorted({json.loads(line)["category"] for line in lines})


async def load_watches(settings: Settings, count: int, *, category_share: float = 0.0) -> float:
    """`count` background watches of 1-2 catalog words, spread over count/5 users, through
    the bulk load (WatchStore.load, as `percolert watches load`); prints and returns its
    rate (watches/s, the load alone: the force-merge after it is not counted).
    `category_share`: about this share of them names a catalog category too."""
    words = catalog_words()
    categories = catalog_categories()
    rng = random.Random(7)
    chosen = random.Random(8)  # apart, so that the words drawn stay those of every run
    client = es.create_client(settings)
    try:
        store = WatchStore(
            client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=10**9
        )
        watches = (
            (
                number,
                f"background-{number % max(1, count // 5)}",
                WatchSpec(
                    terms=" ".join(rng.sample(words, rng.choice([1, 2, 2]))),
                    category=(
                        chosen.choice(categories) if chosen.random() < category_share else None
                    ),
                ),
            )
            for number in range(count)
        )
        report = await store.load(watches)
        print(
            f"  loaded {report.loaded} watches ({report.duplicates} duplicates) in "
            f"{report.seconds:.1f} s: {report.rate:.0f} watches/s",
            flush=True,
        )
        # As after any bulk load: merge the fresh segments now, so the measurement is not
        # of Elasticsearch merging and warming them in the background.
        alias = indices.alias_for(settings, "watches")
        await client.indices.forcemerge(index=alias, max_num_segments=1)
    finally:
        await client.close()
    return report.rate


async def set_default_watch(settings: Settings, present: bool) -> None:
    client = es.create_client(settings)
    try:
        store = WatchStore(
            client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=10**9
        )
        await store.seed_defaults([WatchSpec(terms="kindle")] if present else [])
    finally:
        await client.close()


def prepare_catalog(node_url: str, *, recreate: bool = False) -> None:
    """`percolert setup` and the sample catalog on the node, as an admin would."""
    env = {**os.environ, "ELASTICSEARCH_URL": node_url, "PERCOLERT_INDEX_PREFIX": PREFIX}
    cli = [sys.executable, "-m", "percolert.cli"]
    setup = [*cli, "setup", "--recreate"] if recreate else [*cli, "setup"]
    subprocess.run(setup, env=env, check=True, capture_output=True)
    subprocess.run(
        [*cli, "ingest", "--plain", str(ROOT / "data/products.ndjson")],
        env=env,
        check=True,
        capture_output=True,
    )


def es_heap_mb(node_url: str) -> tuple[float, float]:
    """The Elasticsearch node's heap in use and its maximum, in MiB."""
    nodes = httpx.get(f"{node_url}/_nodes/_local/stats/jvm", timeout=10).json()["nodes"]
    heap = next(iter(nodes.values()))["jvm"]["mem"]
    return (
        round(heap["heap_used_in_bytes"] / 2**20, 1),
        round(heap["heap_max_in_bytes"] / 2**20, 1),
    )


def log_warnings(server: Server, start: int) -> tuple[int, int]:
    """Warning and error lines in the server's log past byte `start`, and its end."""
    raw = server.log.read_bytes()
    count = sum(
        1
        for line in raw[start:].decode(errors="replace").splitlines()
        if '"level":"warning"' in line
        or '"level":"error"' in line
        or line.startswith(("WARNING:", "ERROR:"))
    )
    return count, len(raw)


def raise_file_limit(needed: int) -> None:
    """Let this process and its children (server, load client) open `needed` files: 10k
    sockets are past the usual soft limit of 1,024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"{needed} open files needed, the hard limit is {hard}: `ulimit -n {needed}` first"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def peak_rss_mb(process: psutil.Process) -> float:
    """The process's peak resident set so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(process.memory_info().rss / 2**20, 1)


def run_design(
    design: str,
    node: psutil.Process,
    node_url: str,
    scratch: Path,
    watches: int,
    sockets: int,
    tabs: int,
    rates: list[float],
    seconds: float,
    *,
    climb: bool = True,
    reconnect: reconnection.Plan | None = None,
    nodes: int = 1,
    budget: CpuBudget | None = None,
) -> list[Step]:
    """Every rate of `rates` in turn; with `climb`, no rate after a step far past the bar
    (a reference run measures every rate: its cost per search is what it is for). With
    `reconnect` (not for alerts-off: nothing to miss), a reconnect step at the end. With
    `nodes` 2, the design runs on two nodes sharing a Redis (bench/nodes.py). With
    `budget`, the load client (sockets and search driver) runs inside it."""
    if design == "percolert-alerts-off":
        reconnect = None
    # Centrifugo's designs: Percolert percolates and publishes, Centrifugo holds the sockets.
    deployment = deploy(design, nodes, node_url, scratch)
    server, others = deployment.servers[0], deployment.servers[1:]
    holders = deployment.holders  # the processes holding the sockets
    peer = deployment.peers[0] if deployment.peers else None
    steps: list[Step] = []
    try:
        settings = Settings(
            elasticsearch_url=node_url, index_prefix=PREFIX, elasticsearch_timeout=120.0
        )
        users = asyncio.run(make_users(server.url, sockets // tabs, design, settings))
        cookies = [cookie for cookie, _ in users for _ in range(tabs)]
        sockets_per_word: dict[str, int] = defaultdict(int)
        for _, word in users:
            if word is not None:
                sockets_per_word[word] += tabs
        time.sleep(0.5)  # the users' HTTP connections closed
        rss_before = sum(holder.ps.memory_info().rss for holder in holders)
        log_starts = [log_warnings(each, 0)[1] for each in deployment.servers]
        rounds = None if reconnect is None else reconnect.spec(seconds)
        subscribers = deployment.open_sockets(cookies, scratch, rounds, budget)
        if peer is not None:
            await_present(server, users, design in PER_USER)
        time.sleep(1.0)  # connected, greeted and idle
        rss_idle = sum(holder.ps.memory_info().rss for holder in holders)
        warnings = sum(
            log_warnings(each, start)[0]
            for each, start in zip(deployment.servers, log_starts, strict=True)
        )
        connect = subscribers.connect
        idle = {
            "rss_no_sockets_mb": round(rss_before / 2**20, 1),
            "rss_idle_sockets_mb": round(rss_idle / 2**20, 1),
            "rss_per_idle_socket_kb": round((rss_idle - rss_before) / 1024 / len(cookies), 2),
            "connect_seconds": round(connect["connect_seconds"], 1),
            "greet_ms": connect["greet_ms"],
            "greets_over_1s": connect["greets_over_1s"],
            "dial_retries": connect["dial_retries"],
            "connect_log_warnings": warnings,
        }
        print(
            f"  {design}{on_nodes(nodes)}: {len(cookies)} sockets in {idle['connect_seconds']} s "
            f"(greeting p50 {connect['greet_ms'].get('p50')} p99 {connect['greet_ms'].get('p99')}"
            f" max {connect['greet_ms'].get('max')} ms, {connect['greets_over_1s']} over 1 s, "
            f"{connect['dial_retries']} dials retried, {warnings} server warnings); server RSS "
            f"{idle['rss_no_sockets_mb']} -> {idle['rss_idle_sockets_mb']} MB: "
            f"{idle['rss_per_idle_socket_kb']} KB per idle socket",
            flush=True,
        )
        if warnings:
            for each in deployment.servers:
                print(each.tail_of_log(10), flush=True)
        # On two nodes the searches alternate over Percolert's instances.
        also = others or None
        marked = "" if nodes == 1 else f"n{nodes}"  # the searches' ids, apart from one node's
        try:
            # Unrecorded warm-up at the first rate: JIT, caches and connection pools.
            drive(
                server,
                rates[0],
                seconds,
                f"warm-{design}{marked}",
                scratch,
                also=also,
                budget=budget,
            )
            schedule = [(rate, False) for rate in rates]
            if reconnect is not None:
                schedule.append((reconnect.rate or rates[0], True))
            climbing = True
            for step_number, (rate, reconnecting) in enumerate(schedule):
                if not (climbing or reconnecting) or (reconnecting and not subscribers.alive()):
                    continue
                step = Step(
                    design=design,
                    watches=watches,
                    sockets=len(cookies),
                    rate=rate,
                    load_average=round(os.getloadavg()[0], 2),
                    instances=nodes,
                    **idle,
                )
                # Each role's processes, their CPU summed: Percolert's instances, the load
                # clients, Elasticsearch, Centrifugo's nodes and the Redis (two nodes).
                processes = (
                    [each.ps for each in deployment.servers],
                    subscribers.processes,
                    [node],
                    [each.ps for each in deployment.peers],
                    [deployment.redis_process] if deployment.redis_process else [],
                )
                cpu_before = [sum(cpu_seconds(each) for each in role) for role in processes]
                throttled_before = 0.0 if budget is None else budget.throttled_seconds()
                before_wall = time.monotonic()
                metrics_before = (
                    None
                    if design.startswith("baseline")
                    else scrape_all([each.url for each in deployment.servers])
                )
                es_before = es_stats(node_url)
                tag = f"{design.split('-')[0][0]}{design.split('-')[-1][0]}{step_number}{marked}"
                round_start = subscribers.drop_some() if reconnecting else []
                sent, words, search_ms, errors = drive(
                    server, rate, seconds, tag, scratch, also=also, budget=budget
                )
                if reconnecting and not subscribers.await_round(round_start, 120.0):
                    print("  the reconnect round did not finish within 120 s", flush=True)
                time.sleep(min(2.0, seconds / 2))  # let the last alerts land
                wall = time.monotonic() - before_wall
                server_cpu, client_cpu, es_cpu, peer_cpu, redis_cpu = (
                    round(100 * (sum(cpu_seconds(each) for each in role) - before) / wall, 1)
                    for role, before in zip(processes, cpu_before, strict=True)
                )
                step.server_cpu_percent, step.client_cpu_percent = server_cpu, client_cpu
                if budget is not None:
                    step.client_throttled_ms = round(
                        1000 * (budget.throttled_seconds() - throttled_before), 1
                    )
                step.es_cpu_percent, step.wall_seconds = es_cpu, round(wall, 2)
                step.peer_cpu_percent, step.redis_cpu_percent = peer_cpu, redis_cpu
                step.server_peak_rss_mb = max(peak_rss_mb(each.ps) for each in deployment.servers)
                es_change = {
                    name: value - es_before.get(name, 0.0)
                    for name, value in es_stats(node_url).items()
                }
                step.es_young_gc_ms = es_change.pop("young_gc_ms")
                step.es_old_gcs = int(es_change.pop("old_gcs"))
                step.es_heap_used_mb, _ = es_heap_mb(node_url)
                watches_ms = es_change.get("watches query", 0.0) + es_change.get(
                    "watches fetch", 0.0
                )
                step.es_ms_per_s = {
                    name: round(value / wall, 1) for name, value in es_change.items() if value
                }
                if metrics_before is not None:
                    after = scrape_all([each.url for each in deployment.servers])
                    change = {name: after[name] - metrics_before[name] for name in after}
                    if change["percolates"]:
                        step.percolate_ms_per_batch = round(
                            1000 * change["percolate_seconds"] / change["percolates"], 2
                        )
                        step.percolate_events_per_batch = round(
                            change["events"] / change["percolates"], 2
                        )
                    step.percolates_over_100ms = int(change["slow_percolates"])
                    step.searches_over_100ms = int(change["slow_searches"])
                    step.full_gcs = int(change["full_gcs"])
                    step.full_gc_ms = round(1000 * change["full_gc_seconds"], 1)
                    step.loop_lags_over_25ms = int(change["lags_over_25ms"])
                    step.loop_lags_over_100ms = int(change["lags_over_100ms"])
                    step.percolated = int(change["events"])
                if sent and not design.startswith("baseline"):
                    step.es_watches_ms_per_search = round(
                        watches_ms / (step.percolated or len(sent)), 3
                    )
                step.searches = len(sent)
                step.search_errors = errors
                step.search_ms = percentiles(search_ms)
                received, closed = subscribers.arrivals()
                step.sockets_closed = sum(1 for at in closed if at >= min(sent.values()))
                if not subscribers.alive():
                    print(f"  the load client exited ({subscribers.exit_codes()})")
                    step.sockets_closed = step.sockets
                latencies: list[float] = []
                to_dispatch: list[float] = []  # search sent -> alert dispatched (its seq)
                fanout: list[float] = []  # alert dispatched -> received
                for rid, at in sent.items():
                    if design in ("percolert-per-user", "centrifugo-per-user"):
                        step.alerts_expected += sockets_per_word[words[rid]]
                    elif design != "percolert-alerts-off":
                        step.alerts_expected += step.sockets
                    for got, seq in received.get(rid, []):
                        latencies.append((got - at) * 1000)
                        if seq:
                            to_dispatch.append(seq / 1000 - at * 1000)
                            fanout.append(got * 1000 - seq / 1000)
                step.alerts_delivered = len(latencies)
                step.alert_ms = percentiles(latencies)
                step.dispatch_ms = percentiles(to_dispatch)
                step.fanout_ms = percentiles(fanout)
                step.alerts_per_s = round(len(latencies) / seconds, 1)
                if reconnecting and reconnect is not None:
                    socket_words = [word for _, word in users for _ in range(tabs)]
                    measure_reconnect(
                        step, reconnect, subscribers, sent, words, socket_words, design in BROADCAST
                    )
                steps.append(step)
                print(
                    f"  {design}{on_nodes(nodes)} {rate:g}/s: "
                    f"alert p50 {step.alert_ms.get('p50')} "
                    f"p99 {step.alert_ms.get('p99')} ms "
                    f"(dispatched by p50 {step.dispatch_ms.get('p50')} "
                    f"p99 {step.dispatch_ms.get('p99')}; fan-out p50 "
                    f"{step.fanout_ms.get('p50')} p99 {step.fanout_ms.get('p99')}), "
                    f"{step.alerts_delivered}/{step.alerts_expected} alerts; "
                    f"search p50 {step.search_ms.get('p50')} p99 {step.search_ms.get('p99')} ms, "
                    f"errors {errors}; slow percolates {step.percolates_over_100ms} "
                    f"searches {step.searches_over_100ms}; "
                    f"full GCs {step.full_gcs} ({step.full_gc_ms} ms); "
                    f"loop lags >25 ms {step.loop_lags_over_25ms} "
                    f">100 ms {step.loop_lags_over_100ms}; "
                    f"ES young GC {step.es_young_gc_ms:g} ms, old GCs {step.es_old_gcs}, "
                    f"ms/s {step.es_ms_per_s}; watches ms per search "
                    f"{step.es_watches_ms_per_search}, percolate ms per batch "
                    f"{step.percolate_ms_per_batch}; "
                    f"CPU server {step.server_cpu_percent}% peer {step.peer_cpu_percent}% "
                    f"redis {step.redis_cpu_percent}% client {step.client_cpu_percent}%"
                    f"{throttled_note(step.client_throttled_ms)} "
                    f"es {step.es_cpu_percent}%; load {step.load_average}",
                    flush=True,
                )
                if (
                    climb
                    and step.alerts_expected
                    and (
                        step.alert_ms.get("p99", float("inf")) > GIVE_UP_P99_MS
                        or step.alerts_delivered < 0.9 * step.alerts_expected
                    )
                ):
                    climbing = False
        finally:
            subscribers.stop()
    finally:
        deployment.stop()
    return steps


def on_nodes(nodes: int) -> str:
    """A design's mark in the progress lines: none on one node."""
    return "" if nodes == 1 else f" on {nodes} nodes"


def scrape_all(bases: list[str]) -> dict[str, float]:
    """rig.scrape_metrics summed over Percolert's instances."""
    summed: dict[str, float] = defaultdict(float)
    for base in bases:
        for name, value in scrape_metrics(base).items():
            summed[name] += value
    return dict(summed)


def measure_reconnect(
    step: Step,
    plan: reconnection.Plan,
    subscribers: SocketGroup,
    sent: dict[str, float],
    words: dict[str, str],
    socket_words: list[str | None],
    broadcast: bool,
) -> None:
    """A reconnect step's counts for the sockets its round dropped (bench/reconnect.py): a
    broadcast's searches reach every socket, a per-user one's the sockets watching its word."""

    def expected(socket: int) -> set[str]:
        if broadcast:
            return set(sent)
        return {rid for rid in sent if words[rid] == socket_words[socket]}

    summed = reconnection.recovery(subscribers.dropped(), expected, sent)
    step.reconnect = outcome = reconnection.Outcome.of(plan, summed, percentiles)
    print(
        f"  {step.design}{on_nodes(step.instances)} reconnect at {step.rate:g}/s: "
        f"{summed.dropped} sockets dropped, "
        f"{summed.resumed} resumed, {summed.recovered} said recovered, {summed.complete} "
        f"missed nothing; drop to greeting p50 {outcome.gap_ms.get('p50')} ms; "
        f"expected while away {summed.expected_away}, received after resuming "
        f"{summed.received_after}, "
        f"missed {summed.missed}, twice {summed.twice}; replayed {summed.replayed} "
        f"(p99 {outcome.replayed_alert_ms.get('p99')} ms from the search)",
        flush=True,
    )


def await_present(server: Server, users: list[tuple[str | None, str | None]], leased: bool) -> None:
    """Centrifugo's designs: wait until Percolert counts every user present on Centrifugo
    (it reads the channels each second) and, with `leased`, has leased their watches (its
    renewal loop does, within 5 s), as a hello does for its own sockets."""
    deadline = time.monotonic() + 120
    while True:
        values = {
            line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
            for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
            if line.startswith("percolert_")
        }
        present = values.get("percolert_centrifugo_present", 0.0) >= len(users)
        leases = values.get("percolert_watch_leases_written_total", 0.0) >= len(users)
        if present and (leases or not leased):
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"Percolert saw {values.get('percolert_centrifugo_present')} of {len(users)} "
                "users present on Centrifugo:\n" + server.tail_of_log()
            )
        time.sleep(0.5)


def highest_rate(
    steps: list[Step], design: str, watches: int, sockets: int, bar_ms: float
) -> float:
    """The highest rate at which `design` kept every search, every socket, ≥ 99% of the
    alerts and an alert p99 within `bar_ms`."""
    rates = [
        s.rate
        for s in steps
        if s.design == design
        and s.watches == watches
        and s.sockets == sockets
        and s.alert_ms
        and s.search_errors == 0
        and s.sockets_closed == 0
        and s.alerts_delivered >= 0.99 * s.alerts_expected
        and s.alert_ms["p99"] <= bar_ms
    ]
    return max(rates, default=0.0)


def ratio(ours: float, theirs: float) -> str:
    if not theirs:
        return "∞ (baseline sustains none)" if ours else "n/a"
    return f"{ours / theirs:.1f}x"


def write_report(
    steps: list[Step],
    configurations: list[tuple[int, int]],
    run: dict[str, Any] | None = None,
    loads: list[dict[str, Any]] | None = None,
) -> None:
    """results.json ({"run", "loads", "steps"}), results.md and the plot."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    run, loads = run or {}, loads or []
    (REPORT_DIR / "results.json").write_text(
        json.dumps({"run": run, "loads": loads, "steps": [asdict(s) for s in steps]}, indent=2)
        + "\n"
    )
    lines = [
        "# Search-to-alert benchmark",
        "",
        f"Machine: {os.cpu_count()} cores shared by everything: the Elasticsearch dev node, "
        "the server under test, the Go load client (tools/wsload) and the orchestrator. "
        "Generated by `nox -s bench` (bench/harness.py). Alert latency runs from sending the "
        "search to each recipient socket receiving its alert. A rate is *sustained* at a bar "
        "when every search succeeded, no socket was closed, ≥ 99% of the alerts arrived and "
        "the alert p99 is within the bar.",
        "",
        f"Run: `{' '.join(['nox -s bench --', *run.get('argv', [])])}`, "
        f"{run.get('minutes', '?')} minutes; Elasticsearch heap {run.get('es_heap', '?')}; "
        f"load average {run.get('load_average_start', '?')} at the start, "
        f"{run.get('load_average_end', '?')} at the end (1, 5, 15 minutes)"
        f"{budget_note(run.get('client_cpus'))}.",
        "",
        *headline(steps, configurations, run, loads),
        "## Highest sustained search rate",
        "",
        "Per-user: each search reaches only the subscribers watching its word (the baseline "
        "cannot do this; its only mode is a broadcast to every socket). Broadcast: equal work, "
        "one default watch that reaches every socket.",
        "",
        "| watches | sockets | p99 bar | percolert per-user | percolert broadcast "
        "| baseline broadcast | per-user ÷ baseline | broadcast ÷ baseline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for watches, sockets in configurations:
        for bar in (100.0, 1000.0):
            per_user, ours, theirs = (
                highest_rate(steps, design, watches, sockets, bar)
                for design in ("percolert-per-user", "percolert-broadcast", "baseline-broadcast")
            )
            lines.append(
                f"| {watches} | {sockets} | {bar:g} ms | {per_user:g}/s | {ours:g}/s "
                f"| {theirs:g}/s | {ratio(per_user, theirs)} | {ratio(ours, theirs)} |"
            )
    on_off = [
        (on, off)
        for on in steps
        for off in steps
        if on.design == "percolert-per-user"
        and off.design == "percolert-alerts-off"
        and (on.watches, on.sockets, on.rate) == (off.watches, off.sockets, off.rate)
        and on.search_ms
        and off.search_ms
    ]
    if on_off:
        lines += [
            "",
            "## Search latency, alerts on versus off",
            "",
            "The same server, watches, sockets and searches; `PERCOLERT_ALERTS=off` skips "
            "percolation (and so every alert).",
            "",
            "| watches | sockets | rate/s | search p50 on | off | difference | p99 on | off |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for on, off in on_off:
            lines.append(
                f"| {on.watches} | {on.sockets} | {on.rate:g} | {on.search_ms['p50']} ms "
                f"| {off.search_ms['p50']} ms "
                f"| {on.search_ms['p50'] - off.search_ms['p50']:+.2f} ms "
                f"| {on.search_ms['p99']} ms | {off.search_ms['p99']} ms |"
            )
    lines += [
        "",
        "## Every step",
        "",
        "CPU is percent of one core over the step (server, Go load client, Elasticsearch); "
        "full GCs: the server's full garbage collections in the step and their total pause.",
        "",
        "| design | watches | sockets | rate/s | alert p50 | p90 | p99 | max | delivered | "
        "alerts/s | search p50 | p99 | CPU server | client | ES | peak RSS "
        "| percolate ms/batch | events/batch | full GCs (ms) | ES watches ms/search "
        "| ES old GCs | ES heap | loop lags >25/>100 ms | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        a, q = s.alert_ms, s.search_ms
        closed = f" ({s.sockets_closed} sockets closed)" if s.sockets_closed else ""
        lines.append(
            f"| {s.design} | {s.watches} | {s.sockets} | {s.rate:g} | {a.get('p50', '-')} | "
            f"{a.get('p90', '-')} | {a.get('p99', '-')} | {a.get('max', '-')} | "
            f"{s.alerts_delivered}/{s.alerts_expected}{closed} | {s.alerts_per_s:g} | "
            f"{q.get('p50', '-')} | {q.get('p99', '-')} | {s.server_cpu_percent}% | "
            f"{s.client_cpu_percent}%{throttled_note(s.client_throttled_ms)} | "
            f"{s.es_cpu_percent}% | "
            f"{s.server_peak_rss_mb} MB | {s.percolate_ms_per_batch or '-'} | "
            f"{s.percolate_events_per_batch or '-'} | {s.full_gcs} ({s.full_gc_ms:g}) | "
            f"{'-' if s.es_watches_ms_per_search is None else s.es_watches_ms_per_search} | "
            f"{s.es_old_gcs} | {s.es_heap_used_mb:g} MB | "
            f"{s.loop_lags_over_25ms}/{s.loop_lags_over_100ms} | {s.load_average:g} |"
        )
    lines += [
        "",
        "## Sockets: connect storm and memory per idle socket",
        "",
        "Per design run: the server's RSS before any socket and with every socket connected, "
        "greeted and idle (before any search); the growth divided by the sockets. Greeting: "
        "from dialling to the hello, as the load client saw it (the storm is paced).",
        "",
        "| design | watches | sockets | RSS 0 sockets | RSS idle | KB per idle socket "
        "| connect s | greeting p50 | p99 | max | over 1 s | dials retried | server warnings |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    seen: set[tuple[str, int, int]] = set()
    for s in steps:
        if (s.design, s.watches, s.sockets) in seen or not s.rss_idle_sockets_mb:
            continue
        seen.add((s.design, s.watches, s.sockets))
        g = s.greet_ms
        lines.append(
            f"| {s.design} | {s.watches} | {s.sockets} | {s.rss_no_sockets_mb:g} MB "
            f"| {s.rss_idle_sockets_mb:g} MB | {s.rss_per_idle_socket_kb:g} "
            f"| {s.connect_seconds:g} | {g.get('p50', '-')} | {g.get('p99', '-')} "
            f"| {g.get('max', '-')} | {s.greets_over_1s} | {s.dial_retries} "
            f"| {s.connect_log_warnings} |"
        )
    if loads:
        lines += [
            "",
            "## Watch loading",
            "",
            "Wall time includes the refresh and force-merge after the bulk load; "
            "`load_watches`' own rate where it reports one.",
            "",
            "| watches | seconds | watches/s (wall) | watches/s (load_watches) "
            "| ES heap used after | heap max | ES old GCs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for entry in loads:
            lines.append(
                f"| {entry['watches_from']} → {entry['watches_to']} | {entry['seconds']} "
                f"| {entry['watches_per_s']} | {entry['reported_watches_per_s'] or '-'} "
                f"| {entry['es_heap_used_mb']} MB | {entry['es_heap_max_mb']} MB "
                f"| {entry['es_old_gcs']} |"
            )
    (REPORT_DIR / "results.md").write_text("\n".join(lines) + "\n")
    plot(steps)


def median(values: list[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def headline(
    steps: list[Step],
    configurations: list[tuple[int, int]],
    run: dict[str, Any],
    loads: list[dict[str, Any]],
) -> list[str]:
    """The issue's goals at the biggest configuration, the reference's (and the next smaller
    configuration's at the same sockets) figures beside: markdown lines."""
    if not configurations:
        return []
    watches, sockets = max(configurations)
    smaller = sorted(
        {
            s.watches
            for s in steps
            if s.sockets == sockets and s.watches < watches and s.design == "percolert-per-user"
        }
    )
    other = smaller[-1] if smaller else None

    def at(design: str, w: int, rate: float) -> Step | None:
        return next(
            (
                s
                for s in steps
                if (s.design, s.watches, s.sockets, s.rate) == (design, w, sockets, rate)
                and (s.alert_ms or s.search_ms)
            ),
            None,
        )

    def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}{unit}"

    def cost(w: int | None, rate: float) -> tuple[float | None, float | None]:
        step = at("percolert-per-user", w, rate) if w is not None else None
        if step is None:
            return None, None
        return step.es_watches_ms_per_search, step.percolate_ms_per_batch

    def times(big: float | None, small: float | None) -> str:
        return "-" if big is None or small is None or not small else f"{big / small:.2f}x"

    def size(count: int) -> str:
        return f"{count / 1e6:g}M" if count >= 1_000_000 else f"{count / 1000:g}k"

    label = f"{size(watches)} watches / {sockets:,} sockets"
    ref_label = f"{size(other)} watches / {sockets:,} sockets" if other else "-"
    lines = [
        f"## Headline: {label}" + (f" (beside it: {ref_label})" if other else ""),
        "",
        f"| goal | {label} | {ref_label} | bar |",
        "|---|---:|---:|---|",
    ]
    sustained = [
        highest_rate(steps, "percolert-per-user", w, sockets, 100.0) if w else None
        for w in (watches, other)
    ]
    lines.append(
        "| per-user: highest rate sustained at p99 ≤ 100 ms, every alert | "
        + " | ".join("-" if r is None else f"{r:g}/s" for r in sustained)
        + " | ≥ 100/s |"
    )
    for rate in (100.0, 150.0):
        cells = []
        for w in (watches, other):
            step = at("percolert-per-user", w, rate) if w else None
            cells.append(
                "-"
                if step is None or not step.alert_ms
                else f"p99 {step.alert_ms['p99']:g} ms, "
                f"{step.alerts_delivered}/{step.alerts_expected} delivered"
            )
        lines.append(
            f"| per-user at {rate:g}/s: alert p99, delivered | {' | '.join(cells)} | ≤ 100 ms |"
        )
    rates = sorted(
        {s.rate for s in steps if s.design == "percolert-per-user" and s.watches == watches}
        & {s.rate for s in steps if s.design == "percolert-per-user" and s.watches == other}
    )
    for rate in rates:
        (es_big, batch_big), (es_small, batch_small) = cost(watches, rate), cost(other, rate)
        lines.append(
            f"| percolation at {rate:g}/s: ES ms per search on the watches index "
            f"(ratio {times(es_big, es_small)}) | {fmt(es_big, ' ms', 2)} "
            f"| {fmt(es_small, ' ms', 2)} | ratio ≤ 2x |"
        )
        lines.append(
            f"| percolation at {rate:g}/s: wall ms per batch "
            f"(ratio {times(batch_big, batch_small)}) | {fmt(batch_big, ' ms', 2)} "
            f"| {fmt(batch_small, ' ms', 2)} | ratio ≤ 2x |"
        )
    cells = []
    for w in (watches, other):
        on = at("percolert-per-user", w, 100.0) if w else None
        off = at("percolert-alerts-off", w, 100.0) if w else None
        cells.append(
            "-"
            if on is None or off is None or not on.search_ms or not off.search_ms
            else f"{on.search_ms['p50'] - off.search_ms['p50']:+.2f} ms "
            f"({on.search_ms['p50']:g} vs {off.search_ms['p50']:g})"
        )
    lines.append(f"| search p50 at 100/s, alerts on - off | {' | '.join(cells)} | ≤ 2 ms |")
    for design in ("percolert-per-user", "percolert-alerts-off", "percolert-broadcast"):
        cells = []
        for w in (watches, other):
            step = next(
                (
                    s
                    for s in steps
                    if (s.design, s.watches, s.sockets) == (design, w, sockets)
                    and s.rss_idle_sockets_mb
                ),
                None,
            )
            cells.append("-" if step is None else f"{step.rss_per_idle_socket_kb:g} KB")
        if set(cells) != {"-"}:
            lines.append(
                f"| server RSS per idle socket ({design}) | {' | '.join(cells)} | ≤ 20 KB |"
            )
    cells = []
    for w in (watches, other):
        chosen = [s for s in steps if (s.watches, s.sockets) == (w, sockets)]
        if not chosen:
            cells.append("-")
            continue
        with_old = sum(1 for s in chosen if s.es_old_gcs)
        heap = max(s.es_heap_used_mb for s in chosen)
        cells.append(
            f"{with_old} of {len(chosen)} steps with old GCs; heap used ≤ {heap:g} MB "
            f"at a step's end"
        )
    lines.append(
        f"| Elasticsearch heap {run.get('es_heap', '?')}: old-generation collections "
        f"| {' | '.join(cells)} | none |"
    )
    for entry in loads:
        lines.append(
            f"| loading watches {entry['watches_from']:,} → {entry['watches_to']:,} "
            f"| {entry['reported_watches_per_s'] or entry['watches_per_s']:,}/s "
            f"({entry['seconds']} s; heap after {entry['es_heap_used_mb']:g} MB) | | ≥ 10k/s |"
        )
    return [*lines, ""]


def plot(steps: list[Step]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    series: dict[str, list[Step]] = defaultdict(list)
    for step in steps:
        if step.alert_ms and step.design != "percolert-alerts-off":
            series[f"{step.design} W={step.watches} S={step.sockets}"].append(step)
    for label, points in sorted(series.items()):
        axis.plot(
            [p.rate for p in points], [p.alert_ms["p99"] for p in points], marker="o", label=label
        )
    axis.axhline(100, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("searches per second")
    axis.set_ylabel("p99 search-to-alert latency (ms)")
    axis.set_yscale("log")
    axis.set_title("Search-to-alert latency versus search rate")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(REPORT_DIR / "latency_vs_rate.png", dpi=120)


@contextmanager
def keep_logs(scratch: Path) -> Iterator[None]:
    """Copies the servers' logs from `scratch` to LOG_DIR when the block ends, however."""
    try:
        yield
    finally:
        shutil.rmtree(LOG_DIR, ignore_errors=True)
        LOG_DIR.mkdir(parents=True)
        for log in scratch.glob("*.log"):
            shutil.copy(log, LOG_DIR / log.name)
        print(f"servers' logs: {LOG_DIR}", flush=True)


@contextmanager
def bench_node(scratch: Path, heap: str = "2g") -> Iterator[tuple[ServiceState, Settings]]:
    """The benchmark's own Elasticsearch node (`heap`: its JVM heap) under `scratch`, and
    settings on it; the node stops when the block ends."""
    node = DevNode.configured(from_environment(), scratch / "state", heap=heap)
    state, _ = node.start(free_port())
    try:
        # The harness's own requests (bulk loads of watches) may take long on the shared
        # machine: a 5 s timeout (the default) cut bulk requests at load average 12.
        yield (
            state,
            Settings(elasticsearch_url=state.url, index_prefix=PREFIX, elasticsearch_timeout=120.0),
        )
    finally:
        node.stop()


@dataclass
class Run:
    """One configuration as it runs: its designs, and the rates each climbs."""

    watches: int
    sockets: int
    designs: list[str]
    rates: dict[str, list[float]]
    reference: bool = False  # only there to compare percolation cost with a bigger one


# At 10k sockets a broadcast writes 10k frames a search: it saturates long before these.
BIG_BROADCAST_RATES = [2.0, 5.0, 10.0]


def plan_runs(
    configurations: list[tuple[int, int]],
    designs: list[str],
    rates: list[float],
    *,
    big_rates: list[float] | None = None,
    broadcast_rates: list[float] | None = None,
    reference: int = 0,
    reference_rates: list[float] | None = None,
) -> list[Run]:
    """The configurations in the order they run. A configuration of more than `reference`
    watches gets a reference run before it (the same sockets, `reference` watches,
    per-user at `reference_rates`), so that one command measures percolation's cost per
    search at both sizes: watches only grow from one run to the next (each loads the
    difference). At 10k sockets and more the climb is shorter: `big_rates` when given, and
    the broadcast designs BIG_BROADCAST_RATES (unless `broadcast_rates` is given)."""
    plan: list[Run] = []
    for watches, sockets in configurations:
        if (
            reference
            and watches > reference
            and (reference, sockets) not in configurations
            and "percolert-per-user" in designs
        ):
            plan.append(
                Run(
                    reference,
                    sockets,
                    ["percolert-per-user"],
                    {"percolert-per-user": reference_rates or rates},
                    reference=True,
                )
            )
        big = sockets >= 10_000
        own = big_rates if big_rates and big else rates
        broadcast = broadcast_rates or (BIG_BROADCAST_RATES if big else own)
        plan.append(
            Run(
                watches,
                sockets,
                designs,
                {design: broadcast if design.endswith("broadcast") else own for design in designs},
            )
        )
    return plan


def peer_nodes(text: str) -> list[int]:
    """`--peer-nodes`: the node counts to run, each once, in order (1, 2 or both)."""
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or set(counts) - {1, 2} or len(set(counts)) != len(counts):
        raise ValueError(f"--peer-nodes: 1, 2 or 1,2, not {text!r}")
    return counts


def peer_schedule(designs: list[str], counts: list[int]) -> list[tuple[str, int]]:
    """A turn's design runs, (design, nodes): every design on each node count, the counts
    one after another. Centrifugo's designs publish from one Percolert instance on any
    count, so their delivery CPU is measured against one instance with alerts off: that
    reference runs first when they run on two nodes only."""
    schedule = [(design, nodes) for nodes in counts for design in designs]
    reference = ("percolert-alerts-off", 1)
    if (
        reference[0] in designs
        and reference not in schedule
        and any(design.startswith("centrifugo") for design in designs)
    ):
        schedule.insert(0, reference)
    return schedule


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small configuration")
    parser.add_argument("--seconds", type=float, default=None, help="length of each rate step")
    parser.add_argument(
        "--designs",
        default=None,
        help="comma-separated subset to run (default: every design of the mode)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: one instance versus two sharing one Redis (bench/cluster.py); with --designs "
        "naming percolert-cluster-2, also two on a Redis Cluster (3 primaries, 3 replicas)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="--instances 2 or --peer: rounds of every design, in turns (peer default 2)",
    )
    parser.add_argument(
        "--peer",
        choices=("centrifugo",),
        default=None,
        help="side by side with Centrifugo delivering Percolert's alerts (peer-results.*)",
    )
    parser.add_argument(
        "--peer-nodes",
        default="1",
        help="--peer: node counts to run, comma-separated: 1 (default), 2 or 1,2. On 2 nodes "
        "Percolert runs two instances on its Redis broker, Centrifugo two nodes on its Redis "
        "engine fed by one Percolert, the sockets split over the two (bench/nodes.py)",
    )
    parser.add_argument("--rates", default=None, help="comma-separated searches per second")
    parser.add_argument(
        "--configs", default=None, help="comma-separated WATCHES:SOCKETS, e.g. 10000:5000"
    )
    parser.add_argument(
        "--warm-up",
        type=float,
        default=None,
        help="seconds of warm-up load for the first configuration (later ones: at most 20)",
    )
    parser.add_argument(
        "--broadcast-rates",
        default=None,
        help="rates of the broadcast designs (default: --rates; at 10k sockets and more 2,5,10:"
        " a broadcast to every socket saturates long before)",
    )
    parser.add_argument(
        "--es-heap", default="2g", help="the bench node's JVM heap (-Xms/-Xmx), e.g. 2g, 4g"
    )
    parser.add_argument(
        "--reference",
        type=int,
        default=100_000,
        help="before a configuration of more watches, the same sockets at this many watches, "
        "per-user only (percolation cost per search, bigger ÷ reference); 0: none",
    )
    parser.add_argument(
        "--reference-rates", default="50,100", help="rates of the reference configuration"
    )
    parser.add_argument(
        "--reconnect-share",
        type=float,
        default=None,
        help="--peer: after its rates, each design drops this share of its sockets mid-step "
        "and resumes them (default 0.1; 0: no reconnect step)",
    )
    parser.add_argument(
        "--reconnect-away",
        type=float,
        default=1.5,
        help="--peer: seconds each dropped socket stays away before it resumes",
    )
    parser.add_argument(
        "--reconnect-rate",
        type=float,
        default=None,
        help="--peer: the reconnect step's searches per second (default: the design's first)",
    )
    parser.add_argument(
        "--client-cpus",
        type=float,
        default=None,
        help="hold the load client (sockets and search driver) to this many cores in every "
        "design, by a cgroup CFS quota (bench/cpu_budget.py; needs a writable cgroup fs)",
    )
    args = parser.parse_args()
    if args.reconnect_share and not args.peer:
        parser.error("--reconnect-share is measured with --peer only")
    try:
        node_counts = peer_nodes(args.peer_nodes)
    except ValueError as error:
        parser.error(str(error))
    if node_counts != [1] and not args.peer:
        parser.error("--peer-nodes is for --peer only (--instances 2 measures Percolert alone)")
    if args.client_cpus is not None and args.instances == 2:
        parser.error("--client-cpus is not measured with --instances 2 (bench/cluster.py)")
    build_wsload()
    if args.instances == 2:
        return run_instances(args)
    big_rates = None  # at 10k sockets and more: a shorter climb
    if args.peer and args.quick:
        configurations = [(10_000, 1_000)]
        rates = [50.0, 100.0]
        seconds = args.seconds or 5.0
        args.warm_up = 10.0 if args.warm_up is None else args.warm_up
    elif args.peer:
        # The sizes at 100k watches (1M: --configs 1000000:10000, ~20 min to load).
        configurations = [(100_000, 1_000), (100_000, 5_000), (100_000, 10_000)]
        rates = [50.0, 100.0, 150.0, 200.0]
        big_rates = rates
        # A broadcast reaches every socket: 50/s to 10k sockets is 500k messages a second.
        args.broadcast_rates = args.broadcast_rates or "5,10,25,50"
        seconds = args.seconds or 10.0
        args.warm_up = 60.0 if args.warm_up is None else args.warm_up
    elif args.quick:
        configurations = [(10_000, 1_000)]
        rates = [10.0, 25.0, 50.0, 100.0]
        seconds = args.seconds or 3.0
        args.warm_up = 10.0 if args.warm_up is None else args.warm_up
    else:
        configurations = [(10_000, 1_000), (100_000, 1_000), (100_000, 5_000)]
        rates = [2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 150.0, 200.0]
        big_rates = [25.0, 50.0, 100.0, 150.0, 200.0]
        seconds = args.seconds or 8.0
        args.warm_up = 60.0 if args.warm_up is None else args.warm_up
    if args.rates:
        rates = [float(rate) for rate in args.rates.split(",")]
        big_rates = None
    if args.configs:
        configurations = [
            (int(watches), int(sockets))
            for watches, sockets in (pair.split(":") for pair in args.configs.split(","))
        ]
    designs = (
        args.designs
        or (
            PEER_DESIGNS
            if args.peer
            else "percolert-per-user,percolert-alerts-off,percolert-broadcast,baseline-broadcast"
        )
    ).split(",")
    plan = plan_runs(
        configurations,
        designs,
        rates,
        big_rates=big_rates,
        broadcast_rates=(
            [float(rate) for rate in args.broadcast_rates.split(",")]
            if args.broadcast_rates
            else None
        ),
        reference=args.reference,
        reference_rates=[float(rate) for rate in args.reference_rates.split(",")],
    )
    if args.peer:
        # The alert path's reference at every rate a compared design runs (broadcasts too).
        for run in plan:
            if "percolert-alerts-off" in run.rates:
                every = {rate for rates in run.rates.values() for rate in rates}
                run.rates["percolert-alerts-off"] = sorted(every)
    tabs = 2
    turns = (args.repeat or 2) if args.peer else 1
    share = (0.1 if args.reconnect_share is None else args.reconnect_share) if args.peer else 0
    reconnect = (
        reconnection.Plan(share, args.reconnect_away, args.reconnect_rate) if share > 0 else None
    )
    raise_file_limit(max(run.sockets for run in plan) + SPARE_FILES)
    began, load_at_start = time.monotonic(), os.getloadavg()
    steps: list[Step] = []
    loads: list[dict[str, Any]] = []
    loader: Callable[[Settings, int], Coroutine[Any, Any, object]] = load_watches
    budget = None
    if args.client_cpus is not None:
        try:
            budget = CpuBudget(args.client_cpus, f"percolert-bench-{os.getpid()}")
        except BudgetError as error:
            parser.error(f"--client-cpus: {error}")
    with (
        tempfile.TemporaryDirectory(prefix="percolert-bench-") as scratch_name,
        ExitStack() as cleanup,
    ):
        if budget is not None:
            cleanup.callback(budget.close)
        scratch = Path(scratch_name)
        with keep_logs(scratch), bench_node(scratch, heap=args.es_heap) as (state, settings):
            loaded = 0
            warm = args.warm_up
            for run in plan:
                watches, sockets = run.watches, run.sockets
                if loaded == 0 or loaded > watches:
                    prepare_catalog(state.url, recreate=loaded > watches)
                    loaded = 0
                if watches > loaded:
                    print(f"W={watches} S={sockets}: loading watches...", flush=True)
                    loads.append(load(loader, settings, state, loaded, watches))
                    loaded = watches
                warm_up(psutil.Process(state.pid), state.url, scratch, warm)
                warm = min(warm, 20.0)  # the JVM is warm: this warms the new segments
                # Peer mode: every design once per turn, in turns, so that the machine's
                # drift falls on every design alike (the report takes medians over turns).
                counts = [1] if run.reference or not args.peer else node_counts
                for turn in range(turns):
                    for design, nodes in peer_schedule(run.designs, counts):
                        asyncio.run(set_default_watch(settings, design in BROADCAST))
                        made = run_design(
                            design,
                            psutil.Process(state.pid),
                            state.url,
                            scratch,
                            watches,
                            sockets,
                            tabs,
                            run.rates[design],
                            seconds,
                            climb=not run.reference,
                            reconnect=None if run.reference else reconnect,
                            nodes=nodes,
                            budget=budget,
                        )
                        for step in made:
                            step.turn = turn
                        steps += made
    about = {
        "argv": sys.argv[1:],
        "cores": os.cpu_count(),
        "es_heap": args.es_heap,
        "minutes": round((time.monotonic() - began) / 60, 1),
        "load_average_start": [round(value, 2) for value in load_at_start],
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "configurations": [[run.watches, run.sockets, run.reference] for run in plan],
        "turns": turns,
        "seconds_per_step": seconds,
        "reconnect": (
            None if reconnect is None else {**reconnect.spec(seconds), "rate": reconnect.rate}
        ),
        **({"peer_nodes": node_counts} if args.peer and node_counts != [1] else {}),
        **({"client_cpus": args.client_cpus} if budget is not None else {}),
    }
    if args.peer:
        write_peer_report(steps, about)
        print((REPORT_DIR / "peer-results.md").read_text())
        print(f"{about['minutes']} minutes", flush=True)
        return 0
    configured = [(run.watches, run.sockets) for run in plan if not run.reference]
    write_report(steps, configured, about, loads)
    print((REPORT_DIR / "results.md").read_text())
    print(f"{about['minutes']} minutes", flush=True)
    return 0


def load(
    loader: Callable[[Settings, int], Coroutine[Any, Any, object]],
    settings: Settings,
    state: ServiceState,
    loaded: int,
    watches: int,
) -> dict[str, Any]:
    """Loads watches `loaded`..`watches` and reports the rate (load_watches' own figure
    when it returns one, watches a second) and the node's heap after it."""
    old_gcs = es_stats(state.url)["old_gcs"]
    started = time.monotonic()
    reported = asyncio.run(loader(settings, watches - loaded))
    wall = time.monotonic() - started
    heap_used, heap_max = es_heap_mb(state.url)
    record = {
        "watches_from": loaded,
        "watches_to": watches,
        "seconds": round(wall, 1),
        # Wall time including the refresh and force-merge after the bulk load.
        "watches_per_s": round((watches - loaded) / wall),
        "reported_watches_per_s": (
            round(reported, 1) if isinstance(reported, int | float) else None
        ),
        "es_heap_used_mb": heap_used,
        "es_heap_max_mb": heap_max,
        "es_old_gcs": int(es_stats(state.url)["old_gcs"] - old_gcs),
    }
    print(
        f"  loaded {watches - loaded} watches in {record['seconds']} s: "
        f"{record['watches_per_s']}/s (load_watches: {record['reported_watches_per_s']}/s); "
        f"Elasticsearch heap {heap_used} of {heap_max} MB, {record['es_old_gcs']} old GCs",
        flush=True,
    )
    return record


def run_instances(args: argparse.Namespace) -> int:
    """`--instances 2`: one instance versus two sharing one Redis (bench/cluster.py)."""
    watches, sockets, rates, seconds, rounds, warm = cluster.configure(args)
    designs = args.designs.split(",") if args.designs else list(cluster.DEFAULT_DESIGNS)
    if unknown := set(designs) - set(cluster.DESIGNS):
        raise SystemExit(f"--instances 2 measures {', '.join(cluster.DESIGNS)}, not {unknown}")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="percolert-bench-") as scratch_name:
        scratch = Path(scratch_name)
        with bench_node(scratch) as (state, settings):
            prepare_catalog(state.url)
            print(f"W={watches} S={sockets}: loading watches...", flush=True)
            asyncio.run(load_watches(settings, watches))
            asyncio.run(set_default_watch(settings, False))
            steps = cluster.run(
                psutil.Process(state.pid),
                state.url,
                scratch,
                watches,
                sockets,
                rates,
                seconds,
                rounds,
                warm,
                designs,
            )
    cluster.write_report(steps, load)
    print((REPORT_DIR / "multi-instance-results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
