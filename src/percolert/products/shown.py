"""Which product alerts a socket of their owner was sent (`shown` in the product_alerts
index), for off-site delivery to leave those alone (offsite/routing.py). Shown means
written to an open socket (live, or in a greeting's `away`), not only queued for it.

Marks are gathered and written in one bulk request a short while later, off the sending
path; only the alerts of users `wanted` says routing may look at (accounts) are marked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import elasticsearch
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch

from percolert.core.times import iso_from_seconds

logger = logging.getLogger(__name__)

# Marks wait at most this long before they are written.
FLUSH_SECONDS = 0.25
# Marks kept for a write that failed, at most (older ones are dropped: a mark missed
# costs an e-mail the owner did not need, not an alert lost).
_KEPT = 100_000

_ES_ERRORS = (TransportError, elasticsearch.ApiError)


class ShownAlerts:
    def __init__(
        self, client: AsyncElasticsearch, alias: str, wanted: Callable[[str], bool]
    ) -> None:
        self._client = client
        self._alias = alias
        self._wanted = wanted
        self._pending: dict[str, float] = {}
        self._woken = anyio.Event()
        self.marked = 0

    def shown(self, user: str, alert_id: str) -> None:
        """A socket of `user` was sent the alert `alert_id` (now)."""
        if not self._wanted(user) or alert_id in self._pending:
            return
        if len(self._pending) >= _KEPT:
            self._pending.pop(next(iter(self._pending)))
        self._pending[alert_id] = time.time()
        self._woken.set()

    async def run(self) -> None:
        while True:
            await self._woken.wait()
            await anyio.sleep(FLUSH_SECONDS)
            self._woken = anyio.Event()
            try:
                await self.flush()
            except _ES_ERRORS as error:
                logger.warning("marking product alerts shown failed, retrying: %s", error)
                self._woken.set()
                await anyio.sleep(1.0)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        operations: list[dict[str, object]] = []
        for alert_id, at in pending.items():
            operations.append({"update": {"_index": self._alias, "_id": alert_id}})
            operations.append({"doc": {"shown": iso_from_seconds(at)}})
        try:
            response = await self._client.bulk(operations=operations)
        except _ES_ERRORS:
            self._pending = {**pending, **self._pending}
            raise
        # An alert deleted meanwhile (erased, pruned) is a 404: nothing to mark.
        self.marked += sum(1 for item in response["items"] if "error" not in item["update"])
