"""Index lifecycle: versioned indices from `mappings/*.json`, reached through stable aliases.

`products` lives in index `<prefix>-products-v<N>` behind alias `<prefix>-products`, where N is
the mapping's `_meta.percolert_version`. Raising N and running `setup` creates the next index,
copies the documents over (with `_reindex`, or through the upgrade function the caller hands
in when a new version needs fields the old documents lack: `migrations.document_upgrades()`)
and moves the alias in one atomic step; the old index is kept for the operator to delete once
satisfied.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import elasticsearch
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk, async_scan

from percolert.core import assets
from percolert.core.settings import Settings

INDEX_NAMES = (
    "products",
    "watches",
    "alerts",
    "product_alerts",
    "product_seen",
    "product_notices",
    "accounts",
    "outbox",
    "suppressions",
    "webhook_endpoints",
)


class IndexDefinition:
    """One mapping file: its settings/mappings body and the version it declares."""

    def __init__(self, name: str, body: dict[str, Any]) -> None:
        self.name = name
        self.body = body
        try:
            self.version = int(body["mappings"]["_meta"]["percolert_version"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"mappings/{name}.json needs an integer mappings._meta.percolert_version"
            ) from None

    @classmethod
    def load(cls, name: str, directory: Path | None = None) -> IndexDefinition:
        path = (directory or assets.asset_dir("mappings")) / f"{name}.json"
        return cls(name, json.loads(path.read_text()))


def alias_for(settings: Settings, name: str) -> str:
    return f"{settings.index_prefix}-{name}"


def index_for(settings: Settings, definition: IndexDefinition) -> str:
    return f"{alias_for(settings, definition.name)}-v{definition.version}"


async def indices_behind(client: AsyncElasticsearch, alias: str) -> list[str]:
    try:
        found = await client.indices.get_alias(name=alias)
    except elasticsearch.NotFoundError:
        return []
    return sorted(found.keys())


async def _versions_of(client: AsyncElasticsearch, alias: str) -> list[str]:
    found = await client.indices.get(index=f"{alias}-v*", allow_no_indices=True)
    return sorted(found.keys())


# (document id, _source of an older version) -> _source of the current one
Upgrade = Callable[[str, dict[str, Any]], dict[str, Any]]


async def _copy(
    client: AsyncElasticsearch, source: str, target: str, upgrade: Upgrade | None
) -> None:
    if upgrade is None:
        await client.reindex(
            source={"index": source}, dest={"index": target}, wait_for_completion=True, refresh=True
        )
        return
    actions = (
        {"_index": target, "_id": hit["_id"], "_source": upgrade(hit["_id"], hit["_source"])}
        async for hit in async_scan(client, index=source, size=1000)
    )
    await async_bulk(client, actions, chunk_size=1000, refresh=True)


async def ensure_index(
    client: AsyncElasticsearch,
    settings: Settings,
    definition: IndexDefinition,
    *,
    recreate: bool = False,
    upgrade: Upgrade | None = None,
) -> str:
    """Make the alias point at the current version of the index, copying older documents
    through `upgrade` if given; returns what it did."""
    alias = alias_for(settings, definition.name)
    target = index_for(settings, definition)
    if recreate:
        # Concrete names only: clusters refuse wildcard deletes by default.
        for index in await _versions_of(client, alias):
            await client.indices.delete(index=index)
    current = await indices_behind(client, alias)
    if current == [target]:
        return f"{alias} -> {target}: up to date"
    if not await client.indices.exists(index=target):
        await client.indices.create(
            index=target,
            settings=definition.body.get("settings", {}),
            mappings=definition.body["mappings"],
            wait_for_active_shards="1",
        )
    if not current:
        await client.indices.put_alias(index=target, name=alias)
        return f"{alias} -> {target}: created"
    for old in current:
        await _copy(client, old, target, upgrade)
    actions: list[dict[str, Any]] = [{"remove": {"index": old, "alias": alias}} for old in current]
    actions.append({"add": {"index": target, "alias": alias}})
    await client.indices.update_aliases(actions=actions)
    return f"{alias} -> {target}: migrated from {', '.join(current)} (old index kept)"


async def setup(
    client: AsyncElasticsearch,
    settings: Settings,
    *,
    migrations: Mapping[str, Upgrade] | None = None,
    recreate: bool = False,
    mappings_dir: Path | None = None,
) -> list[str]:
    """Create or migrate every index; idempotent. Returns one line per index.

    `migrations`: by index name, how an older document becomes current, for the indices that
    need more than a copy (`percolert setup` hands `migrations.document_upgrades()`).
    """
    upgrades = migrations or {}
    return [
        await ensure_index(
            client,
            settings,
            IndexDefinition.load(name, mappings_dir),
            recreate=recreate,
            upgrade=upgrades.get(name),
        )
        for name in INDEX_NAMES
    ]


def expected_indices(settings: Settings, mappings_dir: Path | None = None) -> dict[str, str]:
    """The index each alias should point at, by the versions the mappings declare."""
    return {
        alias_for(settings, name): index_for(settings, IndexDefinition.load(name, mappings_dir))
        for name in INDEX_NAMES
    }


async def needing_setup(
    client: AsyncElasticsearch,
    settings: Settings,
    mappings_dir: Path | None = None,
    *,
    expected: Mapping[str, str] | None = None,
) -> list[str]:
    """What `setup` still has to do, one phrase per index: an alias it has not created, or
    one behind an older version than the mappings declare (used by readiness). One request
    for all the aliases; `expected` (from `expected_indices`) spares reading the mappings."""
    if expected is None:
        expected = expected_indices(settings, mappings_dir)
    # Every index of this prefix with its aliases; a wildcard that matches nothing is {}.
    try:
        found = dict((await client.indices.get_alias(index=f"{settings.index_prefix}-*")).body)
    except elasticsearch.NotFoundError:  # some secured clusters answer no match with a 404
        found = {}
    behind: dict[str, list[str]] = {}
    for index, entry in found.items():
        for alias in entry.get("aliases", {}):
            behind.setdefault(alias, []).append(index)
    needed = []
    for alias, target in expected.items():
        at = sorted(behind.get(alias, []))
        if not at:
            needed.append(f"{alias} is missing")
        elif at != [target]:
            needed.append(f"{alias} is at {', '.join(at)}, not {target}")
    return needed
