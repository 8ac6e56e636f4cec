"""The search-to-alert benchmark: Percolert side by side with the seed design (baseline).

Separate processes: Elasticsearch (a fresh dev node), the server under test (Percolert or
bench/baseline.py), subscriber load generators (bench/loadgen.py) and this orchestrator,
which drives searches at fixed open-loop rates and times every alert from the moment its
search was sent to the moment each recipient socket received it.

Designs measured, per configuration (W watches, S sockets):
- `percolert-broadcast`: equal work with the baseline — one default watch that reaches every
  socket (coalescing off, so every search alerts everyone);
- `baseline-broadcast`: the seed design's loop over every socket;
- `percolert-per-user`: the real use — W per-user watches, each search reaching only its
  matching subscribers (the baseline cannot express this).

    python bench/harness.py --quick            # < 3 minutes: 10k watches, 1k sockets
    python bench/harness.py                    # 10k and 100k watches, 1k and 5k sockets

Writes docs/benchmarks/results.json, results.md and latency_vs_rate.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from percolert import es, indices
from percolert.devnode import DevNode
from percolert.messages import WatchSpec
from percolert.sessions import COOKIE_NAME
from percolert.settings import Settings
from percolert.text import TextNormalizer
from percolert.watches import WatchStore
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
REPORT_DIR = ROOT / "docs" / "benchmarks"
PREFIX = "bench"
LOADGEN_PROCESSES = 2
# Per-user mode: subscribers are spread over these words; a search names one of them.
GROUP_WORDS = [
    "sony",
    "apple",
    "samsung",
    "bose",
    "kindle",
    "anker",
    "lenovo",
    "garmin",
    "canon",
    "jbl",
    "dell",
    "asus",
    "google",
    "nintendo",
    "beats",
    "sonos",
    "fujifilm",
    "nikon",
    "microsoft",
    "amazon",
    "headphones",
    "laptop",
    "charger",
    "camera",
    "speaker",
    "tablet",
    "watch",
    "earbuds",
    "tv",
    "soundbar",
    "controller",
    "router",
    "vacuum",
    "thermostat",
    "doorbell",
    "mouse",
    "keyboard",
    "drone",
    "lens",
    "ring",
]


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
    search_ms: dict[str, float] = field(default_factory=dict)
    alerts_per_s: float = 0.0
    server_cpu_percent: float = 0.0
    server_peak_rss_mb: float = 0.0
    percolate_ms_per_batch: float | None = None
    percolate_events_per_batch: float | None = None
    sustained: bool = False


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 2)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 2)}


def catalog_words() -> list[str]:
    words: set[str] = set()
    for line in (ROOT / "data/products.ndjson").read_text().splitlines():
        words.update(re.findall(r"[a-z]{3,}", json.loads(line)["product_name"].lower()))
    return sorted(words)


async def load_watches(settings: Settings, count: int) -> None:
    """`count` background watches of 1-2 catalog words, spread over count/5 users."""
    words = catalog_words()
    rng = random.Random(7)
    client = es.create_client(settings)
    try:
        store = WatchStore(
            client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=10**9
        )
        batch: list[tuple[str | None, WatchSpec]] = []
        for number in range(count):
            terms = " ".join(rng.sample(words, rng.choice([1, 2, 2])))
            batch.append((f"background-{number % max(1, count // 5)}", WatchSpec(terms=terms)))
            if len(batch) == 10_000:
                await store.add_many(batch)
                batch = []
        if batch:
            await store.add_many(batch)
    finally:
        await client.close()


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
        [*cli, "ingest", str(ROOT / "data/products.ndjson")],
        env=env,
        check=True,
        capture_output=True,
    )


class Server:
    """The server under test, in its own process."""

    def __init__(self, design: str, node_url: str, scratch: Path) -> None:
        self.design = design
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "ELASTICSEARCH_URL": node_url,
            "PERCOLERT_INDEX_PREFIX": PREFIX,
            "PERCOLERT_STATE_DIR": str(scratch / "app"),
            "PERCOLERT_COALESCE_SECONDS": "0",
            "PERCOLERT_MAX_WATCHES_PER_USER": "1000",
            "PRODUCTS_INDEX": f"{PREFIX}-products",
            "PYTHONPATH": str(ROOT),
        }
        if design.startswith("baseline"):
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.baseline:app",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ]
            self.ready_path = "/search?q=ready"
        else:
            command = [sys.executable, "-m", "percolert.cli", "serve", "--port", str(self.port)]
            self.ready_path = "/readyz"
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"{design} server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def make_users(base: str, users: int, design: str) -> list[tuple[str | None, str | None]]:
    """(cookie, group word) per user; per-user mode also registers each user's watch."""
    if design.startswith("baseline"):
        return [(None, None)] * users
    limits = httpx.Limits(max_connections=50)
    semaphore = asyncio.Semaphore(50)

    async def one(number: int) -> tuple[str | None, str | None]:
        async with semaphore, httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            await http.get("/healthz")
            word = None
            if design == "percolert-per-user":
                word = GROUP_WORDS[number % len(GROUP_WORDS)]
                (await http.post("/api/watches", json={"terms": word})).raise_for_status()
            return http.cookies[COOKIE_NAME], word

    return list(await asyncio.gather(*(one(number) for number in range(users))))


