"""Catalog changes as events: ingest with change detection and percolation beside a plain
ingest of the same file, on the same node, in one run (issue 13's benchmark).

- A generated catalog of `--products` products (from the sample catalog's words and
  categories) is loaded plainly; an update file of as many lines is then ingested: a quarter
  new products, a quarter cheaper by 10-30 %, half unchanged ("half of them new or cheaper").
- `--watches` background watches (1-2 catalog words, owners not connected) are loaded as the
  search benchmark loads them, notifying of both.
- Throughput, in rounds with alternating order, each from the same starting state (the base
  catalog re-loaded, product alerts and notices emptied): the update file ingested plainly
  (`percolert ingest --plain`'s path), and with change detection, percolation and product
  alerts (`percolert ingest`'s path). Products per second, alerts written per second.
- Latency: a server with connected owners; single products changed through the admin API
  (`PUT /api/admin/products/{sku}`, a price drop each) at a steady rate; each timed from the
  request being sent to the product alert arriving on the owner's socket.

    python bench/ingest_changes.py --quick      # ~1 minute: 2k products, 10k watches
    python bench/ingest_changes.py              # 10k products, 100k watches

Writes docs/benchmarks/product-alerts-results.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from bench.harness import bench_node, load_watches
from bench.rig import REPORT_DIR, ROOT, Server, percentiles
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.products import catalog
from percolert.products.catalog import Product
from percolert.products.changes import ChangeDetection
from percolert.products.matching import ProductAlerting, product_event
from percolert.watches.percolator import Match, Percolator, SearchEvent
from percolert.web.middleware.sessions import COOKIE_NAME

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
# Words no catalog product has: each latency product carries one, watched by one owner.
LATENCY_WORD = "zqlatency"


@dataclass
class Round:
    mode: str  # "plain" or "changes"
    products: int
    seconds: float
    products_per_s: float
    changes: int = 0
    alerts: int = 0
    alerts_per_s: float = 0.0
    # Wall time of the percolate requests (two in flight at once: may exceed `seconds`).
    percolate_seconds: float = 0.0
    es_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0


@dataclass
class Report:
    products: int
    watches: int
    rounds: list[Round] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_samples: int = 0
    latency_missing: int = 0
    latency_rate: float = 0.0
    # Watches one changed product matches, on average (what percolation's cost follows).
    matches_per_change: float = 0.0


def generate_catalog(
    count: int, seed: int = 13
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(base catalog, update file): products made from the sample catalog's names, brands,
    descriptions and categories, with fresh skus and prices."""
    rng = random.Random(seed)
    sample = [json.loads(line) for line in (ROOT / "data/products.ndjson").read_text().splitlines()]
    base = []
    for number in range(count):
        model = rng.choice(sample)
        base.append(
            {
                **model,
                "sku": f"GEN-{number:06d}",
                "product_name": f"{model['product_name']} {rng.choice('ABCDEFGH')}{number % 97}",
                "price": round(rng.uniform(10, 900), 2),
                "in_stock": True,
            }
        )
    update = []
    for number, product in enumerate(base):
        kind = number % 4
        if kind == 0:  # new
            model = rng.choice(sample)
            update.append(
                {
                    **model,
                    "sku": f"NEW-{number:06d}",
                    "price": round(rng.uniform(10, 900), 2),
                    "in_stock": True,
                }
            )
        elif kind == 1:  # cheaper
            update.append({**product, "price": round(product["price"] * rng.uniform(0.7, 0.9), 2)})
        else:
            update.append(product)
    return base, update


def write_ndjson(path: Path, products: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(product) + "\n" for product in products))
    return path


async def _ignore(found: list[tuple[SearchEvent, list[Match]]]) -> None:
    pass


