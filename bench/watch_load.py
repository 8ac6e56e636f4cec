"""Bulk watch loading, before and after, side by side on one fresh node.

Loads N harness-shaped watches (1-2 words of the catalog vocabulary, owners
`background-{n % (N//5)}`, bench/harness.py) into a freshly recreated watches index, once per
variant and round, the variants alternating. Each load runs in a worker process of its own:
`old` is the code before issue 14 (WatchStore.add_many of /work/before, or --before), in
chunks of 10,000 as the harness called it; `new` is WatchStore.load. Reported per variant:
watches/s (median of rounds), Elasticsearch's CPU per 1,000 watches, the loader's CPU, the
node's peak heap and its old-generation collections during the load.

    PYTHONPATH=. python bench/watch_load.py --watches 1000000 --rounds 2
    PYTHONPATH=. python bench/watch_load.py --variants new,new+async,new+shards2

A variant is `old`, `new` or `cli` (`percolert watches load FILE` of the same watches, the
file written first, untimed; its time includes the command's start), optionally with
`+async` (translog durability async during the load), `+shards2` (the index created with 2
shards), `+chunkN` (N watches a request) or
`+flightN` (N requests in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.watches.store import WatchStore

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench"


def harness_watches(count: int) -> list[tuple[str | None, WatchSpec]]:
    """What bench/harness.py's load_watches loads (same seed, same shapes)."""
    from bench.harness import catalog_words

    words = catalog_words()
    rng = random.Random(7)
    return [
        (
            f"background-{number % max(1, count // 5)}",
            WatchSpec(terms=" ".join(rng.sample(words, rng.choice([1, 2, 2])))),
        )
        for number in range(count)
    ]


async def worker(url: str, prefix: str, variant: str, count: int) -> dict[str, Any]:
    """One load in this process; its wall time and CPU (not counting making the input)."""
    options = dict(_options(variant))
    watches = harness_watches(count)
    settings = Settings(elasticsearch_url=url, index_prefix=prefix)
    client = es.create_client(settings)
    store = WatchStore(
        client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=10**9
    )
    try:
        if variant.startswith("cli"):
            return _cli_load(settings, watches)
        started, cpu = time.perf_counter(), time.process_time()
        if variant.startswith("old"):
            for start in range(0, count, 10_000):
                await store.add_many(watches[start : start + 10_000])
        else:
            report = await store.load(
                ((ref, owner, spec) for ref, (owner, spec) in enumerate(watches)),
                chunk_size=int(options.get("chunk", 2000)),
                in_flight=int(options.get("flight", 2)),
            )
            assert report.refused == 0, report.errors[:3]
        return {
            "seconds": time.perf_counter() - started,
            "loader_cpu": time.process_time() - cpu,
        }
    finally:
        await client.close()


def _cli_load(settings: Settings, watches: list[tuple[str | None, WatchSpec]]) -> dict[str, Any]:
    """`percolert watches load FILE` of the same watches, written to a file first (untimed)."""
    with tempfile.TemporaryDirectory(prefix="percolert-watch-file-") as scratch:
        path = Path(scratch) / "watches.ndjson"
        with path.open("wb") as file:
            for owner, spec in watches:
                file.write(json.dumps({"owner": owner, "terms": spec.terms}).encode() + b"\n")
        env = {
            **os.environ,
            "ELASTICSEARCH_URL": settings.elasticsearch_url,
            "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "percolert.cli", "watches", "load", str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(done.stdout.strip(), file=sys.stderr)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": seconds, "loader_cpu": cpu}


def prepare_only(count: int) -> float:
    """CPU µs per watch to prepare and encode the harness's watches, nothing sent (what the
    loader costs beside HTTP; run under py-spy to see where it goes)."""
    # Imported here: the `old` worker runs this file on the code before watch_load.py existed.
    from percolert.watches.load import BulkLoad

    watches = harness_watches(count)
    store = WatchStore(cast(Any, None), "watches", TextNormalizer(), max_per_user=10**9)
    bulk = BulkLoad(cast(Any, _NoClient()), "watches")
    cpu = time.process_time()
    prepared = ((ref, *store.prepare(owner, spec)) for ref, (owner, spec) in enumerate(watches))
    for chunk in bulk._chunks(prepared):
        b"".join(chunk.lines)
    return (time.process_time() - cpu) / count * 1e6


class _NoClient:
    def options(self, **_: object) -> _NoClient:
        return self


def _options(variant: str) -> list[tuple[str, str]]:
    found = []
    for part in variant.split("+")[1:]:
        name = part.rstrip("0123456789")
        found.append((name, part[len(name) :] or "1"))
    return found


async def _node_stats(client: Any) -> dict[str, float]:
    stats = (await client.nodes.stats(metric=["jvm", "process"])).body
    node = next(iter(stats["nodes"].values()))
    old = node["jvm"]["gc"]["collectors"]["old"]
    return {
        "cpu_ms": node["process"]["cpu"]["total_in_millis"],
        "heap": node["jvm"]["mem"]["heap_used_in_bytes"],
        "heap_max": node["jvm"]["mem"]["heap_max_in_bytes"],
        "old_gcs": old["collection_count"],
        "young_gcs": node["jvm"]["gc"]["collectors"]["young"]["collection_count"],
    }