def start_loadgens(
    server: Server, cookies: list[str | None], scratch: Path, tag: str
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    processes = []
    for part in range(LOADGEN_PROCESSES):
        share = cookies[part::LOADGEN_PROCESSES]
        spec = scratch / f"{tag}-sockets-{part}.json"
        spec.write_text(
            json.dumps(
                {
                    "url": server.url.replace("http://", "ws://") + "/ws",
                    "origin": server.url,
                    "cookies": share,
                    "hello": not server.design.startswith("baseline"),
                }
            )
        )
        record = scratch / f"{tag}-record-{part}.txt"
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", str(spec), str(record)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        processes.append((process, record))
    deadline = time.monotonic() + 180
    for process, record in processes:
        ready = Path(str(record) + ".ready")
        while not ready.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("a load generator did not connect its sockets")
            time.sleep(0.2)
    return processes


def stop_loadgens(processes: list[tuple[subprocess.Popen[bytes], Path]]) -> dict[str, list[float]]:
    received: dict[str, list[float]] = defaultdict(list)
    for process, _ in processes:
        process.send_signal(signal.SIGTERM)
    for process, record in processes:
        process.wait(timeout=60)
        for line in record.read_text().splitlines():
            rid, at = line.split()
            received[rid].append(float(at))
    return received


def scrape_percolate(base: str) -> tuple[float, float, float]:
    """(seconds sum, batch count, events sum) of the percolate histograms so far."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("percolert_percolate_seconds_", "percolert_percolate_batch_size_")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return (
        values.get("percolert_percolate_seconds_sum", 0.0),
        values.get("percolert_percolate_seconds_count", 0.0),
        values.get("percolert_percolate_batch_size_sum", 0.0),
    )


async def drive(
    server: Server, design: str, rate: float, seconds: float, tag: str
) -> tuple[dict[str, float], dict[str, str], list[float], int]:
    """Open-loop searches: returns send times and words by search id, latencies, errors."""
    sent: dict[str, float] = {}
    words: dict[str, str] = {}
    latencies: list[float] = []
    errors = 0
    count = int(rate * seconds)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
        await http.get("/healthz")

        async def one(number: int) -> None:
            nonlocal errors
            rid = f"{tag}-{number}"
            if design == "percolert-per-user":
                word = GROUP_WORDS[number % len(GROUP_WORDS)]
                path, params = "/api/search", {"q": f"{word} {rid}"}
            elif design == "percolert-broadcast":
                word, path, params = "kindle", "/api/search", {"q": f"kindle {rid}"}
            else:
                word, path, params = "kindle", "/search", {"q": "kindle", "rid": rid}
            words[rid] = word
            started = time.time()
            sent[rid] = started
            try:
                response = await http.get(path, params=params)
                response.raise_for_status()
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append((time.time() - started) * 1000)

        tasks = []
        begin = time.perf_counter()
        for number in range(count):
            delay = begin + number / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(number)))
        await asyncio.gather(*tasks)
    return sent, words, latencies, errors


def run_design(
    design: str,
    node_url: str,
    scratch: Path,
    watches: int,
    sockets: int,
    tabs: int,
    rates: list[float],
    seconds: float,
) -> list[Step]:
    server = Server(design, node_url, scratch)
    steps: list[Step] = []
    try:
        users = asyncio.run(make_users(server.url, sockets // tabs, design))
        cookies = [cookie for cookie, _ in users for _ in range(tabs)]
        sockets_per_word: dict[str, int] = defaultdict(int)
        for _, word in users:
            if word is not None:
                sockets_per_word[word] += tabs
        loadgens = start_loadgens(server, cookies, scratch, design)
        all_sent: list[tuple[Step, dict[str, float], dict[str, str]]] = []
        try:
            for step_number, rate in enumerate(rates):
                step = Step(design=design, watches=watches, sockets=len(cookies), rate=rate)
                before_cpu = server.ps.cpu_times()
                before_wall = time.monotonic()
                percolate_before = (
                    None if design.startswith("baseline") else scrape_percolate(server.url)
                )
                peak = 0.0
                sent, words, search_ms, errors = asyncio.run(
                    drive(server, design, rate, seconds, f"{design[:1]}{step_number}")
                )
                peak = max(peak, server.ps.memory_info().rss)
                time.sleep(2.0)  # let the last alerts land
                cpu = server.ps.cpu_times()
                busy = (cpu.user + cpu.system) - (before_cpu.user + before_cpu.system)
                step.server_cpu_percent = round(100 * busy / (time.monotonic() - before_wall), 1)
                step.server_peak_rss_mb = round(peak / 2**20, 1)
                if percolate_before is not None:
                    seconds_sum, batches, events = (
                        after - before
                        for after, before in zip(
                            scrape_percolate(server.url), percolate_before, strict=True
                        )
                    )
                    if batches:
                        step.percolate_ms_per_batch = round(1000 * seconds_sum / batches, 2)
                        step.percolate_events_per_batch = round(events / batches, 2)
                step.searches = len(sent)
                step.search_errors = errors
                step.search_ms = percentiles(search_ms)
                all_sent.append((step, sent, words))
                steps.append(step)
                print(
                    f"  {design} rate {rate}/s: searches {len(sent)}, errors {errors}", flush=True
                )
        finally:
            received = stop_loadgens(loadgens)
        for step, sent, words in all_sent:
            latencies: list[float] = []
            expected = 0
            for rid, at in sent.items():
                if design == "percolert-per-user":
                    expected += sockets_per_word[words[rid]]
                else:
                    expected += step.sockets
                latencies.extend((got - at) * 1000 for got in received.get(rid, []))
            step.alerts_expected = expected
            step.alerts_delivered = len(latencies)
            step.alert_ms = percentiles(latencies)
            span = max(seconds, 1e-9)
            step.alerts_per_s = round(len(latencies) / span, 1)
            step.sustained = bool(
                latencies
                and step.search_errors == 0
                and step.alerts_delivered >= 0.99 * expected
                and step.alert_ms["p99"] <= 100.0
            )
    finally:
        server.stop()
    return steps


def highest_sustained(steps: list[Step], design: str, watches: int, sockets: int) -> float:
    rates = [
        s.rate
        for s in steps
        if s.design == design and s.watches == watches and s.sockets == sockets and s.sustained
    ]
    return max(rates, default=0.0)


def write_report(steps: list[Step], configurations: list[tuple[int, int]]) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "results.json").write_text(
        json.dumps([asdict(s) for s in steps], indent=2) + "\n"
    )
    lines = [
        "# Search-to-alert benchmark",
        "",
        f"Machine: {os.cpu_count()} cores, Elasticsearch dev node, everything on one host. "
        "Generated by `nox -s bench` (bench/harness.py). Alert latency is from sending the "
        "search to each recipient socket receiving its alert; a rate is *sustained* when "
        "every search succeeded, ≥ 99% of the alerts arrived and p99 ≤ 100 ms.",
        "",
        "## Highest sustained search rate",
        "",
        "| watches | sockets | percolert broadcast | baseline broadcast | ratio "
        "| percolert per-user |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for watches, sockets in configurations:
        ours = highest_sustained(steps, "percolert-broadcast", watches, sockets)
        theirs = highest_sustained(steps, "baseline-broadcast", watches, sockets)
        per_user = highest_sustained(steps, "percolert-per-user", watches, sockets)
        ratio = f"{ours / theirs:.2f}" if theirs else "n/a"
        lines.append(
            f"| {watches} | {sockets} | {ours:g}/s | {theirs:g}/s | {ratio} | {per_user:g}/s |"
        )
    lines += [
        "",
        "## Every step",
        "",
        "| design | watches | sockets | rate/s | alert p50 | p90 | p99 | max | delivered | "
        "alerts/s | search p50 | p99 | server CPU | peak RSS | percolate ms/batch | events/batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        a, q = s.alert_ms, s.search_ms
        lines.append(
            f"| {s.design} | {s.watches} | {s.sockets} | {s.rate:g} | {a.get('p50', '-')} | "
            f"{a.get('p90', '-')} | {a.get('p99', '-')} | {a.get('max', '-')} | "
            f"{s.alerts_delivered}/{s.alerts_expected} | {s.alerts_per_s:g} | "
            f"{q.get('p50', '-')} | {q.get('p99', '-')} | {s.server_cpu_percent}% | "
            f"{s.server_peak_rss_mb} MB | {s.percolate_ms_per_batch or '-'} | "
            f"{s.percolate_events_per_batch or '-'} |"
        )
    (REPORT_DIR / "results.md").write_text("\n".join(lines) + "\n")
    plot(steps)


def plot(steps: list[Step]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    series: dict[str, list[Step]] = defaultdict(list)
    for step in steps:
        if step.alert_ms:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small configuration")
    parser.add_argument("--seconds", type=float, default=None, help="length of each rate step")
    parser.add_argument(
        "--designs",
        default="percolert-broadcast,baseline-broadcast,percolert-per-user",
        help="comma-separated subset to run",
    )
    parser.add_argument("--rates", default=None, help="comma-separated searches per second")
    args = parser.parse_args()
    if args.quick:
        configurations = [(10_000, 1_000)]
        rates = [10.0, 25.0, 50.0, 100.0]
        seconds = args.seconds or 4.0
    else:
        configurations = [(10_000, 1_000), (100_000, 1_000), (100_000, 5_000)]
        rates = [10.0, 25.0, 50.0, 100.0, 200.0]
        seconds = args.seconds or 8.0
    if args.rates:
        rates = [float(rate) for rate in args.rates.split(",")]
    designs = args.designs.split(",")
    tabs = 2
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="percolert-bench-") as scratch_name:
        scratch = Path(scratch_name)
        node = DevNode(scratch / "state", heap="2g")
        state, _ = node.start(free_port())
        settings = Settings(elasticsearch_url=state.url, index_prefix=PREFIX)
        try:
            loaded = 0
            for watches, sockets in configurations:
                if loaded == 0 or loaded > watches:
                    prepare_catalog(state.url, recreate=loaded > watches)
                    loaded = 0
                print(f"W={watches} S={sockets}: loading watches...", flush=True)
                asyncio.run(load_watches(settings, watches - loaded))
                loaded = watches
                for design in designs:
                    asyncio.run(set_default_watch(settings, design == "percolert-broadcast"))
                    steps += run_design(
                        design, state.url, scratch, watches, sockets, tabs, rates, seconds
                    )
        finally:
            node.stop()
    write_report(steps, configurations)
    print((REPORT_DIR / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