async def reset(settings: Settings, base: Path) -> None:
    """The same starting state for every round: the base catalog, no product alerts."""
    client = es.create_client(settings)
    try:
        for name in ("products", "product_alerts", "product_notices", "product_seen"):
            alias = indices.alias_for(settings, name)
            await client.delete_by_query(
                index=alias, query={"match_all": {}}, refresh=True, conflicts="proceed"
            )
        await catalog.ingest(client, indices.alias_for(settings, "products"), base)
    finally:
        await client.close()


async def timed_ingest(
    settings: Settings, update: Path, mode: str
) -> tuple[float, catalog.IngestReport, int, float]:
    """Seconds, the ingest report, the alerts written and the percolate requests' time."""
    client = es.create_client(settings)
    percolation_client = es.create_client(settings, raw_json=True)  # as the CLI's
    try:
        products = indices.alias_for(settings, "products")
        if mode == "plain":
            started = time.perf_counter()
            report = await catalog.ingest(client, products, update)
            return time.perf_counter() - started, report, 0, 0.0
        percolating = [0.0]

        def observe(seconds: float | None, events: int) -> None:
            percolating[0] += seconds or 0.0

        percolator = Percolator(
            percolation_client,
            indices.alias_for(settings, "watches"),
            TextNormalizer(),
            _ignore,
            observe=observe,
        )
        alerting = ProductAlerting(client, settings, percolator)
        started = time.perf_counter()
        async with alerting.run() as run:
            report = await catalog.ingest(
                client, products, update, writer=ChangeDetection(client, products, run)
            )
        return time.perf_counter() - started, report, run.alerts, percolating[0]
    finally:
        await percolation_client.close()
        await client.close()


async def matches_per_change(settings: Settings, update: list[dict[str, Any]]) -> float:
    """Watches a changed product of the update file matches, on average over a sample."""
    sample = [
        product_event(msgspec.convert(product, Product), 0.0)
        for number, product in enumerate(update[:800])
        if number % 4 in (0, 1)  # new or cheaper
    ]
    client = es.create_client(settings, raw_json=True)
    try:
        percolator = Percolator(
            client, indices.alias_for(settings, "watches"), TextNormalizer(), _ignore
        )
        found = await percolator.percolate(sample, audience="products")
    finally:
        await client.close()
    return round(sum(len(matches) for matches in found) / len(sample), 1)


async def owners_with_sockets(
    base_url: str, count: int
) -> list[tuple[httpx.AsyncClient, ClientConnection, str]]:
    """`count` shoppers, each watching one latency word under $200, each with one socket
    open: a probe dropping from over that price to under it alerts its owner at once (a
    crossing drop is news, whatever the minimum interval)."""
    owners = []
    for number in range(count):
        http = httpx.AsyncClient(base_url=base_url, timeout=15)
        await http.post("/api/session", json={})
        word = f"{LATENCY_WORD}{chr(ord('a') + number % 26)}{chr(ord('a') + number // 26)}"
        response = await http.post("/api/watches", json={"terms": word, "max_price": 200})
        response.raise_for_status()
        socket = await connect(
            base_url.replace("http://", "ws://") + "/ws",
            origin=Origin(base_url),
            additional_headers={"Cookie": f"{COOKIE_NAME}={http.cookies[COOKIE_NAME]}"},
        )
        await socket.recv()  # hello
        owners.append((http, socket, word))
    return owners


