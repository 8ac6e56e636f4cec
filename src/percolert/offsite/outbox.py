"""The outbox: off-site events at rest in Elasticsearch (mappings/outbox.json), written
before anyone attempts them, so that a crash or a restart loses none.

An event's id is its `webhook-id`, the same for every attempt, and is derived from what
the event is about (`event_id`): two instances making the same event write one document
(`create`, the second refused as a conflict). Attempting is leased: an instance takes due
events with a write conditional on the version it read (`if_seq_no`), so that of two
instances reading the same events each gets its own; it records the outcome on the version
its lease wrote. An instance that dies mid-attempt leaves the lease to run out, and then
another instance takes the event. A receiver may so see an event twice (the instance died
after the receiver took it, before it recorded so): it dedupes by `webhook-id`, as Standard
Webhooks receivers do, and an e-mail keeps its `Message-ID`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

import elasticsearch
import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.core.times import iso_from_seconds, seconds_from_iso
from percolert.engine.bulk import CONFLICT
from percolert.offsite.attempts import Attempt
from percolert.offsite.schedule import next_delay
from percolert.offsite.suppressions import address_key

logger = logging.getLogger(__name__)

Channel = Literal["webhook", "email"]
State = Literal["pending", "delivered", "failed", "suppressed"]
STATES: tuple[State, ...] = ("pending", "delivered", "failed", "suppressed")
# The attempts an event's log keeps (the first and the latest ones): a long outage must not
# grow a document without end.
MAX_LOGGED_ATTEMPTS = 20


def event_id(channel: Channel, about: str) -> str:
    """The event's id and `webhook-id`: `msg_` and a digest of what it is about (one
    alert, one digest period, one watch change), so that whoever makes it makes the same."""
    digest = hashlib.sha256(f"{channel}\0{about}".encode()).digest()[:18]
    return "msg_" + base64.urlsafe_b64encode(digest).decode()


class OutboxBusy(Exception):
    """The event is being attempted now (leased until `lease_until`, when known)."""

    def __init__(self, lease_until: str | None) -> None:
        super().__init__(lease_until)
        self.lease_until = lease_until


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to write: `about` names what it is about (see `event_id`)."""

    channel: Channel
    type: str
    user: str
    about: str
    payload: dict[str, Any] | None = None
    mail: dict[str, Any] | None = None
    # Not before this moment (epoch seconds; None: now).
    due: float | None = None

    @property
    def id(self) -> str:
        return event_id(self.channel, self.about)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """An event as stored, with the version a conditional write needs."""

    id: str
    channel: Channel
    type: str
    user: str
    state: State
    created_at: str
    next_attempt_at: str
    attempt_count: int = 0
    attempts: list[Attempt] = []
    delivered_at: str | None = None
    lease_until: str | None = None
    lease_owner: str | None = None
    payload: dict[str, Any] | None = None
    mail: dict[str, Any] | None = None
    seq_no: int = -1
    primary_term: int = -1


class EventSummary(msgspec.Struct, frozen=True, kw_only=True):
    """An event as the admin's delivery log shows it."""

    id: str
    channel: Channel
    type: str
    state: State
    created_at: str
    next_attempt_at: str | None
    attempt_count: int
    delivered_at: str | None
    attempts: list[Attempt]


def _event(hit: dict[str, Any]) -> Event:
    source = hit["_source"]
    return msgspec.convert(
        {
            **source,
            "id": hit["_id"],
            "seq_no": hit.get("_seq_no", -1),
            "primary_term": hit.get("_primary_term", -1),
        },
        Event,
    )


def summary(event: Event) -> EventSummary:
    return EventSummary(
        id=event.id,
        channel=event.channel,
        type=event.type,
        state=event.state,
        created_at=event.created_at,
        next_attempt_at=event.next_attempt_at if event.state == "pending" else None,
        attempt_count=event.attempt_count,
        delivered_at=event.delivered_at,
        attempts=event.attempts,
    )


