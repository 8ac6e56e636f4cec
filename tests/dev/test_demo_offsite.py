"""`percolert up --shop --sinks`: a customer of the example shop who is away gets the product
alert off-site, as the demo shows it: a verified webhook at the demo's receiver and an e-mail
in its mail folder, whose one-click unsubscribe link works."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from percolert.core.offsite_settings import offsite_from_environment
from percolert.dev import demo, sinks
from tests.conftest import delete_indices, make_settings
from tests.dev.test_demo import running_up
from tests.dev.test_demo_shop import shop_demo_ready
from tests.servers import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

CATALOG = Path(__file__).resolve().parents[2] / "data" / "products.ndjson"
RECEIVER = re.compile(r"^webhook receiver: (\S+) \(verifies each event; GET (\S+) lists")


def test_the_demo_secret_is_kept_and_taken_by_the_settings(tmp_path: Path) -> None:
    secret = sinks.webhook_secret(tmp_path)
    assert secret.startswith("whsec_")
    assert sinks.webhook_secret(tmp_path) == secret
    assert (tmp_path / "webhook_secret").stat().st_mode & 0o077 == 0
    taken = offsite_from_environment({"PERCOLERT_WEBHOOK_SECRET": secret}, ValueError)
    assert taken.webhook_secrets == (secret,)


def test_the_receiver_verifies_each_event_and_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = sinks.webhook_secret(tmp_path)
    receiver = sinks.WebhookReceiver([secret])
    receiver.start()
    try:
        product = {"product_name": "Kindle", "price": 99.0, "previous_price": 120.0}
        alert = {"change": "price_drop", "product": product}
        body = json.dumps({"type": "product_alert.created", "data": {"alert": alert}}).encode()
        now = datetime.now(UTC)
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign("msg_1", now, body),
        }
        assert httpx.post(receiver.url, content=body, headers=headers).status_code == 204
        forged = {**headers, "webhook-id": "msg_2"}
        assert httpx.post(receiver.url, content=body, headers=forged).status_code == 401
        listed = httpx.get(f"{receiver.base_url}/").json()
    finally:
        receiver.stop()
    assert [(event["id"], event["verified"]) for event in listed] == [
        ("msg_1", True),
        ("msg_2", False),
    ]
    assert capsys.readouterr().out.splitlines() == [
        "webhook product_alert.created msg_1 verified — Kindle: price_drop, 99.0 (was 120.0)",
        "webhook product_alert.created msg_2 NOT verified: No matching signature found",
    ]


async def test_an_away_customer_gets_the_alert_by_webhook_and_by_mail(
    elasticsearch_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment's values win over the demo's: a short wait makes the test quick.
    monkeypatch.setenv("PERCOLERT_OFFSITE_AFTER_SECONDS", "1")
    monkeypatch.setenv("PERCOLERT_OUTBOX_POLL_SECONDS", "0.2")
    for name in ("PERCOLERT_WEBHOOK_URL", "PERCOLERT_WEBHOOK_SECRET", "PERCOLERT_SMTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = make_settings(elasticsearch_url, state_dir=tmp_path / "state")
    port, shop_port = free_port(), free_port()
    cheaper = demo.cheaper_product(CATALOG)
    assert cheaper is not None
    sku = str(cheaper.pop("sku"))
    try:
        with running_up(
            settings, "--port", str(port), "--shop", "--shop-port", str(shop_port), "--sinks"
        ) as up:
            shop = f"http://127.0.0.1:{shop_port}"
            percolert = f"http://127.0.0.1:{port}"
            printed = await shop_demo_ready(up, shop)
            found = [match for line in printed if (match := RECEIVER.match(line))]
            assert found, printed
            webhook_url, events_url = found[0].groups()
            mail_folder = settings.state_dir / "mail"
            assert any("mail sink: smtp://127.0.0.1:" in line for line in printed)
            assert any(str(mail_folder) in line for line in printed)
            hint = (
                f"off-site: log in to the shop, click notify-me on {cheaper['product_name']}, "
                "close the tab, wait 1 s, run this:"
            )
            assert hint in [line.rstrip("\n") for line in printed]

            async with (
                httpx.AsyncClient(base_url=shop, timeout=15) as customer,
                httpx.AsyncClient(base_url=percolert, timeout=15) as api,
            ):
                assert (await customer.post("/login", data={"name": "Olivia"})).status_code == 303
                token = (await customer.get("/token")).json()["token"]
                watched = await api.post(
                    "/api/watches",
                    json={"sku": sku, "on": ["price_drop"]},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert watched.status_code == 201, watched.text
                # No tab of Olivia's is open: the price drop's alert goes off-site.
                admin_token = (settings.state_dir / "admin_token").read_text().strip()
                put = await api.put(
                    f"/api/admin/products/{sku}",
                    json=cheaper,
                    headers={"Authorization": f"Bearer {admin_token}"},
                )
                assert put.status_code == 200, put.text
                assert "price_drop" in put.json()["events"]

                alerts: list[dict[str, Any]] = []

                async def webhook_arrived() -> bool:
                    events = (await api.get(events_url)).json()
                    alerts[:] = [
                        event
                        for event in events
                        if event["type"] == "product_alert.created"
                        and event["payload"]["data"]["alert"]["product"]["sku"] == sku
                    ]
                    return bool(alerts)

                await wait_until(webhook_arrived, timeout=60, what="the product alert's webhook")
                assert webhook_url.startswith(events_url)
                assert alerts[0]["verified"], alerts[0]
                assert alerts[0]["payload"]["data"]["customer"] == "Olivia"

                def mail_arrived() -> list[Path]:
                    return sorted(mail_folder.glob("*.eml")) if mail_folder.is_dir() else []

                await wait_until(mail_arrived, timeout=60, what="the product alert's e-mail")
                message = email.message_from_bytes(
                    mail_arrived()[0].read_bytes(), policy=email.policy.default
                )
                assert isinstance(message, EmailMessage)
                assert message["To"] == "olivia@example.com"
                link = re.search(
                    r"<(https?://[^>]+/unsubscribe/[^>]+)>", message["List-Unsubscribe"]
                )
                assert link is not None, message["List-Unsubscribe"]
                assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
                # The mail provider's one-click unsubscribe (RFC 8058): no session, no origin.
                async with httpx.AsyncClient(timeout=15) as provider:
                    unsubscribed = await provider.post(
                        link.group(1),
                        content=b"List-Unsubscribe=One-Click",
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                assert unsubscribed.status_code == 200, unsubscribed.text

                def announced() -> bool:
                    printed.extend(up.new_lines())
                    return any(line.startswith("mail to olivia@example.com: ") for line in printed)

                await wait_until(announced, what="the mail sink's line")
                assert any(
                    line.startswith("webhook product_alert.created ") and " verified — " in line
                    for line in printed
                ), printed
    finally:
        await delete_indices(settings)