async def measure_latency(base_url: str, owners: int, rate: float, seconds: float) -> Report:
    """Admin PUTs of price drops at `rate`, each to one connected owner's watch."""
    report = Report(products=0, watches=0, latency_rate=rate)
    held = await owners_with_sockets(base_url, owners)
    admin = httpx.AsyncClient(
        base_url=base_url, timeout=15, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    every_one = asyncio.Event()

    async def listen(socket: ClientConnection) -> None:
        async for raw in socket:
            message = json.loads(raw)
            if message.get("type") == "product_alert":
                received[message["product"]["sku"]] = time.perf_counter()
                if sent and len(received.keys() & sent.keys()) == total:
                    every_one.set()

    def product(word: str, sku: str, price: float) -> dict[str, Any]:
        return {
            "sku": sku,
            "product_name": f"Latency probe {word}",
            "description": "",
            "price": price,
            "category": "audio",
            "brand": "Bench",
            "in_stock": True,
        }

    try:
        # Each probe product exists first, over its watch's price (matching nobody), so the
        # timed PUT is a drop under it.
        total = int(rate * seconds)
        probes = [(held[n % len(held)][2], f"LAT-{n:06d}") for n in range(total)]
        for word, sku in probes:
            await admin.put(f"/api/admin/products/{sku}", json=product(word, sku, 500.0))
        async with asyncio.TaskGroup() as group:
            listeners = [group.create_task(listen(socket)) for _, socket, _ in held]
            started = time.perf_counter()
            for number, (word, sku) in enumerate(probes):
                await asyncio.sleep(max(0.0, started + number / rate - time.perf_counter()))
                sent[sku] = time.perf_counter()
                response = await admin.put(
                    f"/api/admin/products/{sku}", json=product(word, sku, 100.0)
                )
                response.raise_for_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(every_one.wait(), timeout=10)
            for task in listeners:
                task.cancel()
    except* asyncio.CancelledError:
        pass
    finally:
        await admin.aclose()
        for http, socket, _ in held:
            await socket.close()
            await http.aclose()
    latencies = [(received[sku] - at) * 1000 for sku, at in sent.items() if sku in received]
    report.latency_ms = percentiles(latencies)
    report.latency_samples = len(latencies)
    report.latency_missing = len(sent) - len(latencies)
    return report


def write_report(report: Report, path_md: Path, path_json: Path) -> None:
    path_json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    by_mode: dict[str, list[Round]] = {}
    for result in report.rounds:
        by_mode.setdefault(result.mode, []).append(result)

    def median(mode: str, key: str) -> float:
        return float(statistics.median(getattr(r, key) for r in by_mode.get(mode, [])))

    plain = median("plain", "products_per_s")
    changes = median("changes", "products_per_s")
    lines = [
        "# Product alerts: ingest with change detection and percolation (results)",
        "",
        f"{report.products:,} products (a quarter new, a quarter cheaper, half unchanged) "
        f"against {report.watches:,} watches (a changed product matches "
        f"{report.matches_per_change:,.0f} of them on average); "
        f"{len(report.rounds) // 2} rounds, alternating "
        "order, medians. Command: `nox -s bench_ingest` "
        "(`PYTHONPATH=. python bench/ingest_changes.py`).",
        "",
        "| ingest | products/s | seconds | changes | alerts written | alerts/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, label in (("plain", "plain (`--plain`)"), ("changes", "change detection + alerts")):
        lines.append(
            f"| {label} | {median(mode, 'products_per_s'):,.0f} | {median(mode, 'seconds'):.2f} "
            f"| {median(mode, 'changes'):,.0f} | {median(mode, 'alerts'):,.0f} "
            f"| {median(mode, 'alerts_per_s'):,.0f} |"
        )
    lines += [
        "",
        f"Change-detecting ingest at **{changes / plain:.2f}x** the plain rate "
        f"(goal: ≥ 1,000 products/s and ≥ 0.5x).",
        "",
        f"Admin API price drop → product alert on the owner's socket, {report.latency_rate:g}/s, "
        f"{report.latency_samples} samples ({report.latency_missing} missing): "
        + ", ".join(f"{key} {value:.0f} ms" for key, value in report.latency_ms.items()),
        "",
        "Every round:",
        "",
        "| round | ingest | products/s | changes | alerts |",
        "|---:|---|---:|---:|---:|",
    ]
    for number, result in enumerate(report.rounds):
        lines.append(
            f"| {number // 2 + 1} | {result.mode} | {result.products_per_s:,.0f} "
            f"| {result.changes:,} | {result.alerts:,} |"
        )
    path_md.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k products, 10k watches")
    parser.add_argument("--products", type=int, default=None)
    parser.add_argument("--watches", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--owners", type=int, default=100, help="connected owners (latency)")
    parser.add_argument("--rate", type=float, default=10.0, help="admin price drops per second")
    parser.add_argument("--seconds", type=float, default=None, help="latency phase length")
    parser.add_argument(
        "--warm-up", type=float, default=None, help="seconds of untimed runs on the fresh node"
    )
    args = parser.parse_args()
    products = args.products or (2_000 if args.quick else 10_000)
    watches = args.watches or (10_000 if args.quick else 100_000)
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    warm_up = args.warm_up if args.warm_up is not None else (30.0 if args.quick else 60.0)
    report = Report(products=products, watches=watches)
    with tempfile.TemporaryDirectory(prefix="percolert-bench-ingest-") as raw:
        scratch = Path(raw)
        base_products, update_products = generate_catalog(products)
        base = write_ndjson(scratch / "base.ndjson", base_products)
        update = write_ndjson(scratch / "update.ndjson", update_products)
        with bench_node(scratch) as (state, settings):
            node = psutil.Process(state.pid)
            client = es.create_client(settings)

            async def setup() -> None:
                try:
                    await indices.setup(client, settings, recreate=True)
                finally:
                    await client.close()

            asyncio.run(setup())
            print(f"loading {watches:,} watches", flush=True)
            asyncio.run(load_watches(settings, watches))
            report.matches_per_change = asyncio.run(matches_per_change(settings, update_products))
            print(f"{report.matches_per_change} watches matched per changed product", flush=True)
            me = psutil.Process()
            # A fresh node percolates 2-4x slower than one that has served a while (its
            # code not yet compiled: measured on fresh and hour-old nodes): untimed runs
            # of each mode for `--warm-up` seconds first.
            warm_until = time.monotonic() + warm_up
            while time.monotonic() < warm_until:
                for mode in ("changes", "plain"):
                    asyncio.run(reset(settings, base))
                    asyncio.run(timed_ingest(settings, update, mode))
            for number in range(args.rounds):
                order = ("plain", "changes") if number % 2 == 0 else ("changes", "plain")
                for mode in order:
                    asyncio.run(reset(settings, base))
                    es_before, me_before = node.cpu_times(), me.cpu_times()
                    seconds_taken, ingest_report, alerts, percolating = asyncio.run(
                        timed_ingest(settings, update, mode)
                    )
                    es_after, me_after = node.cpu_times(), me.cpu_times()
                    result = Round(
                        mode=mode,
                        products=ingest_report.loaded,
                        seconds=round(seconds_taken, 3),
                        products_per_s=round(ingest_report.loaded / seconds_taken, 1),
                        changes=ingest_report.changes.total if ingest_report.changes else 0,
                        alerts=alerts,
                        alerts_per_s=round(alerts / seconds_taken, 1),
                        percolate_seconds=round(percolating, 2),
                        es_cpu_seconds=round(
                            (es_after.user + es_after.system) - (es_before.user + es_before.system),
                            2,
                        ),
                        client_cpu_seconds=round(
                            (me_after.user + me_after.system) - (me_before.user + me_before.system),
                            2,
                        ),
                    )
                    report.rounds.append(result)
                    print(json.dumps(asdict(result)), flush=True)
            server = Server(
                "percolert-product-alerts",
                settings.elasticsearch_url,
                scratch,
                extra_env={"PERCOLERT_ADMIN_TOKEN": ADMIN_TOKEN},
            )
            try:
                latency = asyncio.run(measure_latency(server.url, args.owners, args.rate, seconds))
            finally:
                server.stop()
            report.latency_ms = latency.latency_ms
            report.latency_samples = latency.latency_samples
            report.latency_missing = latency.latency_missing
            report.latency_rate = args.rate
            print(json.dumps(report.latency_ms), flush=True)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    write_report(
        report,
        REPORT_DIR / "product-alerts-results.md",
        REPORT_DIR / "product-alerts-results.json",
    )
    print((REPORT_DIR / "product-alerts-results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
