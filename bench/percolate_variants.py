"""Percolate request variants against 100k watches, side by side on one node: Elasticsearch's
`took`, wall time and Elasticsearch CPU per request, and hits per search; then batches of
search events, as one percolation of several documents versus an `_msearch` of
single-document percolations (what `Percolator` sends).

    PYTHONPATH=. python bench/percolate_variants.py

Two rounds; read the second (the first warms the JVM). Findings in docs/benchmarks/README.md.

    PYTHONPATH=. python bench/percolate_variants.py --reachability 100000 1000000

Search percolation with and without the reachability filter (reachability.py) at each
number of background watches (as `harness.load_watches`: 1-2 catalog words, five watches an
owner, all of them away), side by side on one node: 5,000 subscribers with one
GROUP_WORDS watch each and 5,000 background owners are leased (10,000 reachable users);
searches name a GROUP_WORDS word. Per variant: Elasticsearch CPU and query time per search,
wall time per `_msearch` batch (what `Percolator` sends), matches per search, and from the
profile API the candidates the percolate query verified per search. A warm-up round, then
alternating rounds; medians over the rounds.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
from elasticsearch import AsyncElasticsearch

from bench.harness import catalog_words, load_watches, prepare_catalog
from bench.rig import GROUP_WORDS, PREFIX, cpu_seconds
from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings, from_environment
from percolert.core.text import TextNormalizer
from percolert.dev.devnode import DevNode
from percolert.engine import es, indices
from percolert.watches.percolator import _MATCHES, Percolator, SearchEvent
from percolert.watches.reachability import REACHABLE_FILTER, lease_until
from percolert.watches.store import WatchStore
from tests.servers import free_port

SUBSCRIBERS = 5_000  # reachable users with one GROUP_WORDS watch each
LEASED_OWNERS = 5_000  # background owners leased too (connected or within the grace)


async def measure(url: str, pid: int, watches: int) -> None:
    node = psutil.Process(pid)
    settings = Settings(elasticsearch_url=url, index_prefix=PREFIX)
    await load_watches(settings, watches)
    client = es.create_client(settings)
    alias = indices.alias_for(settings, "watches")

    async def ignore(found: list[tuple[SearchEvent, list[Any]]]) -> None:
        return None

    percolator = Percolator(client, alias, TextNormalizer(), ignore)
    present = [f"background-{n}" for n in random.Random(1).sample(range(watches // 5), 2500)]
    presence = {
        "bool": {
            "should": [
                {"terms": {"owner": present}},
                {"bool": {"must_not": {"exists": {"field": "owner"}}}},
            ]
        }
    }

    async def run(name: str, *, extra: dict[str, Any] | None = None, **options: Any) -> None:
        took: list[float] = []
        wall: list[float] = []
        hits: list[int] = []
        cpu_before, started = 0.0, 0.0
        for number in range(500):
            if number == 100:
                cpu_before, started = cpu_seconds(node), time.perf_counter()
            text = f"{GROUP_WORDS[number % len(GROUP_WORDS)]} x{number}"
            document = percolator.document(SearchEvent(text=text, searcher="s", at=0.0))
            filters: list[dict[str, Any]] = [
                {"percolate": {"field": "query", "documents": [document]}}
            ]
            if extra is not None:
                filters.append(extra)
            sent = time.perf_counter()
            response = await client.search(
                index=alias,
                query={"constant_score": {"filter": {"bool": {"filter": filters}}}},
                track_total_hits=False,
                **options,
            )
            if number >= 100:
                wall.append((time.perf_counter() - sent) * 1000)
                took.append(response["took"])
                found = response.get("aggregations", {}).get("matches", {}).get("buckets")
                hits.append(len(response["hits"]["hits"]) if found is None else len(found))
        cpu_ms = (cpu_seconds(node) - cpu_before) / 400 * 1000
        print(
            f"{name:42s} took p50 {statistics.median(took):.1f} ms, wall p50 "
            f"{statistics.median(wall):.2f} ms, ES CPU {cpu_ms:.2f} ms/request, "
            f"hits {statistics.median(hits):g} (over {time.perf_counter() - started:.1f} s)",
            flush=True,
        )

    fields = ["owner", "spec.terms"]
    composite = {
        "matches": {
            "composite": {
                "size": 10_000,
                "sources": [
                    {"id": {"terms": {"field": "watch_id"}}},
                    {"owner": {"terms": {"field": "owner", "missing_bucket": True}}},
                    {"terms": {"terms": {"field": "terms"}}},
                ],
            }
        }
    }
    try:
        for _ in range(2):
            await run("_source (watches v1)", size=10_000, source_includes=fields)
            await run(
                "owner+terms doc values, _id stored (v2)",
                size=10_000,
                sort=["_doc"],
                source=False,
                docvalue_fields=["owner", "terms"],
            )
            await run(
                "id+owner+terms doc values, no stored fields",
                size=10_000,
                sort=["_doc"],
                stored_fields="_none_",
                docvalue_fields=["watch_id", "owner", "terms"],
            )
            await run("composite aggregation, no hits", size=0, aggs=composite)
            await run("no hits, no aggregation (the floor)", size=0)
            await run(
                "v2, 2,500 owners filter",
                extra=presence,
                size=10_000,
                sort=["_doc"],
                source=False,
                docvalue_fields=["owner", "terms"],
            )
        for _ in range(2):
            await compare_batches(client, alias, percolator, node)
    finally:
        await client.close()


def batch_of_searches(number: int, size: int) -> list[SearchEvent]:
    """Batch `number` of `size` search events, each naming the next of GROUP_WORDS."""
    return [
        SearchEvent(
            text=f"{GROUP_WORDS[(number * size + i) % len(GROUP_WORDS)]} x{number}", searcher="s"
        )
        for i in range(size)
    ]


async def compare_batches(
    client: AsyncElasticsearch, alias: str, percolator: Percolator, node: psutil.Process
) -> None:
    """Elasticsearch CPU per search event and wall time per batch: one percolation of B
    documents (matched back by `_percolator_document_slot`) against `_msearch` of B."""

    async def several_documents(events: list[SearchEvent]) -> None:
        await client.search(
            index=alias,
            query={
                "constant_score": {
                    "filter": {
                        "percolate": {
                            "field": "query",
                            "documents": [percolator.document(event) for event in events],
                        }
                    }
                }
            },
            size=10_000,
            sort=["_doc"],
            source=False,
            docvalue_fields=[{"field": "owner"}, {"field": "terms"}],
            track_total_hits=False,
            filter_path=["hits.hits._id", "hits.hits.fields"],
        )

    async def msearch(events: list[SearchEvent]) -> None:
        await percolator.percolate(events)

    for size in (1, 2, 4, 8):
        for name, send in (("one percolation", several_documents), ("_msearch", msearch)):
            batches = max(50, 400 // size)
            walls: list[float] = []
            cpu_before, started = 0.0, 0.0
            for number in range(batches + 20):
                if number == 20:
                    cpu_before, started = cpu_seconds(node), time.perf_counter()
                events = batch_of_searches(number, size)
                sent = time.perf_counter()
                await send(events)
                if number >= 20:
                    walls.append((time.perf_counter() - sent) * 1000)
            cpu_ms = (cpu_seconds(node) - cpu_before) / (batches * size) * 1000
            print(
                f"batch of {size}, {name:16s} ES CPU {cpu_ms:.2f} ms/event, wall p50 "
                f"{statistics.median(walls):.2f} ms/batch "
                f"(over {time.perf_counter() - started:.1f} s)",
                flush=True,
            )


async def load_leased(url: str, watches: int) -> Settings:
    """An index of `watches` background watches (`harness.load_watches`' watches, loaded by
    one bulk stream) and the subscribers', the reachable ones leased; returns its settings."""
    settings = msgspec.structs.replace(long_timeouts(url), index_prefix=f"reach{watches}")
    client = es.create_client(settings)
    try:
        await indices.ensure_index(client, settings, indices.IndexDefinition.load("watches"))
        alias = indices.alias_for(settings, "watches")
        store = WatchStore(client, alias, TextNormalizer(), max_per_user=10**9)
        owners = max(1, watches // 5)
        leased_owners = {
            f"background-{n}"
            for n in random.Random(1).sample(range(owners), min(LEASED_OWNERS, owners))
        }
        lease = lease_until(86_400)
        words = catalog_words()
        rng = random.Random(7)

        def documents() -> Iterator[tuple[str, dict[str, Any]]]:
            for number in range(watches + SUBSCRIBERS):
                if number < watches:
                    owner = f"background-{number % owners}"
                    spec = WatchSpec(terms=" ".join(rng.sample(words, rng.choice([1, 2, 2]))))
                else:
                    owner = f"subscriber-{number - watches}"
                    spec = WatchSpec(terms=GROUP_WORDS[number % len(GROUP_WORDS)])
                document_id, document = store.prepare(owner, spec)
                if owner in leased_owners or number >= watches:
                    document["reachable_until"] = lease
                yield document_id, document

        # A load of its own rather than `add_many` (one bulk at a time, refreshed): three
        # bulks in flight keep both of the node's cores busy.
        await client.indices.put_settings(
            index=alias,
            settings={"refresh_interval": "-1", "translog": {"durability": "async"}},
        )
        started = time.perf_counter()
        loaded = 0
        in_flight = anyio.Semaphore(3)

        async def send(operations: list[dict[str, Any]]) -> None:
            nonlocal loaded
            try:
                response = await client.bulk(index=alias, operations=operations)
                assert not response["errors"], response["items"][:3]
                loaded += len(operations) // 2
            finally:
                in_flight.release()

        async with anyio.create_task_group() as bulks:
            operations: list[dict[str, Any]] = []
            for document_id, document in documents():
                operations += [{"index": {"_id": document_id}}, document]
                if len(operations) == 10_000:
                    await in_flight.acquire()
                    bulks.start_soon(send, operations)
                    operations = []
            if operations:
                await in_flight.acquire()
                bulks.start_soon(send, operations)
        await client.indices.put_settings(
            index=alias,
            settings={"refresh_interval": None, "translog": {"durability": None}},
        )
        await client.indices.refresh(index=alias)
        await client.indices.forcemerge(index=alias, max_num_segments=1)
        leased = await client.count(
            index=alias, query={"range": {"reachable_until": {"gte": "now"}}}
        )
        print(
            f"{alias}: {loaded} watches in {time.perf_counter() - started:.0f} s, "
            f"{leased['count']} leased",
            flush=True,
        )
    finally:
        await client.close()
    return settings


def _verified(node: dict[str, Any]) -> tuple[int, int]:
    """(candidates, verifications) of the percolate query in a profiled query tree."""
    if node["type"] == "PercolateQuery":
        breakdown = node["breakdown"]
        candidates = breakdown.get("next_doc_count", 0) + breakdown.get("advance_count", 0)
        return candidates, breakdown.get("match_count", 0)
    found = [_verified(child) for child in node.get("children", [])]
    return sum(c for c, _ in found), sum(v for _, v in found)


async def compare_reachability(url: str, pid: int, sizes: list[int]) -> None:
    node = psutil.Process(pid)
    loaded = [(size, await load_leased(url, size)) for size in sizes]
    client = es.create_client(long_timeouts(url), raw_json=True)
    plain = es.create_client(long_timeouts(url))

    async def ignore(found: list[tuple[SearchEvent, list[Any]]]) -> None:
        return None

    variants = [
        (
            f"{size // 1000}k {'filtered' if filtered else 'unfiltered'}",
            indices.alias_for(settings, "watches"),
            Percolator(
                client,
                indices.alias_for(settings, "watches"),
                TextNormalizer(),
                ignore,
                reachable_only=filtered,
            ),
        )
        for size, settings in loaded
        for filtered in (True, False)
    ]
    results: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)

    async def query_ms(alias: str) -> float:
        stats = await plain.indices.stats(index=alias, metric="search")
        return float(stats["_all"]["primaries"]["search"]["query_time_in_millis"])

    async def run(name: str, alias: str, percolator: Percolator, size: int) -> dict[str, float]:
        batches = max(25, 200 // size)
        walls: list[float] = []
        matches: list[int] = []
        cpu_before, es_before = cpu_seconds(node), await query_ms(alias)
        for number in range(batches):
            events = batch_of_searches(number, size)
            sent = time.perf_counter()
            found = await percolator.percolate(events)
            walls.append((time.perf_counter() - sent) * 1000)
            matches.extend(len(each) for each in found)
        searches = batches * size
        return {
            "cpu": (cpu_seconds(node) - cpu_before) / searches * 1000,
            "query": (await query_ms(alias) - es_before) / searches,
            "wall": statistics.median(walls),
            "matches": statistics.median(matches),
        }

    rounds = 4  # the first warms up
    try:
        for round_number in range(rounds):
            for size in (1, 8):
                order = variants if round_number % 2 == 0 else variants[::-1]
                for name, alias, percolator in order:
                    measured = await run(name, alias, percolator, size)
                    if round_number > 0:
                        results[(name, size)].append(measured)
            print(f"round {round_number} done", flush=True)
        for size in (1, 8):
            for name, _, _ in variants:
                runs = results[(name, size)]

                def median(key: str, runs: list[dict[str, float]] = runs) -> float:
                    return statistics.median(run[key] for run in runs)

                print(
                    f"{name:18s} batch of {size}: ES CPU {median('cpu'):.2f} ms/search, "
                    f"ES query {median('query'):.2f} ms/search, wall p50 "
                    f"{median('wall'):.2f} ms/batch, matches {median('matches'):g}/search "
                    f"(median of {len(runs)} rounds)",
                    flush=True,
                )
        for name, alias, percolator in variants:
            candidates: list[int] = []
            verified: list[int] = []
            for number, word in enumerate(GROUP_WORDS):
                document = percolator.document(SearchEvent(text=f"{word} x{number}", searcher="s"))
                filters: list[dict[str, Any]] = [
                    {"percolate": {"field": "query", "document": document}},
                    {"terms": {"notify": ["searches", "both"]}},
                ]
                if "unfiltered" not in name:
                    filters.append(REACHABLE_FILTER)
                # With the matches' aggregation, as `Percolator` sends it: without one, a
                # search of no hits never iterates over its candidates.
                response = await plain.search(
                    index=alias,
                    query={"bool": {"filter": filters}},
                    size=0,
                    aggs=_MATCHES,
                    profile=True,
                    track_total_hits=False,
                )
                tree = response["profile"]["shards"][0]["searches"][0]["query"]
                found = [_verified(root) for root in tree]
                candidates.append(sum(c for c, _ in found))
                verified.append(sum(v for _, v in found))
            print(
                f"{name:18s} profile: candidates {statistics.median(candidates):g}, verified "
                f"{statistics.median(verified):g} per search (median of {len(verified)}; "
                f"max {max(verified)})",
                flush=True,
            )
    finally:
        await client.close()
        await plain.close()


def long_timeouts(url: str) -> Settings:
    """Settings for the benchmark's clients: a bulk load and a force merge take minutes."""
    return Settings(elasticsearch_url=url, elasticsearch_timeout=1200.0)


def main() -> int:
    reachability = len(sys.argv) > 1 and sys.argv[1] == "--reachability"
    with tempfile.TemporaryDirectory(prefix="percolert-variants-") as scratch:
        node = DevNode.configured(from_environment(), Path(scratch) / "state", heap="2g")
        state, _ = node.start(free_port())
        try:
            if reachability:
                sizes = [int(size) for size in sys.argv[2:]] or [100_000, 1_000_000]
                asyncio.run(compare_reachability(state.url, state.pid, sizes))
            else:
                watches = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
                prepare_catalog(state.url)
                asyncio.run(measure(state.url, state.pid, watches))
        finally:
            node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
