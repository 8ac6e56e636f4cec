"""Product matching's batch size and concurrency: runs of catalog changes (half new, half
price drops, products of the sample catalog under fresh skus) percolated against background
watches, on the node of ELASTICSEARCH_URL, under an index prefix of its own (deleted after).

    ELASTICSEARCH_URL=http://127.0.0.1:9250 PYTHONPATH=. python bench/product_percolation.py \
        [--watches 20000] [--changes 5000] [--configurations 64x1,64x2,128x2,256x2,64x4] \
        [--rounds 2]

Prints, per (batch size, concurrency), the seconds to percolate and judge the changes (the
runs' `changed`) and to write their alerts and notices (the end of the run). Read the
rounds after the first (it warms the node).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

from bench.harness import load_watches
from bench.rig import ROOT
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.products.alerts import CatalogChange
from percolert.products.catalog import Product
from percolert.products.matching import ProductAlerting
from percolert.watches.percolator import Percolator, SearchEvent

CONFIGURATIONS = "64x1,64x2,128x2,256x2,64x4"  # batch size x requests at once
CHUNK = 500  # changes handed to a run at once, as ingest's bulk chunks


def changes(count: int, tag: str) -> list[CatalogChange]:
    catalog = [
        Product(**json.loads(line))
        for line in (ROOT / "data/products.ndjson").read_text().splitlines()
    ]
    made: list[CatalogChange] = []
    for number in range(count):
        product = catalog[number % len(catalog)]
        fresh = Product(
            sku=f"{tag}-{number}",
            product_name=product.product_name,
            description=product.description,
            price=product.price,
            category=product.category,
            brand=product.brand,
        )
        if number % 2:
            made.append(CatalogChange(change="new", product=fresh))
        else:
            made.append(
                CatalogChange(
                    change="price_drop", product=fresh, previous_price=product.price * 1.2
                )
            )
    return made


async def measure(
    url: str, watches: int, count: int, configurations: list[tuple[int, int]], rounds: int
) -> None:
    settings = Settings(elasticsearch_url=url, index_prefix=f"bench-pm-{uuid.uuid4().hex[:6]}")
    client = es.create_client(settings)
    percolation_client = es.create_client(settings, raw_json=True)  # as the server's
    try:
        await indices.setup(client, settings)
        await load_watches(settings, watches)

        async def ignore(found: list[tuple[SearchEvent, list[Any]]]) -> None:
            return None

        percolator = Percolator(
            percolation_client, indices.alias_for(settings, "watches"), TextNormalizer(), ignore
        )
        for round_number in range(1, rounds + 1):
            for batch_size, concurrency in configurations:
                alerting = ProductAlerting(
                    client, settings, percolator, batch_size=batch_size, concurrency=concurrency
                )
                todo = changes(count, f"r{round_number}-{batch_size}-{concurrency}")
                started = time.perf_counter()
                async with alerting.run() as run:
                    for start in range(0, len(todo), CHUNK):
                        await run.changed(todo[start : start + CHUNK])
                    percolated = time.perf_counter() - started
                total = time.perf_counter() - started
                print(
                    f"round {round_number} batch {batch_size:4d} concurrency {concurrency}: "
                    f"percolate+judge {percolated:6.2f} s ({count / percolated:6.0f} changes/s), "
                    f"write {total - percolated:5.2f} s, {run.alerts} alerts",
                    flush=True,
                )
    finally:
        found = await client.indices.get(index=f"{settings.index_prefix}-*")
        for index in found:
            await client.indices.delete(index=index)
        await percolation_client.close()
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watches", type=int, default=20_000)
    parser.add_argument("--changes", type=int, default=5_000)
    parser.add_argument("--configurations", default=CONFIGURATIONS)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    configurations = [
        (int(size), int(concurrency))
        for size, concurrency in (item.split("x") for item in args.configurations.split(","))
    ]
    url = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200")
    asyncio.run(measure(url, args.watches, args.changes, configurations, args.rounds))


if __name__ == "__main__":
    main()
