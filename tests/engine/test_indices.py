"""`percolert setup`: versioned indices behind aliases, idempotent, migratable, recreatable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.products.catalog import ingest
from percolert.service.migrations import document_upgrades
from percolert.watches.percolator import Match, Percolator, SearchEvent
from percolert.watches.store import WatchStore
from tests.conftest import ROOT, SAMPLE_CATALOG

pytestmark = pytest.mark.anyio


async def test_setup_creates_aliased_indices_and_is_idempotent(fresh_settings: Settings) -> None:
    client = es.create_client(fresh_settings)
    prefix = fresh_settings.index_prefix
    try:
        assert await indices.needing_setup(client, fresh_settings) == [
            f"{prefix}-{name} is missing" for name in indices.INDEX_NAMES
        ]
        first = await indices.setup(client, fresh_settings)
        assert first == [
            f"{prefix}-products -> {prefix}-products-v1: created",
            f"{prefix}-watches -> {prefix}-watches-v9: created",
            f"{prefix}-alerts -> {prefix}-alerts-v2: created",
            f"{prefix}-product_alerts -> {prefix}-product_alerts-v2: created",
            f"{prefix}-product_seen -> {prefix}-product_seen-v2: created",
            f"{prefix}-product_notices -> {prefix}-product_notices-v1: created",
            f"{prefix}-accounts -> {prefix}-accounts-v1: created",
            f"{prefix}-outbox -> {prefix}-outbox-v1: created",
            f"{prefix}-suppressions -> {prefix}-suppressions-v1: created",
            f"{prefix}-webhook_endpoints -> {prefix}-webhook_endpoints-v1: created",
        ]
        second = await indices.setup(client, fresh_settings)
        assert all(line.endswith("up to date") for line in second)
        assert await indices.indices_behind(client, f"{prefix}-products") == [
            f"{prefix}-products-v1"
        ]
        assert await indices.needing_setup(client, fresh_settings) == []
        mapping = await client.indices.get_mapping(index=f"{prefix}-watches")
        properties = next(iter(mapping.values()))["mappings"]["properties"]
        assert properties["query"]["type"] == "percolator"
    finally:
        await client.close()


async def test_a_new_mapping_version_migrates_documents_and_moves_the_alias(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    client = es.create_client(fresh_settings)
    prefix = fresh_settings.index_prefix
    alias = f"{prefix}-products"
    try:
        await indices.setup(client, fresh_settings, mappings_dir=mappings)
        report = await ingest(client, alias, SAMPLE_CATALOG)

        definition = json.loads((mappings / "products.json").read_text())
        definition["mappings"]["_meta"]["percolert_version"] = 2
        definition["mappings"]["properties"]["rating"] = {"type": "float"}
        (mappings / "products.json").write_text(json.dumps(definition))

        lines = await indices.setup(client, fresh_settings, mappings_dir=mappings)
        assert lines[0] == (f"{alias} -> {alias}-v2: migrated from {alias}-v1 (old index kept)")
        assert await indices.indices_behind(client, alias) == [f"{alias}-v2"]
        assert (await client.count(index=alias))["count"] == report.loaded
        new_mapping = await client.indices.get_mapping(index=alias)
        assert "rating" in new_mapping[f"{alias}-v2"]["mappings"]["properties"]
        assert await client.indices.exists(index=f"{alias}-v1")
        again = await indices.setup(client, fresh_settings, mappings_dir=mappings)
        assert again[0].endswith("up to date")
    finally:
        await client.close()


async def test_watches_stored_before_v8_are_made_current(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    """v2 and v3 of the watches mapping added `terms` and `watch_id` (doc values, which are
    all percolation reads), v4 `category_prices` for judging a watch's category and price
    together, v5 `notify` and `max_price` (doc value), v6 `reachable_until` (a lease), v7
    `category` (doc value, so that alerts show only the products that fit the watch), v8
    product watches' fields (none an older watch has), v9 `frequency` (none has one either);
    migrating a v1 index fills in the
    doc values, makes old watches notify of both, leases them from the migration on (search
    percolation verifies only leased watches), and rewrites the queries."""
    old_mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", old_mappings)
    definition = json.loads((old_mappings / "watches.json").read_text())
    assert definition["mappings"]["_meta"]["percolert_version"] == 9
    definition["mappings"]["_meta"]["percolert_version"] = 1
    for v8 in ("sku", "product_sku", "product_change", "frequency"):
        del definition["mappings"]["properties"][v8]
    del definition["mappings"]["properties"]["category"]
    del definition["mappings"]["properties"]["notify"]
    del definition["mappings"]["properties"]["reachable_until"]
    del definition["mappings"]["properties"]["max_price"]
    del definition["mappings"]["properties"]["terms"]
    del definition["mappings"]["properties"]["watch_id"]
    del definition["mappings"]["properties"]["category_prices"]
    (old_mappings / "watches.json").write_text(json.dumps(definition))
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "watches")
    normalizer = TextNormalizer()
    try:
        await indices.setup(client, fresh_settings, mappings_dir=old_mappings)
        store = WatchStore(client, alias, normalizer, max_per_user=50)
        watch_id, document = store.prepare("alice", WatchSpec(terms="Kindle  Paperwhite"))
        # as a v1 watch was stored
        del document["terms"], document["watch_id"], document["notify"]
        await client.index(index=alias, id=watch_id, document=document, refresh=True)
        tv_id, tv = store.prepare("bob", WatchSpec(terms="sony", category="tv", max_price=800))
        del tv["terms"], tv["watch_id"], tv["notify"], tv["max_price"], tv["category"]
        tv["query"]["bool"]["filter"][1:] = [  # category and price apart, as before v4
            {"term": {"categories": "tv"}},
            {"range": {"min_price": {"lte": 800}}},
        ]
        await client.index(index=alias, id=tv_id, document=tv, refresh=True)
        assert await indices.needing_setup(client, fresh_settings) == [
            f"{alias} is at {alias}-v1, not {alias}-v9"
        ]

        lines = await indices.setup(client, fresh_settings, migrations=document_upgrades())
        assert lines[1] == f"{alias} -> {alias}-v9: migrated from {alias}-v1 (old index kept)"
        assert await indices.needing_setup(client, fresh_settings) == []
        leased = (await client.get(index=alias, id=watch_id))["_source"]["reachable_until"]
        lease = datetime.fromisoformat(leased).timestamp() - time.time()
        assert 1100 < lease <= 1200  # the default grace and slack, from the migration on

        async def ignore(found: list[tuple[SearchEvent, list[Match]]]) -> None:
            pass

        percolator = Percolator(client, alias, normalizer, ignore)
        [matches] = await percolator.percolate(
            [SearchEvent(text="kindle paperwhite", searcher="x")]
        )
        assert matches == [Match(watch_id=watch_id, terms="Kindle Paperwhite", owner="alice")]
        sony = [
            SearchEvent(text="sony", searcher="x", found=(("audio", 59.99), ("tv", tv_price)))
            for tv_price in (999.0, 700.0)
        ]
        assert await percolator.percolate(sony) == [
            [],
            [Match(watch_id=tv_id, terms="sony", owner="bob", max_price=800.0, category="tv")],
        ]
        assert {watch.notify for watch in await store.owned_by("bob")} == {"both"}
        [product_matches] = await percolator.percolate(
            [SearchEvent(text="sony", searcher="x", found=(("tv", 700.0),))], audience="products"
        )
        assert [match.watch_id for match in product_matches] == [tv_id]
    finally:
        await client.close()


async def test_recreate_starts_over(fresh_settings: Settings) -> None:
    client = es.create_client(fresh_settings)
    alias = f"{fresh_settings.index_prefix}-products"
    try:
        await indices.setup(client, fresh_settings)
        await ingest(client, alias, SAMPLE_CATALOG)
        assert (await client.count(index=alias))["count"] > 0
        lines = await indices.setup(client, fresh_settings, recreate=True)
        assert lines[0].endswith("created")
        assert (await client.count(index=alias))["count"] == 0
    finally:
        await client.close()


def test_every_mapping_declares_its_version() -> None:
    for name in indices.INDEX_NAMES:
        assert indices.IndexDefinition.load(name).version >= 1
    with pytest.raises(ValueError, match="percolert_version"):
        indices.IndexDefinition("broken", {"mappings": {"properties": {}}})


def test_the_index_lifecycle_is_handed_its_migrations() -> None:
    """`indices` knows no other module's documents: `setup` is handed their upgrades."""
    code = "import sys, percolert.engine.indices; print('percolert.alerts.log' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
    assert set(document_upgrades()) <= set(indices.INDEX_NAMES)
