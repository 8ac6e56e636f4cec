"""What `percolert setup` hands the index lifecycle (`indices.setup`): for each index whose
current mapping needs more of the older documents than a copy, how to make one current.

Done in Python rather than by a `_reindex` script: not every cluster has Painless (the
development node has not).
"""

from __future__ import annotations

from typing import Any

from percolert import alertlog, watches
from percolert.indices import Upgrade


def upgrade_watch(document_id: str, source: dict[str, Any]) -> dict[str, Any]:
    """Percolation reads doc values only: `terms` repeats `spec.terms` (watches v2),
    `watch_id` the document id (v3); category and price are judged together (v4); a watch
    made before `notify` alerts on both, and its max price is a doc value too (v5)."""
    source.setdefault("terms", source["spec"]["terms"])
    source.setdefault("watch_id", document_id)
    source.setdefault("notify", "both")
    if source["spec"].get("max_price") is not None:
        source.setdefault("max_price", source["spec"]["max_price"])
    return watches.upgrade_query(source)


def document_upgrades() -> dict[str, Upgrade]:
    """Upgrades by index name (`indices.INDEX_NAMES`)."""
    return {"watches": upgrade_watch, "alerts": alertlog.upgrade_v1}
