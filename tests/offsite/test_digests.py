"""Digests with the time injected, not waited for: alerts of an account whose e-mail comes
daily are routed to its digest (not mailed at once); the digest comes at the account's local
hour, once, with everything since the last one, and nothing comes when nothing waits. A
real node, a real SMTP server; the off-site loops' rounds are called with the moment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from percolert.accounts.ids import account_user_id
from percolert.core.messages import AlertWatch, ProductAlert, ProductCard, WatchSpec
from percolert.core.times import iso_from_seconds
from percolert.engine import indices
from percolert.offsite.digests import latest_period
from percolert.products.alerts import StoredProductAlert, product_alert_id, store
from tests.offsite.conftest import Mailing
from tests.offsite.receivers import SmtpSink

pytestmark = pytest.mark.anyio

SUBJECT = "customer-digest"
USER = account_user_id(SUBJECT)


def moment(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _alert(watch_id: str, terms: str, seq: int, at: float, name: str) -> StoredProductAlert:
    return StoredProductAlert(
        user=USER,
        alert=ProductAlert(
            id=product_alert_id(seq, watch_id),
            seq=seq,
            watch=AlertWatch(id=watch_id, terms=terms),
            change="price_drop",
            product=ProductCard(
                sku=f"SKU-{seq}",
                product_name=name,
                price=80.0,
                previous_price=100.0,
                category="e-readers",
                brand="Testbrand",
            ),
            at=iso_from_seconds(at),
        ),
    )


def test_the_latest_period_is_the_local_hour_in_the_accounts_zone() -> None:
    # 08:59 in Tokyo on the 8th: the latest 09:00 there was on the 7th.
    key, at = latest_period(moment("2026-12-07T23:59:00"), "Asia/Tokyo", 9, "daily")
    assert (key, at) == ("2026-12-07", moment("2026-12-07T00:00:00"))
    key, at = latest_period(moment("2026-12-08T00:00:30"), "Asia/Tokyo", 9, "daily")
    assert (key, at) == ("2026-12-08", moment("2026-12-08T00:00:00"))
    # Weekly: Mondays (7 December 2026 is one), at the hour, in the zone.
    key, at = latest_period(moment("2026-12-13T12:00:00"), "Europe/Paris", 8, "weekly")
    assert (key, at) == ("2026-W50", moment("2026-12-07T07:00:00"))


async def test_a_daily_digest_comes_once_at_the_local_hour_with_everything_since_the_last(
    mailing: Mailing, sink: SmtpSink
) -> None:
    settings, client, watches, offsite = (
        mailing.settings,
        mailing.client,
        mailing.watches,
        mailing.offsite,
    )
    await offsite.contacts.saw(USER, SUBJECT, "dee@example.com")
    await offsite.contacts.set_preferences(
        USER, frequency="daily", timezone="Asia/Tokyo", digest_hour=9
    )
    watch = await watches.add(USER, WatchSpec(terms="kindle"))
    alerts_alias = indices.alias_for(settings, "product_alerts")

    # Three price drops on the 7th, 10:00 to 10:02 in Tokyo: routed to the digest.
    first = moment("2026-12-07T01:00:00")
    names = ["Reader One", "Reader Two", "Reader <Three>"]
    await store(
        client,
        alerts_alias,
        [
            _alert(watch.id, "kindle", 1_000 + number, first + 60 * number, name)
            for number, name in enumerate(names)
        ],
    )
    assert await offsite.router.tick(now=first + 600) == 3
    assert await offsite.outbox.events(channel="email") == []  # nothing at once

    # 08:59 on the 8th in Tokyo: not yet.
    assert await offsite.digests.tick(now=moment("2026-12-07T23:59:00")) == 0
    # 09:00 on the 8th: one digest, and only one however often the round runs.
    at_nine = moment("2026-12-08T00:00:30")
    assert await offsite.digests.tick(now=at_nine) == 1
    assert await offsite.digests.tick(now=at_nine) == 0
    assert await offsite.digests.tick(now=at_nine + 3600) == 0
    [event] = await offsite.outbox.events(channel="email")
    assert event.type == "digest.created"

    await offsite.delivery.tick()
    [mail] = await asyncio.to_thread(sink.wait_for, 1, 10)
    assert mail.recipients == ["dee@example.com"]
    text = mail.message.get_body(("plain",))
    assert text is not None
    for name in names:
        assert name in text.get_content()
    html = mail.message.get_body(("html",))
    assert html is not None
    assert "Reader &lt;Three&gt;" in html.get_content()
    assert "/unsubscribe/" in mail.message["List-Unsubscribe"]

    # One more drop after 09:00: it waits for the 9th's digest, which lists it alone.
    later = at_nine + 7200
    await store(client, alerts_alias, [_alert(watch.id, "kindle", 2_000, later, "Reader Four")])
    assert await offsite.router.tick(now=later + 1) == 1
    assert await offsite.digests.tick(now=later + 60) == 0
    assert await offsite.digests.tick(now=moment("2026-12-09T00:00:10")) == 1
    await offsite.delivery.tick()
    [_, second] = await asyncio.to_thread(sink.wait_for, 2, 10)
    body = second.message.get_body(("plain",))
    assert body is not None
    assert "Reader Four" in body.get_content()
    assert "Reader One" not in body.get_content()
