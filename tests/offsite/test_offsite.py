"""Off-site delivery end to end: a real server and node, a real webhook receiver and SMTP
server in the test process. A shop's customer who is away hears of their watched product's
price drop by one signed webhook and one e-mail, whose one-click unsubscribe works; one who
has the page open hears of it there only; failed deliveries are retried on the schedule
with the same `webhook-id`; a 410 disables the endpoint until the admin enables it; an
event outlives the process that wrote it; two instances deliver each event once."""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from percolert.core.offsite_settings import OffsiteSettings
from percolert.core.settings import Settings, SettingsError
from percolert.core.times import iso_from_seconds
from percolert.engine import indices
from percolert.offsite.outbox import NewEvent, Outbox
from percolert.web.app import create_app
from tests.accounts.tokens import SHOP_SECRET, shop_token
from tests.conftest import SAMPLE_CATALOG, client_for, prepare_indices
from tests.offsite.receivers import SmtpSink, WebhookReceiver
from tests.servers import answering, free_port, run_server, serve_process
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"offsite-tests-signing-key-32byte").decode()
ADMIN_TOKEN = "admin-token-for-the-offsite-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Long enough for a socket's `shown` mark to be written first (products/shown.py).
AWAY_AFTER = 2.0


def offsite_settings(settings: Settings, receiver: WebhookReceiver, sink: SmtpSink) -> Settings:
    offsite = OffsiteSettings(
        webhook_url=receiver.url,
        webhook_secrets=(WEBHOOK_SECRET,),
        webhook_allow_private=True,
        offsite_after_seconds=AWAY_AFTER,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_tls="off",
        mail_from="The Shop <alerts@shop.test>",
        public_url="http://unsubscribe.invalid",  # replaced by the server's address below
        outbox_poll_seconds=0.1,
        outbox_lease_seconds=5.0,
        webhook_timeout_seconds=2.0,  # within the lease, as the settings require
        # The Standard Webhooks schedule, shortened: a test waits fractions of a second.
        retry_schedule=(0, 0.2, 0.2, 0.2, 0.2),
        shop_product_url="https://shop.test/p/{sku}",
    )
    return msgspec.structs.replace(
        settings,
        jwt_secret=SHOP_SECRET,
        admin_token=ADMIN_TOKEN,
        coalesce_seconds=0.0,
        product_alert_poll_seconds=0.1,
        # Every price drop is news here, however soon after the last.
        product_alert_min_interval_seconds=0.0,
        offsite=offsite,
    )


@dataclass
class Deployment:
    settings: Settings
    url: str
    receiver: WebhookReceiver
    sink: SmtpSink

    def put(self, sku: str, **product: Any) -> None:
        answer = httpx.put(
            f"{self.url}/api/admin/products/{sku}", json=product, headers=ADMIN, timeout=15
        )
        assert answer.status_code == 200, answer.text

    def add_product(self, price: float) -> str:
        sku = f"OFF-{uuid.uuid4().hex[:10]}"
        self.put(sku, **_product(price))
        return sku

    def drop(self, sku: str, price: float) -> None:
        self.put(sku, **_product(price))

    def events(self, event_type: str) -> list[dict[str, Any]]:
        """The verified payloads of `event_type` received so far."""
        return [
            payload
            for payload in self.receiver.verified(WEBHOOK_SECRET)
            if payload["type"] == event_type
        ]

    def logged(self, **params: str | int) -> list[dict[str, Any]]:
        """The delivery log's events (`channel`, `state`, `limit`...), newest first."""
        listed = self.admin("GET", "/api/admin/webhooks/events", params=params)
        events: list[dict[str, Any]] = listed.json()["events"]
        return events

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if method == "POST":
            kwargs.setdefault("json", {})  # writes are JSON, an empty object when nothing
        return httpx.request(method, f"{self.url}{path}", headers=ADMIN, timeout=15, **kwargs)


def _product(price: float) -> dict[str, Any]:
    return {
        "product_name": "Offsite Testreader",
        "description": "A product of the off-site tests.",
        "price": price,
        "category": "e-readers",
        "brand": "Testbrand",
        "in_stock": True,
    }


