"""Per user, the highest product-alert position already shown to them, live or in a
greeting's "while you were away" (the `product_seen` index, one document per user).

A greeting shows what lies above the mark only if it wins moving the mark: the move is
conditional on the document being unchanged since it was read (`if_seq_no` and
`if_primary_term`, or `create` for a user without one), so of two tabs greeting at once
one shows the list and the other nothing. Live delivery raises the mark too, so a later
greeting does not repeat what a socket already showed. Reads and writes go by id, which
Elasticsearch answers in real time: no refresh is awaited.
"""

from __future__ import annotations

import logging

import msgspec
from elasticsearch import AsyncElasticsearch

logger = logging.getLogger("percolert.product_seen")

# Marks are raised only, never lowered, by conditional writes; when a greeting or another
# instance wrote meanwhile, the mark is read again and the write retried this many times.
_RAISE_ATTEMPTS = 5
_CONFLICT = 409


class Mark(msgspec.Struct, frozen=True):
    """A user's mark as read, with what a conditional write needs (None: no document)."""

    upto: int
    seq_no: int | None = None
    primary_term: int | None = None


class SeenMarks:
    def __init__(self, client: AsyncElasticsearch, alias: str) -> None:
        self._client = client
        self._alias = alias

    async def read(self, user: str) -> Mark:
        # By mget and bulk, never a URL with the id in it: user ids stay out of request logs.
        found = (await self._client.mget(index=self._alias, ids=[user]))["docs"][0]
        if not found.get("found"):
            return Mark(upto=0)
        return Mark(
            upto=int(found["_source"]["upto"]),
            seq_no=found["_seq_no"],
            primary_term=found["_primary_term"],
        )

    async def claim(self, user: str, mark: Mark, upto: int) -> bool:
        """Move the mark from `mark` (as read) to `upto`; False when it changed meanwhile."""
        action: dict[str, object] = {"_index": self._alias, "_id": user}
        if mark.seq_no is not None:
            action.update(if_seq_no=mark.seq_no, if_primary_term=mark.primary_term)
        operation = "create" if mark.seq_no is None else "index"
        response = await self._client.bulk(operations=[{operation: action}, {"upto": upto}])
        [(_, result)] = response["items"][0].items()
        if "error" in result and result.get("status") != _CONFLICT:
            logger.warning("moving a product-seen mark failed: %s", result["error"])
        return "error" not in result

    async def raise_to(self, uptos: dict[str, int]) -> None:
        """Raise each user's mark to at least the given position: one `mget` and one bulk
        of conditional writes, again for the marks that changed meanwhile (a greeting or
        another instance raced)."""
        pending = dict(uptos)
        for _ in range(_RAISE_ATTEMPTS):
            if not pending:
                return
            found = await self._client.mget(index=self._alias, ids=list(pending))
            operations: list[dict[str, object]] = []
            for doc in found["docs"]:
                user, upto = doc["_id"], pending[doc["_id"]]
                if not doc.get("found"):
                    operations.append({"create": {"_index": self._alias, "_id": user}})
                elif doc["_source"]["upto"] < upto:
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
                else:
                    del pending[user]
                    continue
                operations.append({"upto": upto})
            if not operations:
                return
            response = await self._client.bulk(operations=operations)
            raced = set()
            for item in response["items"]:
                [(_, result)] = item.items()
                if result.get("status") == _CONFLICT:
                    raced.add(result["_id"])
                elif "error" in result:
                    logger.warning("raising a product-seen mark failed: %s", result["error"])
            pending = {user: upto for user, upto in pending.items() if user in raced}
        if pending:
            logger.warning("gave up raising %d product-seen marks: kept changing", len(pending))
