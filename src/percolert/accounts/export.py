"""An export of everything Percolert holds of one user, anonymous session or account, for
them to download: who they are here, their watches, the alerts sent through their own
watches (as sent), their product alerts and their product-seen mark.

Bounded: the alerts and the product alerts are each the newest `EXPORT_LIMIT`, and the
export says when a list was cut (`truncated`). A default watch's alerts to everyone are
nobody's in particular: the log keeps them once for all, not per user, and they are not in
an export. An account is known here only by the user id derived from the shop's customer id
(accounts/ids.py); where the deployment sends alerts off-site, its contact (the shop's
customer id, its e-mail address and preferences) and the webhooks and e-mails about it are
held too, and exported.
"""

from __future__ import annotations

import time

from elasticsearch import AsyncElasticsearch

from percolert.accounts.ids import is_account
from percolert.alerts.personal import own_alerts
from percolert.core.messages import (
    DataExport,
    ExportContact,
    ExportDelivery,
    ExportIdentity,
    ExportSeenMark,
    ProductAlert,
)
from percolert.core.settings import Settings
from percolert.core.times import iso_from_seconds
from percolert.engine import indices
from percolert.offsite.service import Offsite
from percolert.products.away import decode_alerts
from percolert.products.seen import SeenMarks
from percolert.watches.store import WatchStore

# Alerts, and product alerts, in one export at most (each list).
EXPORT_LIMIT = 1000


async def export_data(
    client: AsyncElasticsearch,
    settings: Settings,
    watches: WatchStore,
    user: str,
    *,
    session_started: float | None,
    offsite: Offsite | None = None,
) -> DataExport:
    """Everything held of `user`; `session_started`: when an anonymous session began
    (epoch seconds)."""
    account = is_account(user)
    alerts, more_alerts = await own_alerts(
        client, indices.alias_for(settings, "alerts"), user, EXPORT_LIMIT
    )
    product_alerts, more_product_alerts = await _product_alerts(client, settings, user)
    mark = await SeenMarks(client, indices.alias_for(settings, "product_seen")).read(user)
    contact, deliveries = None, []
    if offsite is not None and offsite.enabled and account:
        held = await offsite.contacts.get(user)
        if held is not None:
            contact = ExportContact(
                customer_id=held.subject,
                email=held.email,
                frequency=held.frequency,
                timezone=held.timezone,
                digest_hour=held.digest_hour,
            )
        deliveries = [
            ExportDelivery(
                id=event.id,
                channel=event.channel,
                type=event.type,
                state=event.state,
                created_at=event.created_at,
                delivered_at=event.delivered_at,
            )
            for event in await offsite.outbox.events(user=user, limit=EXPORT_LIMIT)
        ]
    return DataExport(
        contact=contact,
        deliveries=deliveries,
        exported_at=iso_from_seconds(time.time()),
        identity=ExportIdentity(
            kind="account" if account else "anonymous",
            user_id=user,
            session_started=(
                None if account or session_started is None else iso_from_seconds(session_started)
            ),
        ),
        watches=await watches.owned_by(user),
        alerts=alerts,
        product_alerts=product_alerts,
        # A mark never written (nothing shown yet) is no data.
        seen_mark=None if mark.seq_no is None else ExportSeenMark(upto=mark.upto, shown=mark.shown),
        limit=EXPORT_LIMIT,
        truncated=more_alerts or more_product_alerts,
    )


async def _product_alerts(
    client: AsyncElasticsearch, settings: Settings, user: str
) -> tuple[list[ProductAlert], bool]:
    """The user's product alerts, newest first, at most EXPORT_LIMIT; whether there were more."""
    response = await client.search(
        index=indices.alias_for(settings, "product_alerts"),
        query={"bool": {"filter": [{"term": {"user": user}}]}},
        sort=[{"seq": "desc"}],
        size=EXPORT_LIMIT + 1,
        track_total_hits=False,
    )
    hits = response["hits"]["hits"]
    stored = decode_alerts(hit["_source"] for hit in hits[:EXPORT_LIMIT])
    return [entry.alert for entry in stored], len(hits) > EXPORT_LIMIT