async def _fresh_index(settings: Settings, variant: str) -> None:
    client = es.create_client(settings)
    try:
        definition = indices.IndexDefinition.load("watches")
        shards = dict(_options(variant)).get("shards")
        if shards:
            definition.body["settings"]["index"]["number_of_shards"] = int(shards)
        await indices.ensure_index(client, settings, definition, recreate=True)
        if "async" in dict(_options(variant)):
            await client.indices.put_settings(
                index=indices.alias_for(settings, "watches"),
                settings={"index": {"translog": {"durability": "async"}}},
            )
    finally:
        await client.close()


async def _measure(settings: Settings, variant: str, count: int, before: Path) -> dict[str, Any]:
    await _fresh_index(settings, variant)
    client = es.create_client(settings)
    try:
        start = await _node_stats(client)
        peak = start["heap"]
        env = dict(os.environ)
        if variant.startswith("old"):
            env["PYTHONPATH"] = f"{before}:{before / 'src'}"
        else:
            env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'src'}"
        command = [sys.executable, __file__, "--worker", variant, "--prefix", settings.index_prefix]
        command += ["--url", settings.elasticsearch_url]
        process = await asyncio.create_subprocess_exec(
            *command, "--watches", str(count), env=env, stdout=asyncio.subprocess.PIPE
        )
        communicate = asyncio.ensure_future(process.communicate())
        while not communicate.done():
            await asyncio.wait([communicate], timeout=1.0)
            peak = max(peak, (await _node_stats(client))["heap"])
        out, _ = communicate.result()
        if process.returncode != 0:
            raise SystemExit(f"worker {variant} failed")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        end = await _node_stats(client)
        alias = indices.alias_for(settings, "watches")
        stored = (await client.count(index=alias))["count"]
    finally:
        await client.close()
    result.update(
        variant=variant,
        watches=count,
        stored=stored,
        rate=count / result["seconds"],
        es_cpu=(end["cpu_ms"] - start["cpu_ms"]) / 1000,
        es_cpu_ms_per_1k=(end["cpu_ms"] - start["cpu_ms"]) / (count / 1000),
        heap_peak_mb=peak / 2**20,
        heap_max_mb=end["heap_max"] / 2**20,
        old_gcs=end["old_gcs"] - start["old_gcs"],
        young_gcs=end["young_gcs"] - start["young_gcs"],
    )
    return result


def _row(result: dict[str, Any]) -> str:
    return (
        f"{result['variant']:<16} {result['rate']:>9.0f}/s  {result['seconds']:>7.1f} s  "
        f"ES CPU {result['es_cpu']:>6.1f} s ({result['es_cpu_ms_per_1k']:>5.0f} ms/1k)  "
        f"loader CPU {result['loader_cpu']:>6.1f} s  heap peak {result['heap_peak_mb']:>5.0f}"
        f"/{result['heap_max_mb']:.0f} MB  old GCs {result['old_gcs']}  young GCs "
        f"{result['young_gcs']}  stored {result['stored']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="old,new")
    parser.add_argument("--warmup", type=int, default=100_000, help="watches loaded first")
    parser.add_argument("--before", type=Path, default=Path("/work/before"))
    parser.add_argument("--url", default=None, help="a node to use instead of a fresh one")
    parser.add_argument("--prefix", default=PREFIX, help="index prefix (with --url)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--prepare-only", type=int, default=0, help="time preparing N watches, no node"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare_only:
        print(f"{prepare_only(args.prepare_only):.2f} µs CPU a watch prepared and encoded")
        return 0
    if args.worker:
        print(json.dumps(asyncio.run(worker(args.url, args.prefix, args.worker, args.watches))))
        return 0
    from bench.harness import bench_node

    variants = args.variants.split(",")
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="percolert-watch-load-") as scratch,
        ExitStack() as node,
    ):
        if args.url:
            settings = Settings(elasticsearch_url=args.url, index_prefix=args.prefix)
        else:
            _, settings = node.enter_context(bench_node(Path(scratch)))
        if args.warmup:
            print(_row(asyncio.run(_measure(settings, "new", args.warmup, args.before))))
        for round_number in range(args.rounds):
            order = variants if round_number % 2 == 0 else variants[::-1]
            for variant in order:
                result = asyncio.run(_measure(settings, variant, args.watches, args.before))
                result["round"] = round_number
                results.append(result)
                print(_row(result), flush=True)
    print(f"\nmedians over {args.rounds} rounds, {args.watches} watches:")
    for variant in variants:
        mine = [result for result in results if result["variant"] == variant]
        print(
            f"{variant:<16} {statistics.median(r['rate'] for r in mine):>9.0f} watches/s  "
            f"ES CPU {statistics.median(r['es_cpu_ms_per_1k'] for r in mine):>5.0f} ms/1k  "
            f"loader CPU {statistics.median(r['loader_cpu'] for r in mine):>6.1f} s  "
            f"heap peak {max(r['heap_peak_mb'] for r in mine):>5.0f} MB  "
            f"old GCs {max(r['old_gcs'] for r in mine)}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