@pytest.fixture
def deployment(
    fresh_settings: Settings, receiver: WebhookReceiver, sink: SmtpSink
) -> Iterator[Deployment]:
    port = free_port()
    settings = offsite_settings(fresh_settings, receiver, sink)
    settings = msgspec.structs.replace(
        settings,
        offsite=msgspec.structs.replace(settings.offsite, public_url=f"http://127.0.0.1:{port}"),
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    with run_server(settings, port) as url:
        yield Deployment(settings, url, receiver, sink)


async def _watch_product(shopper: Shopper, sku: str) -> dict[str, Any]:
    response = await shopper.http.post("/api/watches", json={"sku": sku, "on": ["price_drop"]})
    assert response.status_code == 201, response.text
    watch: dict[str, Any] = response.json()
    return watch


def _customer(url: str, subject: str, email: str | None = None) -> Shopper:
    claims = {} if email is None else {"email": email}
    return Shopper(url, token=shop_token(subject, expires_in=3600, **claims))


async def _recorded_delivered(url: str, event_id: str) -> dict[str, Any]:
    """The event as the delivery log shows it, once it is recorded delivered."""
    logged: dict[str, Any] = {}

    def delivered() -> bool:
        answer = httpx.get(f"{url}/api/admin/webhooks/events/{event_id}", headers=ADMIN)
        logged.update(answer.json())
        return bool(logged["state"] == "delivered")

    await wait_until(delivered, timeout=10, what="the event recorded as delivered")
    return logged


def _unsubscribe_url(header: str) -> str:
    [url] = re.findall(r"<(https?://[^>]+)>", header)
    return str(url)


async def test_an_away_customer_gets_one_signed_webhook_and_one_email_until_unsubscribed(
    deployment: Deployment,
) -> None:
    d = deployment
    sku = d.add_product(100.0)
    async with _customer(d.url, "customer-ada", "ada@example.com") as ada:
        watch = await _watch_product(ada, sku)
        d.drop(sku, 80.0)

        await wait_until(lambda: d.events("product_alert.created"), timeout=20, what="the webhook")
        [event] = d.events("product_alert.created")
        assert event["version"] == 1
        data = event["data"]
        assert data["customer"] == "customer-ada"
        assert data["alert"]["change"] == "price_drop"
        assert data["alert"]["watch"]["id"] == watch["id"]
        assert data["alert"]["product"]["sku"] == sku
        assert data["alert"]["product"]["price"] == 80.0
        assert data["alert"]["product"]["previous_price"] == 100.0
        assert data["link"] == f"https://shop.test/p/{sku}"
        # The header's id is the event's, which the admin's delivery log knows.
        [request] = [r for r in d.receiver.requests if b"product_alert.created" in r.body]
        logged = d.admin("GET", f"/api/admin/webhooks/events/{request.headers['webhook-id']}")
        assert logged.json()["state"] == "delivered"

        [mail] = await asyncio.to_thread(d.sink.wait_for, 1, 20)
        assert mail.recipients == ["ada@example.com"]
        assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        text = mail.message.get_body(("plain",))
        assert text is not None
        assert "Offsite Testreader" in text.get_content()
        assert "ada" not in _unsubscribe_url(mail.message["List-Unsubscribe"])
        link = _unsubscribe_url(mail.message["List-Unsubscribe"])

        # A GET (a mail scanner following the link) only asks.
        page = httpx.get(link, timeout=10)
        assert page.status_code == 200
        assert "<form method=post" in page.text
        assert (await ada.http.get("/api/watches")).json()["watches"][0]["frequency"] is None

        # The one-click POST of RFC 8058, as a mail provider sends it: no cookie, no origin.
        done = httpx.post(
            link,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
        assert done.status_code == 200, done.text
        [mine] = (await ada.http.get("/api/watches")).json()["watches"]
        assert mine["frequency"] == "off"

        # The next drop: the shop still hears of it; the customer gets no e-mail.
        d.drop(sku, 60.0)
        await wait_until(
            lambda: len(d.events("product_alert.created")) == 2, timeout=20, what="2nd webhook"
        )
        # Both events of an alert are written at once: no second e-mail event exists.
        assert len(d.logged(channel="email")) == 1
        assert len(d.sink.received) == 1


async def test_an_accounts_contact_and_deliveries_are_exported_and_erased_with_it(
    deployment: Deployment,
) -> None:
    d = deployment
    sku = d.add_product(100.0)
    async with _customer(d.url, "customer-erased", "eve@example.com") as eve:
        await _watch_product(eve, sku)
        d.drop(sku, 80.0)
        await asyncio.to_thread(d.sink.wait_for, 1, 20)
        export = (await eve.http.get("/api/me/export")).json()
        assert export["contact"]["customer_id"] == "customer-erased"
        assert export["contact"]["email"] == "eve@example.com"
        kinds = sorted((item["channel"], item["type"]) for item in export["deliveries"])
        assert ("email", "product_alert.created") in kinds
        assert ("webhook", "watch.created") in kinds

    answer = d.admin("DELETE", "/api/admin/accounts/customer-erased")
    assert answer.status_code == 200, answer.text
    erased = answer.json()["erased"]
    assert erased["outbox_events"] == len(kinds)
    await wait_until(lambda: d.events("account.erased"), timeout=20, what="account.erased")
    [event] = d.events("account.erased")
    assert event["data"]["customer"] == "customer-erased"
    contact = d.admin("GET", "/api/admin/accounts/customer-erased").json()
    assert contact["email"] is None
    # Only the erasure's own event is left of the account's deliveries.
    assert [item["type"] for item in d.logged(limit=100)] == ["account.erased"]


async def test_a_customer_with_the_page_open_is_told_there_and_nowhere_else(
    deployment: Deployment,
) -> None:
    d = deployment
    sku = d.add_product(100.0)
    async with (
        _customer(d.url, "customer-here", "here@example.com") as here,
        _customer(d.url, "customer-away", "away@example.com") as away,
    ):
        await _watch_product(here, sku)
        await _watch_product(away, sku)
        socket = await here.connect()
        d.drop(sku, 80.0)
        message = await socket.receive(timeout=20)
        while message is not None and message["type"] != "product_alert":
            message = await socket.receive(timeout=20)
        assert message is not None

        # The away customer's alert is routed in the same round as the other's would be.
        await wait_until(lambda: d.events("product_alert.created"), timeout=20, what="webhook")
        await asyncio.to_thread(d.sink.wait_for, 1, 20)
        customers = [event["data"]["customer"] for event in d.events("product_alert.created")]
        assert customers == ["customer-away"]
        assert [mail.recipients for mail in d.sink.received] == [["away@example.com"]]


async def test_a_receiver_failing_twice_gets_the_event_a_third_time_with_the_same_id(
    deployment: Deployment,
) -> None:
    d = deployment
    d.receiver.answer(500, 500)
    async with _customer(d.url, "customer-retry") as shopper:
        await shopper.watch(f"zqoffsite{uuid.uuid4().hex[:6]}")
    requests = await asyncio.to_thread(d.receiver.wait_for, 3, 20)
    assert len({request.headers["webhook-id"] for request in requests}) == 1
    event_id = requests[0].headers["webhook-id"]

    logged = await _recorded_delivered(d.url, event_id)
    assert [attempt["status"] for attempt in logged["attempts"]] == [500, 500, 200]
    assert [attempt["outcome"] for attempt in logged["attempts"]] == ["retry", "retry", "delivered"]
    assert len(d.receiver.requests) == 3


async def test_a_410_disables_the_endpoint_until_the_admin_enables_it_and_replays(
    deployment: Deployment,
) -> None:
    d = deployment
    d.receiver.answer(410)
    async with _customer(d.url, "customer-gone") as shopper:
        await shopper.watch(f"zqgone{uuid.uuid4().hex[:6]}")
        [first] = await asyncio.to_thread(d.receiver.wait_for, 1, 20)

        def endpoint() -> dict[str, Any]:
            state: dict[str, Any] = d.admin("GET", "/api/admin/webhooks").json()["endpoint"]
            return state

        await wait_until(lambda: endpoint()["disabled"], timeout=10, what="the endpoint disabled")
        assert "410" in endpoint()["reason"]
        # While disabled, a new event waits, pending.
        await shopper.watch(f"zqgone{uuid.uuid4().hex[:6]}")

        await wait_until(
            lambda: len(d.logged(state="pending")) == 1, timeout=10, what="the event listed"
        )
        assert len(d.receiver.requests) == 1

    assert d.admin("POST", "/api/admin/webhooks/enable").json()["disabled"] is False
    second = (await asyncio.to_thread(d.receiver.wait_for, 2, 20))[1]
    assert second.headers["webhook-id"] != first.headers["webhook-id"]
    # The refused one is failed; a replay sends it again under its own id.
    replay = d.admin("POST", f"/api/admin/webhooks/events/{first.headers['webhook-id']}/replay")
    assert replay.status_code == 202
    third = (await asyncio.to_thread(d.receiver.wait_for, 3, 20))[2]
    assert third.headers["webhook-id"] == first.headers["webhook-id"]
    # And everything since a moment, again.
    since = d.admin(
        "POST", "/api/admin/webhooks/replay", json={"since": iso_from_seconds(second.at - 60)}
    )
    assert since.json()["replayed"] == 2
    await asyncio.to_thread(d.receiver.wait_for, 5, 20)


async def test_an_address_refused_for_good_is_never_mailed_again(deployment: Deployment) -> None:
    d = deployment
    d.sink.refuse_rcpt(550, "5.1.1 no such mailbox")
    sku = d.add_product(100.0)
    async with _customer(d.url, "customer-bounce", "nobody@example.com") as shopper:
        await _watch_product(shopper, sku)
        d.drop(sku, 80.0)

        await wait_until(
            lambda: [event["state"] for event in d.logged(channel="email")] == ["failed"],
            timeout=20,
            what="failed",
        )
        d.drop(sku, 60.0)
        await wait_until(
            lambda: len(d.events("product_alert.created")) == 2, timeout=20, what="2nd webhook"
        )
        assert len(d.logged(channel="email")) == 1
        assert d.sink.received == []


async def test_an_address_gets_its_hourly_share_however_many_accounts_share_it(
    fresh_settings: Settings, receiver: WebhookReceiver, sink: SmtpSink
) -> None:
    settings = offsite_settings(fresh_settings, receiver, sink)
    settings = msgspec.structs.replace(
        settings,
        offsite=msgspec.structs.replace(settings.offsite, mail_per_recipient_per_hour=1),
    )
    await asyncio.to_thread(prepare_indices, settings)
    with run_server(settings) as url:
        d = Deployment(settings, url, receiver, sink)
        sku = d.add_product(100.0)
        async with (
            _customer(url, "customer-one", "shared@example.com") as one,
            _customer(url, "customer-two", "Shared@Example.com") as two,
        ):
            await _watch_product(one, sku)
            await _watch_product(two, sku)
            d.drop(sku, 80.0)

            await wait_until(
                lambda: (
                    sorted(event["state"] for event in d.logged(channel="email"))
                    == ["delivered", "pending"]
                    and all(event["attempt_count"] < 2 for event in d.logged(channel="email"))
                ),
                timeout=20,
                what="one e-mail sent and the other held",
            )
            [held] = [event for event in d.logged(channel="email") if event["state"] == "pending"]
            # Held back to the next hour's share, not tried and not dropped.
            assert held["attempt_count"] == 0
            assert held["next_attempt_at"] > iso_from_seconds(time.time() + 1800)
            assert len(sink.received) == 1


async def test_an_event_written_by_a_process_that_died_is_delivered_once_after_restart(
    fresh_settings: Settings, receiver: WebhookReceiver, sink: SmtpSink
) -> None:
    settings = offsite_settings(fresh_settings, receiver, sink)
    await asyncio.to_thread(prepare_indices, settings)
    client = client_for(settings)
    try:
        # Written as a process does first, and then nothing: it died before attempting it.
        outbox = Outbox(
            client,
            indices.alias_for(settings, "outbox"),
            owner="dead",
            lease_seconds=2.0,
            schedule=settings.offsite.retry_schedule,
        )
        event = NewEvent(
            channel="webhook",
            type="watch.created",
            user="acct_test",
            about="written-then-died",
            payload={"type": "watch.created", "version": 1, "timestamp": "", "data": {}},
        )
        assert await outbox.add([event]) == 1
        assert await outbox.add([event]) == 0  # the same event twice is one
    finally:
        await client.close()
    with run_server(settings) as url:
        [request] = await asyncio.to_thread(receiver.wait_for, 1, 20)
        assert request.headers["webhook-id"] == event.id

        await _recorded_delivered(url, event.id)
    assert len(receiver.requests) == 1


def _serve(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`percolert serve` in its own process, as deployed, with the off-site settings."""
    return serve_process(
        settings,
        port,
        log,
        {
            "PERCOLERT_JWT_SECRET": SHOP_SECRET,
            "PERCOLERT_ADMIN_TOKEN": ADMIN_TOKEN,
            "PERCOLERT_WEBHOOK_URL": settings.offsite.webhook_url or "",
            "PERCOLERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "PERCOLERT_WEBHOOK_ALLOW_PRIVATE": "true",
            "PERCOLERT_OUTBOX_LEASE_SECONDS": "5",
            "PERCOLERT_WEBHOOK_TIMEOUT_SECONDS": "2",
            "PERCOLERT_OUTBOX_POLL_SECONDS": "0.1",
            "PERCOLERT_OUTBOX_RETRY_SCHEDULE": "0,0.2,0.2",
        },
    )


async def test_an_instance_killed_mid_attempt_hands_the_event_on_after_its_lease(
    fresh_settings: Settings, receiver: WebhookReceiver, sink: SmtpSink, tmp_path: Path
) -> None:
    settings = offsite_settings(fresh_settings, receiver, sink)
    await asyncio.to_thread(prepare_indices, settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    receiver.answer(200, hold=True)  # the first attempt gets no answer
    log = tmp_path / "serve.log"
    process = _serve(settings, port, log)
    try:
        await wait_until(lambda: answering(process, url, log), timeout=30, what="the server up")
        async with _customer(url, "customer-killed") as shopper:
            await shopper.watch(f"zqkilled{uuid.uuid4().hex[:6]}")
        [held] = await asyncio.to_thread(receiver.wait_for, 1, 20)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        receiver.release()
        process = _serve(settings, port, log)
        await wait_until(
            lambda: answering(process, url, log), timeout=30, what="the server up again"
        )
        [_, again] = await asyncio.to_thread(receiver.wait_for, 2, 20)
        assert again.headers["webhook-id"] == held.headers["webhook-id"]
        event_id = held.headers["webhook-id"]

        logged = await _recorded_delivered(url, event_id)
        # The killed attempt was never recorded; the one after the restart was, once.
        assert logged["attempt_count"] == 1
        assert len(receiver.requests) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


async def test_two_instances_deliver_each_event_once(
    fresh_settings: Settings, receiver: WebhookReceiver, sink: SmtpSink
) -> None:
    settings = offsite_settings(fresh_settings, receiver, sink)
    await asyncio.to_thread(prepare_indices, settings)
    client = client_for(settings)
    outbox = Outbox(
        client,
        indices.alias_for(settings, "outbox"),
        owner="writer",
        lease_seconds=2.0,
        schedule=settings.offsite.retry_schedule,
    )
    count = 60
    try:
        with (
            run_server(msgspec.structs.replace(settings, instance_id="one")) as first,
            run_server(msgspec.structs.replace(settings, instance_id="two")),
        ):
            await outbox.add(
                NewEvent(
                    channel="webhook",
                    type="watch.created",
                    user="acct_test",
                    about=f"event-{number}",
                    payload={"type": "watch.created", "version": 1, "timestamp": "", "data": {}},
                )
                for number in range(count)
            )
            await asyncio.to_thread(receiver.wait_for, count, 30)

            async def all_delivered() -> bool:
                listed = httpx.get(
                    f"{first}/api/admin/webhooks/events",
                    params={"state": "delivered", "limit": count},
                    headers=ADMIN,
                ).json()
                return len(listed["events"]) == count

            await wait_until(all_delivered, timeout=20, what="every event recorded delivered")
    finally:
        await client.close()
    ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert len(ids) == count
    assert len(set(ids)) == count


@pytest.mark.parametrize(
    "url", ["http://10.0.0.7/hooks", "http://169.254.169.254/latest", "http://127.0.0.1:9/x"]
)
def test_a_private_or_loopback_endpoint_is_refused_at_configuration(
    fresh_settings: Settings, url: str
) -> None:
    offsite = OffsiteSettings(webhook_url=url, webhook_secrets=(WEBHOOK_SECRET,))
    with pytest.raises(SettingsError, match="PERCOLERT_WEBHOOK_URL"):
        create_app(msgspec.structs.replace(fresh_settings, offsite=offsite))
