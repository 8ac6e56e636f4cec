"""Erasure of an account at the shop's request: everything Percolert holds of one user goes,
from every index, from the broker (Redis included) and from every instance's memory, and the
user's open sockets close (4410, `hub.ACCOUNT_ERASED`).

In this order, so that nothing erased is made again from what is still in flight:
1. the broker forgets the user on every instance: their sockets close, their presence,
   coalescing windows and claimed follow-ups go, and their searches folded into other users'
   windows keep counting for those users without who made them. Each instance is told
   (`erased_here`): it forgets their leases and takes them out of its unwritten alert log
   (and of what it appends for a while: alerts.log.FORGET_SECONDS);
2. their watches (the leases of reachability.py live in them), so that no search or catalog
   change matches them again;
3. their entries in the alert log (sendings to them; their id among those a default watch's
   sending to everyone excluded), once the log's write in flight is done;
4. their product alerts, their product-seen mark, and their watches' ids in the product
   notices (which watches each product alerted).
Every deletion is visible to search when the erasure answers. Erasing an account with
nothing left is a no-op that answers zeros.

Not erased: rate-limit counters keyed by the user (a count, gone within its window) and the
logs (which name users only by a short hash). A run of catalog changes (an ingest, a product
put) that percolated before step 2 may write product alerts to the account after step 4:
erasing again takes them away.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from elastic_transport import TransportError
from elasticsearch import ApiError as ElasticsearchApiError
from elasticsearch import AsyncElasticsearch

from percolert.accounts.ids import MAX_SUBJECT_LENGTH, account_user_id
from percolert.alerts.log import AlertLog
from percolert.alerts.personal import erase_stored
from percolert.broker.base import Broker
from percolert.core.fields import text_problem
from percolert.core.messages import Erased
from percolert.core.settings import Settings
from percolert.engine import indices
from percolert.engine.es import ElasticsearchProblem, Rewrite, delete_matching, rewrite_matching
from percolert.offsite.service import Offsite
from percolert.watches.reachability import Leases

logger = logging.getLogger(__name__)

# An erasure's by-query requests may scan a large index (the product notices): they get
# longer than a search.
_MIN_REQUEST_SECONDS = 60.0
_PAGE = 10_000
_RETRY_SECONDS = 1.0


def _without_watches(gone: set[str]) -> Rewrite:
    """A product's notices (`told`: epoch ms -> space-separated watch ids, see
    products/matching.py) without the watches `gone`; a moment left naming none goes."""

    def rewrite(source: dict[str, Any]) -> dict[str, Any] | None:
        told = source.get("told")
        if not isinstance(told, dict):
            return source
        kept: dict[str, Any] = {}
        for at, watch_ids in told.items():
            if not isinstance(watch_ids, str):
                kept[at] = watch_ids
            elif remaining := [w for w in watch_ids.split() if w not in gone]:
                kept[at] = " ".join(remaining)
        return source if kept == told else {**source, "told": kept}

    return rewrite


class InvalidCustomerId(ValueError):
    """A customer id no shop's token could carry (so no account has it)."""


def account_of(customer_id: str) -> str:
    """The user id of the shop's customer `customer_id` (a token's `sub`); InvalidCustomerId
    for one no token could carry."""
    if not customer_id or len(customer_id) > MAX_SUBJECT_LENGTH:
        raise InvalidCustomerId(
            f"a customer id is 1 to {MAX_SUBJECT_LENGTH} characters, as a token's `sub` is"
        )
    problem = text_problem(customer_id)
    if problem is not None:
        raise InvalidCustomerId(f"the customer id {problem}")
    return account_user_id(customer_id)


