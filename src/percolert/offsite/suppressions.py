"""Addresses never mailed again: unsubscribed from everything, or refused for good by the
receiving server (mappings/suppressions.json). Kept as hashes of the lower-cased address, so
the list names nobody in clear; an address is checked by hashing it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Literal

from elasticsearch import AsyncElasticsearch

from percolert.core.times import iso_from_seconds

Reason = Literal["unsubscribed", "bounced"]


def address_key(address: str) -> str:
    return hashlib.sha256(b"percolert.suppression\0" + address.strip().lower().encode()).hexdigest()


class Suppressions:
    def __init__(self, client: AsyncElasticsearch, alias: str) -> None:
        self._client = client
        self._alias = alias

    async def add(self, address: str, reason: Reason) -> None:
        await self._client.index(
            index=self._alias,
            id=address_key(address),
            document={"reason": reason, "at": iso_from_seconds(time.time())},
            refresh=True,
        )

    async def suppressed(self, addresses: Iterable[str]) -> set[str]:
        """Those of `addresses` that may not be mailed."""
        by_key = {address_key(address): address for address in addresses}
        if not by_key:
            return set()
        response = await self._client.mget(index=self._alias, ids=list(by_key))
        return {by_key[doc["_id"]] for doc in response["docs"] if doc.get("found")}
