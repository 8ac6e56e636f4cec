"""What `percolert setup` hands the index lifecycle (`indices.setup`): for each index whose
current mapping needs more of the older documents than a copy, how to make one current.

Done in Python rather than by a `_reindex` script: not every cluster has Painless (the
development node has not).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from percolert.alerts import log as alertlog
from percolert.core.settings import Settings
from percolert.engine.indices import Upgrade
from percolert.watches import reachability
from percolert.watches import store as watches


def upgrade_watch(
    document_id: str, source: dict[str, Any], *, lease_seconds: float
) -> dict[str, Any]:
    """Percolation reads doc values only: `terms` repeats `spec.terms` (watches v2),
    `watch_id` the document id (v3); category and price are judged together (v4); a watch
    made before `notify` alerts on both, and its max price is a doc value too (v5). An owned
    watch is leased as reachable from the migration on (v6), so that nobody within the
    reconnect grace misses a search alert at the upgrade; owners who stay away drop out of
    search percolation when it ends. Its category is a doc value (v7), for what alerts show.
    Product watches (v8) came after all of these: no older watch is one, and a later
    migration builds a product watch's query again from its spec (`upgrade_query`)."""
    if source.get("owner") is not None:
        source.setdefault("reachable_until", reachability.lease_until(lease_seconds))
    source.setdefault("terms", source["spec"]["terms"])
    source.setdefault("watch_id", document_id)
    source.setdefault("notify", "both")
    if source["spec"].get("max_price") is not None:
        source.setdefault("max_price", source["spec"]["max_price"])
    if source["spec"].get("category") is not None:
        source.setdefault("category", source["spec"]["category"])
    return watches.upgrade_query(source)


def document_upgrades(settings: Settings | None = None) -> dict[str, Upgrade]:
    """Upgrades by index name (`indices.INDEX_NAMES`); `settings` decide the lease of
    migrated watches (the defaults' if None)."""
    lease = reachability.lease_seconds(settings or Settings())
    return {
        "watches": partial(upgrade_watch, lease_seconds=lease),
        "alerts": alertlog.upgrade_v1,
    }
