"""Search latency and dev-node start time, end to end on this machine.

Starts a fresh dev node (timed), sets up the indices, loads the sample catalog, runs
`percolert serve` in its own process, then sends shopper queries one at a time and reports
client-observed latency percentiles (plus the server's own `took_ms`).

    python bench/search_latency.py [--requests 500] [--report docs/benchmarks/search.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import prepare_catalog
from bench.rig import Server
from percolert.core.settings import from_environment
from percolert.dev.devnode import DevNode
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
QUERIES = [
    "kindle",
    "kindle paperwhite",
    "iphone 16 pro",
    "noise cancelling headphones",
    "usb-c charger",
    "macbook air",
    "sony headphones",
    "galaxy s25",
    "wireless earbuds",
    "gaming laptop",
    "kindel",
    "headphnes",
    "4k tv",
    "smart speaker",
    "power bank",
    "apple watch",
    "playstation 5",
    "mirrorless camera",
    "e-readers",
    "robot vacuum",
]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--report", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="percolert-bench-") as scratch:
        node = DevNode.configured(from_environment(), Path(scratch) / "state")
        started = time.perf_counter()
        state, _ = node.start(free_port())
        node_start_s = time.perf_counter() - started
        server = None
        try:
            prepare_catalog(state.url)
            server = Server("percolert", state.url, Path(scratch))
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for query in QUERIES * 3:  # warm caches and JIT
                    client.get("/api/search", params={"q": query})
                latencies: list[float] = []
                server_took: list[float] = []
                for number in range(args.requests):
                    query = QUERIES[number % len(QUERIES)]
                    sent = time.perf_counter()
                    response = client.get("/api/search", params={"q": query})
                    latencies.append((time.perf_counter() - sent) * 1000)
                    response.raise_for_status()
                    server_took.append(response.json()["took_ms"])
        finally:
            if server is not None:
                server.stop()
            node.stop()

    result = {
        "node_start_s": round(node_start_s, 2),
        "requests": args.requests,
        "client_ms": {
            name: round(percentile(latencies, fraction), 2)
            for name, fraction in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
        },
        "server_took_ms": {
            name: round(percentile(server_took, fraction), 2)
            for name, fraction in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
        },
        "client_ms_mean": round(statistics.fmean(latencies), 2),
    }
    print(f"dev node start: {result['node_start_s']} s")
    print(f"search, {args.requests} sequential requests over {len(QUERIES)} queries:")
    print(
        f"  client-observed  p50 {result['client_ms']['p50']} ms  p90 "
        f"{result['client_ms']['p90']} ms  p99 {result['client_ms']['p99']} ms"
    )
    print(
        f"  server took_ms   p50 {result['server_took_ms']['p50']} ms  p90 "
        f"{result['server_took_ms']['p90']} ms  p99 {result['server_took_ms']['p99']} ms"
    )
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