class Outbox:
    def __init__(
        self,
        client: AsyncElasticsearch,
        alias: str,
        *,
        owner: str,
        lease_seconds: float,
        schedule: tuple[float, ...],
    ) -> None:
        self._client = client
        self._alias = alias
        self._owner = owner
        self.lease_seconds = lease_seconds
        self._schedule = schedule
        # Events written, attempts recorded, and leases lost to another instance.
        self.written = 0
        self.recorded = 0
        self.lost_leases = 0

    async def add(self, events: Iterable[NewEvent]) -> int:
        """Write events not written yet (an event already there stays as it is); returns
        how many were new. Raises if Elasticsearch fails: the caller has not marked what
        they are about as handled, and makes them again."""
        now = time.time()
        operations: list[dict[str, Any]] = []
        for event in events:
            operations.append({"create": {"_index": self._alias, "_id": event.id}})
            operations.append(
                {
                    "channel": event.channel,
                    "type": event.type,
                    "user": event.user,
                    "state": "pending",
                    "created_at": iso_from_seconds(now),
                    "next_attempt_at": iso_from_seconds(event.due or now),
                    "attempt_count": 0,
                    "attempts": [],
                    "payload": event.payload,
                    "mail": event.mail,
                    **(
                        {"recipient": address_key(event.mail["to"])}
                        if event.mail is not None
                        else {}
                    ),
                }
            )
        if not operations:
            return 0
        response = await self._client.bulk(operations=operations)
        new = 0
        for item in response["items"]:
            result = item["create"]
            if "error" not in result:
                new += 1
            elif result.get("status") != CONFLICT:
                raise elasticsearch.ApiError(
                    f"writing an outbox event failed: {result['error']}",
                    meta=response.meta,
                    body=result,
                )
        self.written += new
        return new

    async def due(self, channel: Channel, limit: int, now: float | None = None) -> list[Event]:
        """Pending events of `channel` due now and leased to nobody, oldest due first: what
        `claim` may take. Search sees writes within a refresh; `claim` sees them at once."""
        now = time.time() if now is None else now
        moment = iso_from_seconds(now)
        response = await self._client.search(
            index=self._alias,
            query={
                "bool": {
                    "filter": [
                        {"term": {"channel": channel}},
                        {"term": {"state": "pending"}},
                        {"range": {"next_attempt_at": {"lte": moment}}},
                    ],
                    "must_not": [{"range": {"lease_until": {"gt": moment}}}],
                }
            },
            sort=[{"next_attempt_at": "asc"}],
            size=limit,
            seq_no_primary_term=True,
            track_total_hits=False,
        )
        return [_event(hit) for hit in response["hits"]["hits"]]

    async def claim(self, events: list[Event], now: float | None = None) -> list[Event]:
        """Lease `events` to this instance: those whose version is still the one read
        (another instance's lease, a delivery or a replay meanwhile leaves them out)."""
        if not events:
            return []
        now = time.time() if now is None else now
        lease = {
            "lease_until": iso_from_seconds(now + self.lease_seconds),
            "lease_owner": self._owner,
        }
        operations = [line for event in events for line in self._on_version(event, lease)]
        response = await self._client.bulk(operations=operations)
        claimed = []
        for event, item in zip(events, response["items"], strict=True):
            result = item["update"]
            if "error" in result:
                if result.get("status") != CONFLICT:
                    logger.warning("leasing an outbox event failed: %s", result["error"])
                continue
            claimed.append(
                msgspec.structs.replace(
                    event,
                    seq_no=result["_seq_no"],
                    primary_term=result["_primary_term"],
                    **lease,
                )
            )
        return claimed

    def _on_version(self, event: Event, change: dict[str, Any]) -> list[dict[str, Any]]:
        """The bulk lines of an update of `event` made only if it is still the version read
        (else the item is a 409: someone else changed it meanwhile)."""
        return [
            {
                "update": {
                    "_index": self._alias,
                    "_id": event.id,
                    "if_seq_no": event.seq_no,
                    "if_primary_term": event.primary_term,
                }
            },
            {"doc": change},
        ]

    def outcome(self, event: Event, attempt: Attempt) -> dict[str, Any]:
        """What recording `attempt` changes in `event`: delivered, failed, or due again on the
        schedule (failed once it is spent)."""
        attempts = [*event.attempts, attempt]
        if len(attempts) > MAX_LOGGED_ATTEMPTS:
            attempts = [attempts[0], *attempts[-(MAX_LOGGED_ATTEMPTS - 1) :]]
        count = event.attempt_count + 1
        change: dict[str, Any] = {
            "attempt_count": count,
            "attempts": msgspec.to_builtins(attempts),
            "lease_until": None,
            "lease_owner": None,
            "updated_at": iso_from_seconds(time.time()),
        }
        if attempt.outcome == "delivered":
            change.update(state="delivered", delivered_at=attempt.at)
        elif attempt.outcome == "failed":
            change.update(state="failed")
        elif attempt.outcome == "gone":
            # The endpoint is disabled: the event waits for it, as it is (an admin replays).
            change.update(state="failed")
        else:
            delay = next_delay(self._schedule, count, attempt.retry_after)
            if delay is None:
                change.update(state="failed")
            else:
                change.update(
                    next_attempt_at=iso_from_seconds(seconds_from_iso(attempt.at) + delay)
                )
        return change

    async def record(self, results: list[tuple[Event, dict[str, Any]]]) -> None:
        """Write what attempts changed (`outcome`, or a change of the caller's: a deferral,
        a suppression), each on the version the lease wrote: an event whose lease ran out and
        that another instance took meanwhile is that instance's to record."""
        if not results:
            return
        operations = [line for event, change in results for line in self._on_version(event, change)]
        response = await self._client.bulk(operations=operations)
        for item in response["items"]:
            result = item["update"]
            if "error" not in result:
                self.recorded += 1
            elif result.get("status") == CONFLICT:
                self.lost_leases += 1
                logger.warning("an outbox event's lease ran out before its attempt was recorded")
            else:
                logger.warning("recording an outbox attempt failed: %s", result["error"])

    def release(self, event: Event, due: float) -> dict[str, Any]:
        """A change that hands a leased event back unattempted, due at `due`."""
        return {"lease_until": None, "lease_owner": None, "next_attempt_at": iso_from_seconds(due)}

    async def get(self, event_id: str) -> Event | None:
        found = (await self._client.mget(index=self._alias, ids=[event_id]))["docs"][0]
        if not found.get("found"):
            return None
        return _event(found)

    async def events(
        self,
        *,
        channel: Channel | None = None,
        state: State | None = None,
        since: float | None = None,
        user: str | None = None,
        limit: int = 50,
    ) -> list[Event]:
        """The newest events first, filtered (the admin's delivery log, an export)."""
        filters: list[dict[str, Any]] = []
        if user is not None:
            filters.append({"term": {"user": user}})
        if channel is not None:
            filters.append({"term": {"channel": channel}})
        if state is not None:
            filters.append({"term": {"state": state}})
        if since is not None:
            filters.append({"range": {"created_at": {"gte": iso_from_seconds(since)}}})
        response = await self._client.search(
            index=self._alias,
            query={"bool": {"filter": filters}},
            sort=[{"created_at": "desc"}],
            size=limit,
            track_total_hits=False,
        )
        return [_event(hit) for hit in response["hits"]["hits"]]

    async def replay(self, event_id: str) -> Event | None:
        """Make an event due now again (delivered or failed ones too), with a fresh
        schedule and the same `webhook-id`; None when there is no such event. OutboxBusy
        while an instance is attempting it (its outcome would be lost, and the event sent
        twice at once)."""
        event = await self.get(event_id)
        if event is None:
            return None
        now = time.time()
        if event.lease_until is not None and seconds_from_iso(event.lease_until) > now:
            raise OutboxBusy(event.lease_until)
        response = await self._client.bulk(
            operations=self._on_version(event, _replayed(iso_from_seconds(now))), refresh=True
        )
        result = response["items"][0]["update"]
        if "error" in result:
            if result.get("status") == CONFLICT:
                raise OutboxBusy(None)
            raise elasticsearch.ApiError(
                f"replaying an outbox event failed: {result['error']}",
                meta=response.meta,
                body=result,
            )
        return await self.get(event_id)

    async def replay_since(self, since: float, channel: Channel | None = "webhook") -> int:
        """Make every event of `channel` created since `since` due now again; returns how
        many."""
        now = iso_from_seconds(time.time())
        filters: list[dict[str, Any]] = [
            {"range": {"created_at": {"gte": iso_from_seconds(since)}}},
            {"terms": {"state": ["delivered", "failed"]}},
            # Ended before this replay began: one delivered meanwhile (a replayed one, too)
            # is not replayed again by the next round.
            {"range": {"updated_at": {"lt": now}}},
        ]
        if channel is not None:
            filters.append({"term": {"channel": channel}})
        replayed = 0
        # Each round makes what it found pending, so the next one finds the rest.
        while True:
            response = await self._client.search(
                index=self._alias,
                query={"bool": {"filter": filters}},
                size=500,
                source=False,
                track_total_hits=False,
            )
            hits = response["hits"]["hits"]
            if not hits:
                return replayed
            operations: list[dict[str, Any]] = []
            for hit in hits:
                operations.append({"update": {"_index": self._alias, "_id": hit["_id"]}})
                operations.append({"doc": _replayed(now)})
            result = await self._client.bulk(operations=operations, refresh=True)
            replayed += sum(1 for item in result["items"] if "error" not in item["update"])

    async def erase_user(self, user: str) -> int:
        """Delete every event of `user` (their account was erased)."""
        # Events written a moment ago are found only after a refresh.
        await self._client.indices.refresh(index=self._alias)
        response = await self._client.delete_by_query(
            index=self._alias,
            query={"term": {"user": user}},
            refresh=True,
            conflicts="proceed",
        )
        return int(response["deleted"])

    async def prune(self, older_than: float) -> int:
        """Delete delivered and failed events created before `older_than` (their log too)."""
        response = await self._client.delete_by_query(
            index=self._alias,
            query={
                "bool": {
                    "filter": [
                        {"terms": {"state": ["delivered", "failed", "suppressed"]}},
                        {"range": {"created_at": {"lt": iso_from_seconds(older_than)}}},
                    ]
                }
            },
            conflicts="proceed",
        )
        return int(response["deleted"])


def _replayed(now: str) -> dict[str, Any]:
    return {
        "state": "pending",
        "next_attempt_at": now,
        "attempt_count": 0,
        "lease_until": None,
        "lease_owner": None,
        "updated_at": now,
    }
