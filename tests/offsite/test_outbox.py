"""The outbox's guarantees against a real node, with the off-site rounds called directly: an
address gets its hourly share however many events a round holds for it; a replay since a
moment replays each ended event once; an event being attempted is not replayed under the
attempt; an "unsubscribe from all" link mailed to an old address does not reach the new one;
every account with a due digest gets it, however many others have alerts waiting."""

from __future__ import annotations

import time

import msgspec
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.accounts.ids import account_user_id
from percolert.core.times import iso_from_seconds
from percolert.offsite import digests
from percolert.offsite.mail import MailContent, MailItem
from percolert.offsite.outbox import NewEvent, OutboxBusy
from percolert.offsite.service import Offsite
from percolert.offsite.unsubscribe import UnsubscribeTarget
from tests.offsite.conftest import Mailing
from tests.offsite.receivers import SmtpSink

pytestmark = pytest.mark.anyio


@pytest.fixture
def offsite(mailing: Mailing) -> Offsite:
    return mailing.offsite


def _mail(number: int, to: str) -> NewEvent:
    return NewEvent(
        channel="email",
        type="product_alert.created",
        user=f"acct_{number}",
        about=f"mail-{number}",
        mail={
            "to": to,
            "message_id": f"<m{number}@shop.test>",
            "content": msgspec.to_builtins(
                MailContent(
                    kind="product_alert",
                    items=[
                        MailItem(
                            watch_terms="kindle",
                            change="price_drop",
                            product_name=f"Reader {number}",
                            price=80.0,
                            previous_price=100.0,
                        )
                    ],
                )
            ),
            "watch_id": f"w-{number:020d}",
            "mail_key": None,
        },
    )


async def _refreshed(offsite: Offsite) -> None:
    client: AsyncElasticsearch = offsite.outbox._client
    await client.indices.refresh(index=offsite.outbox._alias)


async def test_an_address_gets_its_hourly_share_from_a_round_of_many(
    offsite: Offsite, sink: SmtpSink
) -> None:
    share = offsite.settings.mail_per_recipient_per_hour
    # More than a round's batches hold, for one address written three ways.
    spellings = ["flood@example.com", "Flood@Example.com", "FLOOD@EXAMPLE.COM"]
    await offsite.outbox.add(_mail(number, spellings[number % 3]) for number in range(3 * share))
    await _refreshed(offsite)
    await offsite.delivery.tick()
    await offsite.delivery.tick()  # the next round counts what the first delivered
    assert len(sink.received) == share
    held = await offsite.outbox.events(channel="email", state="pending", limit=100)
    assert len(held) == 2 * share
    assert all(event.next_attempt_at > iso_from_seconds(time.time() + 60) for event in held)


async def test_a_replay_since_a_moment_replays_each_ended_event_once(offsite: Offsite) -> None:
    since = time.time() - 1
    await offsite.outbox.add(_mail(number, f"r{number}@example.com") for number in range(30))
    await _refreshed(offsite)
    await offsite.delivery.tick()
    await _refreshed(offsite)
    assert len(await offsite.outbox.events(state="delivered", limit=100)) == 30
    assert await offsite.outbox.replay_since(since, channel="email") == 30
    assert await offsite.outbox.replay_since(since, channel="email") == 0


async def test_an_event_being_attempted_is_not_replayed_under_the_attempt(
    offsite: Offsite,
) -> None:
    [event] = [_mail(1, "busy@example.com")]
    await offsite.outbox.add([event])
    await _refreshed(offsite)
    [due] = await offsite.outbox.due("email", 10)
    [leased] = await offsite.outbox.claim([due])
    with pytest.raises(OutboxBusy):
        await offsite.outbox.replay(event.id)
    # Once its attempt is recorded, it may be replayed.
    await offsite.outbox.record([(leased, offsite.outbox.release(leased, time.time()))])
    replayed = await offsite.outbox.replay(event.id)
    assert replayed is not None
    assert replayed.state == "pending"


async def test_an_all_link_mailed_to_an_old_address_does_not_reach_the_new_one(
    offsite: Offsite,
) -> None:
    user = account_user_id("customer-moved")
    await offsite.contacts.saw(user, "customer-moved", "old@example.com")
    old = await offsite.contacts.get(user)
    assert old is not None
    assert old.mail_key is not None
    await offsite.contacts.saw(user, "customer-moved", "new@example.com")
    new = await offsite.contacts.get(user)
    assert new is not None
    assert new.mail_key != old.mail_key
    assert not await offsite.unsubscribe(UnsubscribeTarget(kind="all", id=old.mail_key))
    assert await offsite.suppressions.suppressed(["new@example.com"]) == set()
    assert new.mail_key is not None
    assert await offsite.unsubscribe(UnsubscribeTarget(kind="all", id=new.mail_key))
    assert await offsite.suppressions.suppressed(["new@example.com"]) == {"new@example.com"}


async def test_a_due_digest_is_made_however_many_accounts_have_alerts_waiting(
    offsite: Offsite, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page of one account: the due one is on the last page of three.
    monkeypatch.setattr(digests, "ACCOUNTS_PER_ROUND", 1)
    client: AsyncElasticsearch = offsite.outbox._client
    now = time.time()
    operations: list[dict[str, object]] = []
    waiting = [("acct_a", "weekly"), ("acct_b", "weekly"), ("acct_z", "daily")]
    for number, (user, period) in enumerate(waiting):
        await offsite.contacts.saw(user, user, f"{user}@example.com")
        operations.append({"index": {"_index": offsite.digests._alias, "_id": f"p-{number}"}})
        operations.append(
            {
                "user": user,
                "seq": number,
                "at": iso_from_seconds(now - 3 * 86_400),
                "routed": iso_from_seconds(now - 3 * 86_400),
                "digest": period,
                "alert": {
                    "type": "product_alert",
                    "id": f"p-{number}",
                    "seq": number,
                    "watch": {"id": f"w-{number:020d}", "terms": "kindle"},
                    "change": "price_drop",
                    "product": {
                        "sku": f"S{number}",
                        "product_name": f"Reader {number}",
                        "price": 80.0,
                        "category": "e-readers",
                        "brand": "Testbrand",
                    },
                    "at": iso_from_seconds(now - 3 * 86_400),
                },
            }
        )
    await client.bulk(operations=operations, refresh=True)
    # Three days on, each account's latest daily moment has passed, and so may a weekly.
    made = await offsite.digests.tick(now=now)
    await _refreshed(offsite)
    events = await offsite.outbox.events(channel="email", limit=10)
    assert "acct_z" in {event.user for event in events}
    assert made == len(events)
