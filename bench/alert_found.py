"""What alerts that show products cost: the search's extra aggregation (each category's
cheapest product, which an alert may show) and percolation's fifth doc value (the watch's
category, which says which products fit it). Each is measured side by side with the query
it replaced, in turns within one run, on a fresh dev node: equal work but for the change.

    python -m bench.alert_found [--watches 100000] [--copies 50] [--rounds 8]
                                [--report docs/benchmarks/alert-found.json]

The catalog is the sample one plus `--copies` renamed copies of it (291 products each), so
that a search matches hundreds of products in several categories; a fifth of the watches
name a category (the rest leave it missing, as most shoppers' do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
from elasticsearch import AsyncElasticsearch

from bench.harness import load_watches, prepare_catalog
from bench.rig import GROUP_WORDS, PREFIX, cpu_seconds
from percolert.core.settings import Settings, from_environment
from percolert.core.text import TextNormalizer
from percolert.dev.devnode import DevNode
from percolert.engine import es, indices
from percolert.engine.search import _FOUND, _SOURCE_FIELDS, build_query
from percolert.watches.percolator import _MATCHES, Percolator, SearchEvent
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 50  # requests per turn: CPU is read per block, so each block is one variant only

SEARCHES = [
    "kindle",
    "sony headphones",
    "iphone 16",
    "usb-c charger",
    "wireless earbuds",
    "gaming laptop",
    "4k tv",
    "smart watch",
    "power bank",
    "camera",
]


def copies_file(directory: Path, copies: int) -> Path:
    """The sample catalog `copies` times more, each copy's SKUs and names its own."""
    lines = (ROOT / "data/products.ndjson").read_text().splitlines()
    path = directory / "copies.ndjson"
    with path.open("w") as out:
        for copy in range(copies):
            for line in lines:
                product = json.loads(line)
                product["sku"] = f"{product['sku']}-C{copy}"
                product["product_name"] = f"{product['product_name']} mk{copy}"
                product["price"] = round(product["price"] * (0.8 + (copy % 9) / 20), 2)
                out.write(json.dumps(product) + "\n")
    return path


def summary(took: list[float], wall: list[float], cpu_ms: list[float]) -> dict[str, float]:
    ordered = sorted(wall)
    return {
        "took_p50_ms": statistics.median(took),
        "wall_p50_ms": round(statistics.median(wall), 2),
        "wall_p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
        "es_cpu_ms_per_request": round(statistics.median(cpu_ms), 3),
    }


