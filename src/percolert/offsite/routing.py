"""Which product alerts go off-site, and how: an account's alert that no socket of its owner
was sent within `offsite_after_seconds` (its `shown` is unset: products/shown.py) becomes a
webhook event for the shop, and an e-mail to the owner: at once, or in the next digest, as
the watch (or else the account) chose. One already shown does not.

Every instance routes: the events' ids say what they are about, so two instances routing
one alert make one event of each kind; the alert is then marked `routed`. Only alerts
younger than a day are routed, so that turning off-site delivery on does not mail a
month of old alerts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import elasticsearch
from elastic_transport import TransportError

from percolert.core.messages import Frequency
from percolert.core.times import iso_from_seconds
from percolert.offsite import events
from percolert.offsite.contacts import Contact
from percolert.offsite.mail import MailContent
from percolert.offsite.outbox import NewEvent
from percolert.offsite.parts import Parts
from percolert.products.alerts import StoredProductAlert
from percolert.products.away import decode_alerts

logger = logging.getLogger(__name__)

# Alerts routed per round; a round finding this many goes on at once.
ROUND = 500
# Older alerts are left where they are (see the module's docstring).
MAX_AGE_SECONDS = 86_400.0
ACCOUNT_PREFIX = "acct_"

_ES_ERRORS = (TransportError, elasticsearch.ApiError)

WatchFrequencies = Callable[[Iterable[str]], Awaitable[dict[str, Frequency | None]]]


def email_frequency(watch: Frequency | None, contact: Contact | None) -> Frequency:
    """The watch's own choice overrides the account's; instant when neither chose."""
    return watch or (None if contact is None else contact.frequency) or "instant"


class Router:
    def __init__(self, parts: Parts, watch_frequencies: WatchFrequencies) -> None:
        self._parts = parts
        self._client = parts.client
        self._alias = parts.alerts_alias
        self._settings = parts.settings
        self._watch_frequencies = watch_frequencies
        self.routed = 0

    async def run(self) -> None:
        poll = min(
            self._settings.outbox_poll_seconds, max(0.05, self._settings.offsite_after_seconds / 4)
        )
        while True:
            try:
                while await self.tick() == ROUND:
                    pass
            except _ES_ERRORS as error:
                # The same alerts are found again next round: nothing is lost meanwhile.
                logger.warning("routing product alerts off-site failed, retrying: %s", error)
            await anyio.sleep(poll)

    async def tick(self, now: float | None = None) -> int:
        """Route one round of alerts; returns how many were found."""
        now = time.time() if now is None else now
        before = now - self._settings.offsite_after_seconds
        response = await self._client.search(
            index=self._alias,
            query={
                "bool": {
                    "filter": [
                        {"prefix": {"user": ACCOUNT_PREFIX}},
                        {"range": {"at": {"lte": iso_from_seconds(before)}}},
                        {"range": {"at": {"gte": iso_from_seconds(before - MAX_AGE_SECONDS)}}},
                    ],
                    "must_not": [{"exists": {"field": "shown"}}, {"exists": {"field": "routed"}}],
                }
            },
            sort=[{"seq": "asc"}],
            size=ROUND,
            track_total_hits=False,
        )
        hits = response["hits"]["hits"]
        if not hits:
            return 0
        # Search sees marks a refresh after they are written; a read by id sees them at
        # once: an alert a socket was sent just now is not one to send off-site.
        shown = await self._shown_now([hit["_id"] for hit in hits])
        alerts = decode_alerts(hit["_source"] for hit in hits if hit["_id"] not in shown)
        marks, made = await self._route(alerts, now)
        await self._parts.write(made)
        # Routed only once its events are written: a failure in between routes it again.
        operations: list[dict[str, Any]] = []
        for hit in hits:
            if hit["_id"] in shown:
                continue
            operations.append({"update": {"_index": self._alias, "_id": hit["_id"]}})
            # One that does not decode is routed nowhere: it would never decode later.
            operations.append({"doc": marks.get(hit["_id"], {"routed": iso_from_seconds(now)})})
        if operations:
            await self._client.bulk(operations=operations, refresh="wait_for")
        self.routed += len(alerts)
        return len(hits)

    async def _shown_now(self, ids: list[str]) -> set[str]:
        response = await self._client.mget(index=self._alias, ids=ids, source_includes=["shown"])
        return {
            doc["_id"]
            for doc in response["docs"]
            if doc.get("found") and (doc.get("_source") or {}).get("shown")
        }

    async def _route(
        self, alerts: list[StoredProductAlert], now: float
    ) -> tuple[dict[str, dict[str, Any]], list[NewEvent]]:
        settings = self._settings
        contacts = await self._parts.contacts.get_many(stored.user for stored in alerts)
        frequencies = await self._watch_frequencies(stored.alert.watch.id for stored in alerts)
        suppressed = await self._parts.suppressed(contacts.values())
        routed = iso_from_seconds(now)
        marks: dict[str, dict[str, Any]] = {}
        made: list[NewEvent] = []
        for stored in alerts:
            alert, contact = stored.alert, contacts.get(stored.user)
            link = events.product_link(settings.shop_product_url, alert.product.sku)
            if settings.webhooks:
                made.append(events.product_alert_webhook(stored.user, alert, contact, link))
            mark: dict[str, Any] = {"routed": routed}
            # A watch removed since is one its owner no longer wants mail for.
            frequency: Frequency = "off"
            if alert.watch.id in frequencies:
                frequency = email_frequency(frequencies[alert.watch.id], contact)
            address = self._parts.address(contact, suppressed)
            if frequency == "instant" and address is not None:
                assert contact is not None
                assert settings.mail_from is not None  # settings.email
                made.append(
                    events.mail_event(
                        user=stored.user,
                        to=address,
                        about=f"product_alert:{alert.id}",
                        content=MailContent(
                            kind="product_alert",
                            items=events.mail_items(alert, settings.shop_product_url),
                            more=events.unlisted(alert),
                        ),
                        mail_from=settings.mail_from,
                        watch_id=alert.watch.id,
                        mail_key=contact.mail_key,
                        event_type=events.PRODUCT_ALERT_CREATED,
                    )
                )
            elif frequency in ("daily", "weekly") and (address is not None or settings.webhooks):
                # The digest job lists it (by e-mail, and to the shop as digest.created).
                mark["digest"] = frequency
            marks[alert.id] = mark
        return marks, made
