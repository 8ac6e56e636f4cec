"""Percolate request variants against 100k watches, side by side on one node: Elasticsearch's
`took`, wall time and Elasticsearch CPU per request, and hits per search; then batches of
search events, as one percolation of several documents versus an `_msearch` of
single-document percolations (what `Percolator` sends).

    PYTHONPATH=. python bench/percolate_variants.py

Two rounds; read the second (the first warms the JVM). Findings in docs/benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from elasticsearch import AsyncElasticsearch

from bench.harness import GROUP_WORDS, PREFIX, cpu_seconds, load_watches, prepare_catalog
from percolert import es, indices
from percolert.devnode import DevNode
from percolert.percolator import Percolator, SearchEvent
from percolert.settings import Settings, from_environment
from percolert.text import TextNormalizer
from tests.servers import free_port


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
                events = [
                    SearchEvent(
                        text=f"{GROUP_WORDS[(number * size + i) % len(GROUP_WORDS)]} x{number}",
                        searcher="s",
                    )
                    for i in range(size)
                ]
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


def main() -> int:
    watches = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory(prefix="percolert-variants-") as scratch:
        node = DevNode.configured(from_environment(), Path(scratch) / "state", heap="2g")
        state, _ = node.start(free_port())
        try:
            prepare_catalog(state.url)
            asyncio.run(measure(state.url, state.pid, watches))
        finally:
            node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
