"""Percolation of one batch, as `Percolator.percolate` does it, with the percolator's client
parsing responses as generic JSON (then converted to structs) versus handing them on as bytes
(decoded once, straight into structs: `es.create_client(settings, raw_json=True)`), side by
side, batch for batch, against the same background watches on the node of ELASTICSEARCH_URL:
products (catalog text, description included; ~750 matches each at 100k watches) and
searches (1-2 catalog words).

    ELASTICSEARCH_URL=http://127.0.0.1:9250 PYTHONPATH=. python bench/percolate_decoding.py \
        [--watches 100000] [--events 640] [--rounds 2] [--prefix NAME]

Without --prefix, loads the watches under a prefix of its own and deletes it afterwards; with
it, uses (and keeps) the watches already there. Read the rounds after the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from typing import Any

from elasticsearch import AsyncElasticsearch

from bench.harness import catalog_words, load_watches
from bench.rig import ROOT
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.products.catalog import Product
from percolert.products.matching import product_event
from percolert.watches.percolator import Audience, Percolator, SearchEvent

BATCH = 64  # the percolator's default batch size


def events(count: int) -> dict[Audience, list[SearchEvent]]:
    catalog = [
        Product(**json.loads(line))
        for line in (ROOT / "data/products.ndjson").read_text().splitlines()
    ]
    words = catalog_words()
    rng = random.Random(3)
    searches = [
        SearchEvent(text=" ".join(rng.sample(words, rng.choice([1, 2]))), searcher="s")
        for _ in range(count)
    ]
    products = [product_event(catalog[number % len(catalog)], 0.0) for number in range(count)]
    return {"products": products, "searches": searches}


async def measure(url: str, watches: int, count: int, rounds: int, prefix: str | None) -> None:
    settings = Settings(
        elasticsearch_url=url, index_prefix=prefix or f"bench-pd-{uuid.uuid4().hex[:6]}"
    )
    client = es.create_client(settings)
    raw = es.create_client(settings, raw_json=True)
    try:
        if prefix is None:
            await indices.setup(client, settings)
            await load_watches(settings, watches)

        async def ignore(found: list[tuple[SearchEvent, list[Any]]]) -> None:
            return None

        alias = indices.alias_for(settings, "watches")
        normalizer = TextNormalizer()
        percolators: dict[str, Percolator] = {
            "generic JSON, converted": Percolator(client, alias, normalizer, ignore),
            "raw bytes, decoded": Percolator(raw, alias, normalizer, ignore),
        }
        for round_number in range(1, rounds + 1):
            for audience, todo in events(count).items():
                seconds = dict.fromkeys(percolators, 0.0)
                matches = dict.fromkeys(percolators, 0)
                # Batch for batch in turn, so that the node's other load falls on both alike.
                for start in range(0, len(todo), BATCH):
                    for name, percolator in percolators.items():
                        started = time.perf_counter()
                        found = await percolator.percolate(
                            todo[start : start + BATCH], audience=audience
                        )
                        seconds[name] += time.perf_counter() - started
                        matches[name] += sum(len(each) for each in found)
                for name in percolators:
                    print(
                        f"round {round_number} {audience:8s} {name:24s}: "
                        f"{len(todo) / seconds[name]:6.0f} events/s, "
                        f"{matches[name] / len(todo):6.1f} matches/event",
                        flush=True,
                    )
    finally:
        if prefix is None:
            await _delete(client, settings)
        await raw.close()
        await client.close()


async def _delete(client: AsyncElasticsearch, settings: Settings) -> None:
    found = await client.indices.get(index=f"{settings.index_prefix}-*")
    for index in found:
        await client.indices.delete(index=index)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watches", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prefix", default=None)
    args = parser.parse_args()
    url = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200")
    asyncio.run(measure(url, args.watches, args.events, args.rounds, args.prefix))


if __name__ == "__main__":
    main()
