"""Leases on watches: search percolation verifies only watches whose owner may be reachable.

Most stored watches belong to owners who are away; a search's alerts for them would be
dropped (the broker alerts only owners connected or within the reconnect grace). Each
owned watch carries `reachable_until`, a lease: search percolation filters on it beside the
percolate query (percolator.py), so that Lucene verifies only leased candidates. Product
percolation does not filter: product alerts reach owners who are away too.

The leases are a superset of who is reachable, never less: a stale lease only costs
percolation, the broker still decides who is alerted. A lease runs for the grace period
plus a slack; while a user holds a socket here, their lease is renewed once less than the
grace and a minute (or half the slack, if shorter) is left, so about once per slack, and at
every moment it outlasts now + grace: when the last socket closes, the watches stay leased
through the grace. A socket's hello waits until
its owner's watches are leased and visible, so that a search after the hello finds them.
Arrivals are written together (group commit: one search for the watches, one bulk, one
refresh per flush; whoever arrives during a flush waits for the next), so a reconnect storm
is a few requests. After a restart the returning users' leases are still valid: they are
only read. Each instance renews the users it holds sockets for: no coordination.

Elasticsearch failing at a connect does not keep the socket from opening: the user is not
leased, and the renewal loop tries again until it is; meanwhile (while any user's lease
write has failed and not yet succeeded) search percolation does not filter on leases at
all (`hold`), as it did before leases existed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import anyio
from elastic_transport import TransportError
from elasticsearch import ApiError, AsyncElasticsearch

from percolert.core.settings import Settings
from percolert.core.times import iso_from_seconds

logger = logging.getLogger(__name__)

# Watches read per page and lease updates per bulk request; users leased per request.
_PAGE = 10_000
_BULK = 5_000
_USERS_PER_WRITE = 1_000
# A connecting user whose lease is known to end sooner than this is leased again.
_MARGIN_SECONDS = 30.0
# Time left beyond the grace when a lease is renewed (at most half the slack).
_RENEWAL_MARGIN_SECONDS = 60.0
# The renewal loop looks at least this often (it also retries users not leased yet).
_MAX_TICK_SECONDS = 5.0


def lease_seconds(settings: Settings) -> float:
    """How long a lease runs: the reconnect grace plus the slack."""
    return settings.reconnect_grace_seconds + settings.lease_slack_seconds


def lease_until(seconds_from_now: float, now: float | None = None) -> str:
    """The `reachable_until` of a lease written now (a date Elasticsearch parses)."""
    at = (time.time() if now is None else now) + seconds_from_now
    return iso_from_seconds(at)


# What search percolation adds beside the percolate query: default watches (everyone's)
# and watches leased until now or later. `now` is the node's clock.
REACHABLE_FILTER: dict[str, Any] = {
    "bool": {
        "should": [
            {"term": {"is_default": True}},
            {"range": {"reachable_until": {"gte": "now"}}},
        ],
        "minimum_should_match": 1,
    }
}


class LeaseProblem(Exception):
    """Elasticsearch refused some lease updates."""


class Leases:
    """The leases of the users connected to this instance."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        alias: str,
        settings: Settings,
        users: Callable[[], Collection[str]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`users()`: who holds a socket here now (the hub's users)."""
        self._client = client
        self._alias = alias
        self._users = users
        self._clock = clock
        self._length = lease_seconds(settings)
        # A held user is renewed once less than this is left of their lease: the grace and a
        # margin for the renewal itself, so about once per slack (every renewal reindexes the
        # watches, percolator query included).
        self._renew_below = settings.reconnect_grace_seconds + min(
            settings.lease_slack_seconds / 2, _RENEWAL_MARGIN_SECONDS
        )
        self._tick = min(settings.lease_slack_seconds / 4, _MAX_TICK_SECONDS)
        self._margin = min(_MARGIN_SECONDS, settings.lease_slack_seconds / 4)
        # How long a connect waits for its lease before greeting without it.
        self._wait = settings.elasticsearch_timeout
        # By user: when their lease is known to end (the earliest of their watches'; wall
        # clock). Kept until it ends, so that a user coming back meanwhile costs nothing.
        self._known: dict[str, float] = {}
        self._arriving: set[str] = set()
        self._arrival = anyio.Event()  # set when someone is waiting for a flush
        self._next_flush = anyio.Event()  # set when the flush of `_arriving` is done
        # Read by the metrics.
        self.writes = 0  # bulk requests of lease updates
        self.refreshes = 0
        self.failures = 0
        # Users whose lease write failed, and since when; see `hold`.
        self._unleased: dict[str, float] = {}
        self.leased = 0  # watch leases written

    async def arrived(self, user: str) -> None:
        """Return once `user`'s watches are leased and visible to percolation (or after
        Elasticsearch's timeout, or at once if it fails: the renewal loop retries). Never
        raises for Elasticsearch's sake."""
        if self._known.get(user, 0.0) > self._clock() + self._margin:
            return
        self._arriving.add(user)
        flushed = self._next_flush
        self._arrival.set()
        with anyio.move_on_after(self._wait):
            await flushed.wait()

    def forget(self, user: str) -> None:
        """`user` was erased (their watches, leases in them, are deleted): nothing is kept of
        them here, and nothing is retried for them."""
        self._known.pop(user, None)
        self._unleased.pop(user, None)
        self._arriving.discard(user)

    async def run(self) -> None:
        """Flush arrivals and renew held users' leases, until cancelled."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._flush_arrivals)
            tasks.start_soon(self._renew)

    async def _flush_arrivals(self) -> None:
        while True:
            await self._arrival.wait()
            self._arrival = anyio.Event()
            users, self._arriving = self._arriving, set()
            flushed, self._next_flush = self._next_flush, anyio.Event()
            try:
                await self._lease(users)
            finally:
                flushed.set()

    async def _renew(self) -> None:
        while True:
            await anyio.sleep(self._tick)
            now = self._clock()
            for user in [user for user, until in self._known.items() if until <= now]:
                del self._known[user]
            due = {
                user
                for user in self._users()
                if self._known.get(user, 0.0) - now < self._renew_below
            }
            if due:
                await self._lease(due)

    async def _lease(self, users: set[str]) -> None:
        """Lease the watches of `users` whose lease ends too soon, a bounded group of users
        at a time (a `terms` query takes at most 65,536; a group that fails leaves the
        others leased); failures are logged and counted (those users stay unknown, so the
        renewal loop tries them again)."""
        ordered = sorted(users)
        for start in range(0, len(ordered), _USERS_PER_WRITE):
            group = set(ordered[start : start + _USERS_PER_WRITE])
            try:
                await self._write(group)
            except (TransportError, ApiError, LeaseProblem) as error:
                self.failures += 1
                if not self._unleased:
                    logger.warning(
                        "lease writes failing: searches percolate every watch until they succeed"
                    )
                logger.warning("leasing the watches of %d users failed: %s", len(group), error)
                now = self._clock()
                for user in group:
                    self._unleased.setdefault(user, now)
            else:
                for user in group:
                    self._unleased.pop(user, None)

    def hold(self) -> bool:
        """Whether the leases can be trusted: False while some user's lease write has failed
        and not yet succeeded (for at most a lease: the broker gives up on a user gone that
        long). Elasticsearch may refuse writes while it still answers searches (a disk past
        its flood stage blocks writes, say); leases would then run out under connected
        users, so search percolation filters on them only while this is True."""
        if self._unleased:
            cutoff = self._clock() - self._length
            for user in [user for user, since in self._unleased.items() if since < cutoff]:
                del self._unleased[user]
        return not self._unleased

    async def _write(self, users: set[str]) -> None:
        now = self._clock()
        until = now + self._length
        stamp = lease_until(self._length, now)
        # The earliest lease end of each user's watches, once written.
        earliest: dict[str, float] = {}
        updates: list[dict[str, Any]] = []
        async for watch_id, owner, leased in self._watches_of(users):
            if leased - now >= self._renew_below:
                earliest[owner] = min(earliest.get(owner, leased), leased)
                continue
            earliest[owner] = min(earliest.get(owner, until), until)
            updates.append({"update": {"_id": watch_id, "retry_on_conflict": 3}})
            updates.append({"doc": {"reachable_until": stamp}})
        for start in range(0, len(updates), 2 * _BULK):
            response = await self._client.bulk(
                index=self._alias, operations=updates[start : start + 2 * _BULK]
            )
            self.writes += 1
            if response["errors"]:
                # A watch removed meanwhile (404) is no longer anyone's concern.
                refused = [
                    item["update"]["error"]
                    for item in response["items"]
                    if item["update"].get("error") and item["update"]["status"] != 404
                ]
                if refused:
                    raise LeaseProblem(f"{len(refused)} lease updates refused: {refused[0]}")
        self.leased += len(updates) // 2
        if updates:
            # Made visible now (one refresh per group): a watch whose lease had ended is not
            # percolated until a refresh shows its new one, and a renewed lease must be seen
            # before the old one ends, which the index's periodic refresh does not promise
            # (a bulk load turns it off).
            await self._client.indices.refresh(index=self._alias)
            self.refreshes += 1
        for user in users:
            # A user without watches is treated as leased too: a watch added later carries
            # its own lease (WatchStore.add), and renewal comes in time for it.
            self._known[user] = earliest.get(user, until)

    async def _watches_of(self, users: set[str]) -> AsyncIterator[tuple[str, str, float]]:
        """(watch id, owner, lease end in seconds; 0 if none) of each watch of `users`."""
        after: list[Any] | None = None
        owners = sorted(users)
        while True:
            page = await self._client.search(
                index=self._alias,
                query={"terms": {"owner": owners}},
                size=_PAGE,
                sort=[{"watch_id": "asc"}],
                source=False,
                docvalue_fields=[
                    {"field": "owner"},
                    {"field": "reachable_until", "format": "epoch_millis"},
                ],
                track_total_hits=False,
                search_after=after,
            )
            hits = page["hits"]["hits"]
            for hit in hits:
                fields = hit["fields"]
                leased = fields.get("reachable_until")
                yield (
                    hit["_id"],
                    fields["owner"][0],
                    float(leased[0]) / 1000 if leased else 0.0,
                )
            if len(hits) < _PAGE:
                return
            after = hits[-1]["sort"]
