"""Digests: the product alerts routed to a daily or weekly e-mail (their `digest` is set),
listed in one message at the account's local hour (its zone and hour, or the defaults),
daily, or weekly on Mondays.

A digest for a period lists every waiting alert routed before the period's moment: what
came after waits for the next one. It is an outbox event whose id names the account and the
period, so it is made once whoever makes it and however often; then its alerts stop
waiting. A period with nothing waiting sends nothing.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import elasticsearch
from elastic_transport import TransportError

from percolert.core.messages import ProductAlert
from percolert.core.offsite_settings import timezone_known
from percolert.core.times import iso_from_seconds
from percolert.offsite import events
from percolert.offsite.contacts import Contact
from percolert.offsite.mail import MailContent
from percolert.offsite.outbox import NewEvent
from percolert.offsite.parts import Parts
from percolert.products.away import decode_alerts

logger = logging.getLogger(__name__)

# A digest lists this many alerts, and counts the rest as "and N more".
LISTED = 20
# Accounts with waiting alerts read per page (every one is looked at, a page at a time).
ACCOUNTS_PER_ROUND = 1000
POLL_SECONDS = 60.0
# The most alerts one digest marks as listed (a bigger backlog waits for the next round).
_MARKED = 10_000

_ES_ERRORS = (TransportError, elasticsearch.ApiError)


def latest_period(now: float, zone: str, hour: int, period: str) -> tuple[str, float]:
    """The latest digest moment at or before `now` for an account in `zone` at `hour`: its
    key (the local date, or the ISO week) and the moment (epoch seconds)."""
    local = datetime.fromtimestamp(now, ZoneInfo(zone))
    moment = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if moment > local:
        moment -= timedelta(days=1)
    if period == "weekly":
        moment -= timedelta(days=moment.weekday())
        year, week, _ = moment.isocalendar()
        key = f"{year}-W{week:02d}"
    else:
        key = f"{moment:%Y-%m-%d}"  # the local date
    # Built in local time: a moment a clock change skipped is read as the zone reads it.
    moment = moment.replace(tzinfo=ZoneInfo(zone))
    return key, moment.timestamp()


class Digests:
    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._client = parts.client
        self._alias = parts.alerts_alias
        self._settings = parts.settings
        self.sent = 0

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except _ES_ERRORS as error:
                logger.warning("making digests failed, retrying: %s", error)
            await anyio.sleep(POLL_SECONDS)

    async def tick(self, now: float | None = None) -> int:
        """Make the digests due at `now`; returns how many were made (or found made)."""
        now = time.time() if now is None else now
        made = 0
        after: dict[str, Any] | None = None
        # Every account with alerts waiting, a page at a time (not the top N by how many
        # wait: a week's worth for one must not crowd out another's due daily digest).
        while True:
            composite: dict[str, Any] = {
                "size": ACCOUNTS_PER_ROUND,
                "sources": [
                    {"user": {"terms": {"field": "user"}}},
                    {"period": {"terms": {"field": "digest"}}},
                ],
            }
            if after is not None:
                composite["after"] = after
            response = await self._client.search(
                index=self._alias,
                query={"bool": {"filter": [{"exists": {"field": "digest"}}]}},
                size=0,
                aggs={"waiting": {"composite": composite}},
            )
            found = response["aggregations"]["waiting"]
            waiting = [
                (bucket["key"]["user"], bucket["key"]["period"]) for bucket in found["buckets"]
            ]
            if waiting:
                contacts = await self._parts.contacts.get_many(user for user, _ in waiting)
                suppressed = await self._parts.suppressed(contacts.values())
                for user, period in waiting:
                    made += await self._digest(user, period, contacts.get(user), suppressed, now)
            after = found.get("after_key")
            if after is None or len(waiting) < ACCOUNTS_PER_ROUND:
                return made

    async def _digest(
        self, user: str, period: str, contact: Contact | None, suppressed: set[str], now: float
    ) -> int:
        settings = self._settings
        zone = contact.timezone if contact and contact.timezone else settings.default_timezone
        if not timezone_known(zone):
            zone = settings.default_timezone
        hour = settings.digest_hour
        if contact is not None and contact.digest_hour is not None:
            hour = contact.digest_hour
        key, moment = latest_period(now, zone, hour, period)
        response = await self._client.search(
            index=self._alias,
            query={
                "bool": {
                    "filter": [
                        {"term": {"user": user}},
                        {"term": {"digest": period}},
                        {"range": {"routed": {"lte": iso_from_seconds(moment)}}},
                    ]
                }
            },
            sort=[{"seq": "desc"}],
            size=_MARKED,
            track_total_hits=True,
        )
        hits = response["hits"]["hits"]
        if not hits:
            return 0
        listed: list[ProductAlert] = [
            stored.alert for stored in decode_alerts(hit["_source"] for hit in hits[:LISTED])
        ]
        more = int(response["hits"]["total"]["value"]) - len(listed)
        made: list[NewEvent] = []
        if settings.webhooks:
            made.append(events.digest_webhook(user, contact, period, key, listed, more))
        address = self._parts.address(contact, suppressed)
        if address is not None:
            assert contact is not None
            assert settings.mail_from is not None  # settings.email
            items = [
                item
                for alert in listed
                for item in events.mail_items(alert, settings.shop_product_url)
            ]
            made.append(
                events.mail_event(
                    user=user,
                    to=address,
                    about=f"digest:{user}:{period}:{key}",
                    content=MailContent(
                        kind="digest",
                        items=items,
                        more=more + sum(events.unlisted(alert) for alert in listed),
                        period=period,
                    ),
                    mail_from=settings.mail_from,
                    watch_id=None,
                    mail_key=contact.mail_key,
                    event_type=events.DIGEST_CREATED,
                )
            )
        await self._parts.write(made)
        # Listed (or, with nowhere to send them, dropped): they wait no longer.
        operations: list[dict[str, Any]] = []
        for hit in hits:
            operations.append({"update": {"_index": self._alias, "_id": hit["_id"]}})
            operations.append({"doc": {"digest": None}})
        await self._client.bulk(operations=operations, refresh="wait_for")
        self.sent += 1 if made else 0
        return 1 if made else 0
