"""Per user, what product alerts were already shown to them, live or in a greeting's
"while you were away" (the `product_seen` index, one document per user): every alert at or
below `upto - VISIBLE_WITHIN_MICROS`, and those above it named in `shown`. An alert another
writer numbered earlier but made visible later than one already shown is thus still news
(a single high-water position would take it as shown).

A greeting shows what lies above the mark only if it wins moving the mark: the move is
conditional on the document being unchanged since it was read (`if_seq_no` and
`if_primary_term`, or `create` for a user without one), so of two tabs greeting at once
one shows the list and the other nothing. Live delivery raises the mark too, so a later
greeting does not repeat what a socket already showed. Reads and writes go by id, which
Elasticsearch answers in real time: no refresh is awaited.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.engine.bulk import CONFLICT
from percolert.engine.reads import DirectReads, Reads
from percolert.products.alerts import VISIBLE_WITHIN_MICROS

logger = logging.getLogger(__name__)

# Marks are raised only, never lowered, by conditional writes; when a greeting or another
# instance wrote meanwhile, the mark is read again and the write retried this many times.
_RAISE_ATTEMPTS = 5


class Mark(msgspec.Struct, frozen=True):
    """A user's mark as read, with what a conditional write needs (None: no document)."""

    upto: int
    shown: dict[str, int] = {}  # ids shown above `upto - VISIBLE_WITHIN_MICROS`, by position
    seq_no: int | None = None
    primary_term: int | None = None

    def covers(self, alert_id: str, seq: int) -> bool:
        """Whether the alert was shown already."""
        return seq <= self.upto - VISIBLE_WITHIN_MICROS or alert_id in self.shown

    def adding(self, shown: dict[str, int]) -> Mark:
        """The mark once `shown` (ids by position) were shown too (unconditional fields)."""
        upto = max(self.upto, *shown.values()) if shown else self.upto
        floor = upto - VISIBLE_WITHIN_MICROS
        kept = {id_: seq for id_, seq in {**self.shown, **shown}.items() if seq > floor}
        return Mark(upto=upto, shown=kept)

    def document(self) -> dict[str, object]:
        return {"upto": self.upto, "shown": self.shown}


def _mark(doc: Mapping[str, Any]) -> Mark:
    source = doc["_source"]
    return Mark(
        upto=int(source["upto"]),
        shown={str(id_): int(seq) for id_, seq in (source.get("shown") or {}).items()},
        seq_no=doc["_seq_no"],
        primary_term=doc["_primary_term"],
    )


class SeenMarks:
    def __init__(self, client: AsyncElasticsearch, alias: str) -> None:
        self._client = client
        self._reads = DirectReads(client)
        self._alias = alias

    async def read(self, user: str, reads: Reads | None = None) -> Mark:
        # By mget and bulk, never a URL with the id in it: user ids stay out of request logs.
        found = await (reads or self._reads).get(self._alias, user)
        if not found.get("found"):
            return Mark(upto=0)
        return _mark(found)

    async def claim(self, user: str, mark: Mark, shown: dict[str, int]) -> Mark | None:
        """Move the mark from `mark` (as read) past `shown` (ids by position); the new mark,
        or None when it changed meanwhile."""
        moved = mark.adding(shown)
        action: dict[str, object] = {"_index": self._alias, "_id": user}
        if mark.seq_no is not None:
            action.update(if_seq_no=mark.seq_no, if_primary_term=mark.primary_term)
        operation = "create" if mark.seq_no is None else "index"
        response = await self._client.bulk(operations=[{operation: action}, moved.document()])
        [(_, result)] = response["items"][0].items()
        if "error" in result and result.get("status") != CONFLICT:
            logger.warning("moving a product-seen mark failed: %s", result["error"])
        return None if "error" in result else moved

    async def raise_to(self, shown: dict[str, dict[str, int]]) -> None:
        """Mark alerts (per user, ids by position) as shown: one `mget` and one bulk of
        conditional writes, again for the marks that changed meanwhile (a greeting or
        another instance raced)."""
        pending = {user: alerts for user, alerts in shown.items() if alerts}
        for _ in range(_RAISE_ATTEMPTS):
            if not pending:
                return
            found = await self._client.mget(index=self._alias, ids=list(pending))
            operations: list[dict[str, object]] = []
            for doc in found["docs"]:
                user, alerts = doc["_id"], pending[doc["_id"]]
                if not doc.get("found"):
                    operations.append({"create": {"_index": self._alias, "_id": user}})
                    operations.append(Mark(upto=0).adding(alerts).document())
                    continue
                mark = _mark(doc)
                if all(mark.covers(id_, seq) for id_, seq in alerts.items()):
                    del pending[user]
                    continue
                operations.append(
                    {
                        "index": {
                            "_index": self._alias,
                            "_id": user,
                            "if_seq_no": doc["_seq_no"],
                            "if_primary_term": doc["_primary_term"],
                        }
                    }
                )
                operations.append(mark.adding(alerts).document())
            if not operations:
                return
            response = await self._client.bulk(operations=operations)
            raced = set()
            for item in response["items"]:
                [(_, result)] = item.items()
                if result.get("status") == CONFLICT:
                    raced.add(result["_id"])
                elif "error" in result:
                    logger.warning("raising a product-seen mark failed: %s", result["error"])
            pending = {user: alerts for user, alerts in pending.items() if user in raced}
        if pending:
            logger.warning("gave up raising %d product-seen marks: kept changing", len(pending))