class Erasure:
    """Erases users (`erase`), and finishes on this instance what an erasure anywhere left
    to it (`erased_here`, the broker's listener; `run`)."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        settings: Settings,
        broker: Broker,
        alert_log: AlertLog,
        leases: Leases,
        offsite: Offsite | None = None,
    ) -> None:
        self._client = client
        self._offsite = offsite
        self._settings = settings
        self._broker = broker
        self._alert_log = alert_log
        self._leases = leases
        self._timeout = max(_MIN_REQUEST_SECONDS, settings.elasticsearch_timeout)
        # Users erased while this instance's alert log was writing sendings naming them:
        # the stored log is scrubbed again once that write is done (`run`, woken).
        self._to_scrub: set[str] = set()
        self._wake: anyio.Event | None = None

    def _alias(self, name: str) -> str:
        return indices.alias_for(self._settings, name)

    async def erase(self, user: str, subject: str | None = None) -> Erased:
        """Erase everything of `user` (see the module's docstring); BrokerUnavailable while a
        shared broker cannot reach every instance (then nothing is erased)."""
        # First, and refused while a shared broker is away: nothing is erased then.
        forgotten = await self._broker.erase_user(user)
        watch_ids = await self._watch_ids(user)
        watches = await self._delete(self._alias("watches"), {"term": {"owner": user}})
        await self._alert_log.until_written()
        alerts = await erase_stored(
            self._client, self._alias("alerts"), user, request_timeout=self._timeout
        )
        product_alerts = await self._delete(self._alias("product_alerts"), {"term": {"user": user}})
        # By id, in a request body: user ids stay out of URLs (and so of request logs).
        seen_marks = await self._delete(self._alias("product_seen"), {"ids": {"values": [user]}})
        notices = await self._forget_in_notices(watch_ids) if watch_ids else 0
        # Its contact and off-site events; then the shop hears of it (by its customer id).
        events = 0
        if self._offsite is not None and self._offsite.enabled:
            events = await self._offsite.erase(user, subject)
        return Erased(
            outbox_events=events,
            watches=watches,
            alerts=alerts,
            product_alerts=product_alerts,
            seen_marks=seen_marks,
            product_notices=notices,
            windows=forgotten.windows,
            sockets=forgotten.sockets,
        )

    def erased_here(self, user: str) -> None:
        """The broker closed an erased user's sockets on this instance: forget the rest of
        what this instance keeps of them."""
        self._leases.forget(user)
        if self._alert_log.forget(user):
            self._to_scrub.add(user)
            if self._wake is not None:
                self._wake.set()

    async def run(self) -> None:
        """Scrub the stored alert log again of users erased during one of its writes that
        named them, once it is done; until cancelled."""
        while True:
            self._wake = anyio.Event()
            if not self._to_scrub:
                await self._wake.wait()
            users, self._to_scrub = self._to_scrub, set()
            await self._alert_log.until_written()
            for user in users:
                try:
                    await erase_stored(
                        self._client, self._alias("alerts"), user, request_timeout=self._timeout
                    )
                except (TransportError, ElasticsearchApiError, ElasticsearchProblem) as error:
                    logger.warning("scrubbing an erased user from the alert log failed: %s", error)
                    self._to_scrub.add(user)
            if self._to_scrub:
                await anyio.sleep(_RETRY_SECONDS)

    async def _delete(self, alias: str, query: dict[str, Any]) -> int:
        return await delete_matching(self._client, alias, query, request_timeout=self._timeout)

    async def _watch_ids(self, user: str) -> list[str]:
        """The ids of the user's watches (the product notices name watches, not users)."""
        ids: list[str] = []
        after: list[Any] | None = None
        while True:
            page = await self._client.search(
                index=self._alias("watches"),
                query={"term": {"owner": user}},
                size=_PAGE,
                sort=[{"watch_id": "asc"}],
                source=False,
                track_total_hits=False,
                search_after=after,
            )
            hits = page["hits"]["hits"]
            ids += (hit["_id"] for hit in hits)
            if len(hits) < _PAGE:
                return ids
            after = hits[-1]["sort"]

    async def _forget_in_notices(self, watch_ids: list[str]) -> int:
        # `told` is not indexed: every notice is read (one per product told of lately).
        return await rewrite_matching(
            self._client,
            self._alias("product_notices"),
            {"match_all": {}},
            _without_watches(set(watch_ids)),
            request_timeout=self._timeout,
        )
