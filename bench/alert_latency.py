"""Search-to-alert latency, end to end on this machine.

Separate processes for Elasticsearch (a fresh dev node), the Percolert server and this load
client. Registers W background watches drawn from the catalog's vocabulary for many users,
opens S subscriber sockets (U users with S/U tabs each, every user watching one brand), then
sends searches at a fixed open-loop rate, each naming one brand plus a unique nonce, and
records for every recipient socket the time from sending the search to receiving its alert.

Coalescing is switched off here (PERCOLERT_COALESCE_SECONDS=0) so every search produces
alerts and the pipeline itself is measured.

    python bench/alert_latency.py [--watches 10000] [--users 100] [--tabs 2] [--rate 20]
                                  [--searches 300] [--report FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from bench.harness import PREFIX, Server, prepare_catalog
from percolert import es, indices
from percolert.devnode import DevNode
from percolert.messages import WatchSpec
from percolert.sessions import COOKIE_NAME
from percolert.settings import Settings
from percolert.text import TextNormalizer
from percolert.watches import WatchStore
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
BRANDS = ["sony", "apple", "samsung", "bose", "kindle", "anker", "lenovo", "garmin", "canon", "jbl"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def vocabulary() -> list[str]:
    words: set[str] = set()
    for line in (ROOT / "data/products.ndjson").read_text().splitlines():
        product = json.loads(line)
        words.update(re.findall(r"[a-z]{3,}", product["product_name"].lower()))
    return sorted(words)


async def load_background_watches(settings: Settings, count: int) -> None:
    """`count` watches of 1-2 catalog words for count/10 users who are not connected."""
    words = vocabulary()
    generator = random.Random(7)
    specs: list[tuple[str | None, WatchSpec]] = []
    for number in range(count):
        terms = " ".join(generator.sample(words, generator.choice([1, 2, 2])))
        specs.append((f"background-{number % max(1, count // 10)}", WatchSpec(terms=terms)))
    client = es.create_client(settings)
    try:
        store = WatchStore(
            client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=10**9
        )
        await store.add_many(specs)
    finally:
        await client.close()


async def run_load(base: str, args: argparse.Namespace) -> dict[str, Any]:
    ws_url = base.replace("http://", "ws://") + "/ws"
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    received_per_nonce: dict[str, int] = defaultdict(int)
    search_ms: list[float] = []
    expected_recipients: dict[str, int] = {}
    sockets: list[ClientConnection] = []
    users_per_brand: dict[str, int] = defaultdict(int)

    async def listen(connection: ClientConnection) -> None:
        async for raw in connection:
            now = time.perf_counter()
            message = json.loads(raw)
            if message["type"] != "alert":
                continue
            nonce = message["query"].rsplit(" ", 1)[-1]
            if nonce in sent_at:
                latencies.append((now - sent_at[nonce]) * 1000)
                received_per_nonce[nonce] += 1

    async with httpx.AsyncClient(base_url=base, timeout=30) as searcher:
        await searcher.get("/healthz")
        listeners = []
        for user in range(args.users):
            async with httpx.AsyncClient(base_url=base, timeout=30) as browser:
                await browser.get("/healthz")
                brand = BRANDS[user % len(BRANDS)]
                response = await browser.post("/api/watches", json={"terms": brand})
                response.raise_for_status()
                users_per_brand[brand] += 1
                cookie = browser.cookies[COOKIE_NAME]
            for _ in range(args.tabs):
                connection = await connect(
                    ws_url,
                    origin=Origin(base),
                    additional_headers={"Cookie": f"{COOKIE_NAME}={cookie}"},
                    max_queue=None,
                )
                await connection.recv()  # hello
                sockets.append(connection)
                listeners.append(asyncio.create_task(listen(connection)))

        async def one_search(number: int) -> None:
            brand = BRANDS[number % len(BRANDS)]
            nonce = f"n{number:06d}"
            expected_recipients[nonce] = users_per_brand[brand] * args.tabs
            started = time.perf_counter()
            sent_at[nonce] = started
            response = await searcher.get("/api/search", params={"q": f"{brand} {nonce}"})
            search_ms.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()

        async def all_in(want: int) -> None:
            while sum(received_per_nonce.values()) < want:  # noqa: ASYNC110 - bounded by wait_for
                await asyncio.sleep(0.05)

        tasks = []
        interval = 1.0 / args.rate
        begin = time.perf_counter()
        for number in range(args.searches):  # open loop: fixed schedule, no waiting for answers
            delay = begin + number * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_search(number)))
        await asyncio.gather(*tasks)
        want = sum(expected_recipients.values())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in(want), timeout=10)
        for task in listeners:
            task.cancel()
        for connection in sockets:
            await connection.close()

    delivered = sum(received_per_nonce.values())
    return {
        "watches": args.watches + args.users,
        "sockets": len(sockets),
        "users": args.users,
        "searches": args.searches,
        "rate_per_s": args.rate,
        "alerts_expected": want,
        "alerts_delivered": delivered,
        "alert_ms": {
            name: round(percentile(latencies, q), 2)
            for name, q in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
        }
        | {"max": round(max(latencies), 2)},
        "alert_ms_median": round(statistics.median(latencies), 2),
        "search_ms": {
            name: round(percentile(search_ms, q), 2) for name, q in [("p50", 0.5), ("p99", 0.99)]
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=10_000, help="background watches")
    parser.add_argument("--users", type=int, default=100, help="connected subscribers")
    parser.add_argument("--tabs", type=int, default=2, help="sockets per subscriber")
    parser.add_argument("--rate", type=float, default=20, help="searches per second")
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="percolert-bench-") as scratch:
        node = DevNode(Path(scratch) / "state", heap="1g")
        state, _ = node.start(free_port())
        settings = Settings(elasticsearch_url=state.url, index_prefix=PREFIX)
        server = None
        try:
            prepare_catalog(state.url)
            asyncio.run(load_background_watches(settings, args.watches))
            server = Server("percolert", state.url, Path(scratch))  # coalescing off
            result = asyncio.run(run_load(server.url, args))
        finally:
            if server is not None:
                server.stop()
            node.stop()

    print(
        f"{result['watches']} watches, {result['sockets']} sockets ({result['users']} users), "
        f"{result['searches']} searches at {result['rate_per_s']}/s"
    )
    print(f"  alerts delivered {result['alerts_delivered']} of {result['alerts_expected']}")
    alert = result["alert_ms"]
    print(
        f"  search-to-alert  p50 {alert['p50']} ms  p90 {alert['p90']} ms  "
        f"p99 {alert['p99']} ms  max {alert['max']} ms"
    )
    print(
        f"  search           p50 {result['search_ms']['p50']} ms  "
        f"p99 {result['search_ms']['p99']} ms"
    )
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