async def in_turns(
    node: psutil.Process,
    variants: dict[str, Callable[[int], Awaitable[float]]],
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Each variant a block at a time, in turns (A B A B …); one warm-up round first."""
    took: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(rounds + 1):
        for name, request in variants.items():
            before = cpu_seconds(node)
            for number in range(BLOCK):
                sent = time.perf_counter()
                took_ms = await request(round_number * BLOCK + number)
                if round_number:
                    wall[name].append((time.perf_counter() - sent) * 1000)
                    took[name].append(took_ms)
            if round_number:
                cpu[name].append((cpu_seconds(node) - before) / BLOCK * 1000)
    return {name: summary(took[name], wall[name], cpu[name]) for name in variants}


async def measure(url: str, pid: int, watches: int, rounds: int) -> dict[str, Any]:
    node = psutil.Process(pid)
    settings = Settings(elasticsearch_url=url, index_prefix=PREFIX, elasticsearch_timeout=600)
    await load_watches(settings, watches, category_share=0.2)
    client: AsyncElasticsearch = es.create_client(settings)
    products = indices.alias_for(settings, "products")
    watch_alias = indices.alias_for(settings, "watches")
    before_found = {"found": {**_FOUND["found"], "aggs": {"cheapest": {"min": {"field": "price"}}}}}

    def search(aggs: dict[str, Any]) -> Callable[[int], Awaitable[float]]:
        async def request(number: int) -> float:
            response = await client.search(
                index=products,
                query=build_query(SEARCHES[number % len(SEARCHES)]),
                size=10,
                source_includes=_SOURCE_FIELDS,
                track_total_hits=True,
                aggs=aggs,
            )
            return float(response["took"])

        return request

    async def ignore(found: list[tuple[SearchEvent, list[Any]]]) -> None:
        return None

    percolator = Percolator(client, watch_alias, TextNormalizer(), ignore)
    # The aggregation as it was: without the category source.
    before_matches: dict[str, Any] = json.loads(json.dumps(_MATCHES))
    composite = before_matches["matches"]["composite"]
    composite["sources"] = [s for s in composite["sources"] if "category" not in s]

    def percolate(aggs: dict[str, Any]) -> Callable[[int], Awaitable[float]]:
        async def request(number: int) -> float:
            text = f"{GROUP_WORDS[number % len(GROUP_WORDS)]} headphones x{number}"
            document = percolator.document(SearchEvent(text=text, searcher="s"))
            response = await client.search(
                index=watch_alias,
                query={"percolate": {"field": "query", "documents": [document]}},
                size=0,
                track_total_hits=False,
                aggs=aggs,
            )
            return float(response["took"])

        return request

    # Alternatives to what the search does now, for the record: the cheapest product read
    # from doc values rather than _source, and only the cheapest product of all.
    by_doc_values: dict[str, Any] = json.loads(json.dumps(_FOUND))
    by_doc_values["found"]["aggs"]["cheapest_product"]["top_hits"] = {
        "size": 1,
        "sort": [{"price": "asc"}],
        "_source": False,
        "docvalue_fields": ["product_name.keyword", "price", "category", "brand.keyword"],
    }
    cheapest_of_all = {
        **before_found,
        "cheapest_of_all": {
            "top_hits": {"size": 1, "sort": [{"price": "asc"}], "_source": {"includes": ["price"]}}
        },
    }
    try:
        searched = await in_turns(
            node,
            {
                "search, categories' lowest price (before)": search(before_found),
                "search, and each category's cheapest product (now)": search(_FOUND),
                "  the same from doc values": search(by_doc_values),
                "  only the cheapest product of all": search(cheapest_of_all),
            },
            rounds,
        )
        percolated = await in_turns(
            node,
            {
                "percolate, 4 doc values (before)": percolate(before_matches),
                "percolate, and the watch's category (now)": percolate(_MATCHES),
            },
            rounds,
        )
    finally:
        await client.close()
    return {"watches": watches, "search": searched, "percolate": percolated}


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    before, now = list(results.values())[:2]
    print(f"\n{title}")
    print(f"{'':52s} {'took p50':>9s} {'wall p50':>9s} {'wall p99':>9s} {'ES CPU/req':>11s}")
    for name, row in results.items():
        print(
            f"{name:52s} {row['took_p50_ms']:7.1f}ms {row['wall_p50_ms']:7.2f}ms "
            f"{row['wall_p99_ms']:7.2f}ms {row['es_cpu_ms_per_request']:9.3f}ms"
        )
    ratio = now["wall_p50_ms"] / before["wall_p50_ms"]
    cpu_ratio = now["es_cpu_ms_per_request"] / max(before["es_cpu_ms_per_request"], 1e-9)
    print(f"now / before: wall p50 {ratio:.2f}x, ES CPU {cpu_ratio:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=100_000)
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--report", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="percolert-alert-found-") as scratch:
        node = DevNode.configured(from_environment(), Path(scratch) / "state", heap="2g")
        state, _ = node.start(free_port())
        try:
            prepare_catalog(state.url)
            env = {"ELASTICSEARCH_URL": state.url, "PERCOLERT_INDEX_PREFIX": PREFIX}
            subprocess.run(
                [
                    sys.executable,
                    *("-m", "percolert.cli", "ingest", "--plain"),
                    str(copies_file(Path(scratch), args.copies)),
                ],
                env={**os.environ, **env},
                check=True,
                capture_output=True,
            )
            results = asyncio.run(measure(state.url, state.pid, args.watches, args.rounds))
        finally:
            node.stop()
    results["products"] = 291 * (args.copies + 1)
    print(f"{results['products']} products, {results['watches']} watches, {BLOCK}-request turns")
    print_table("Search (what the shopper waits for)", results["search"])
    print_table("Percolation of one search", results["percolate"])
    if args.report is not None:
        args.report.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
