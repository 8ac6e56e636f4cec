"""The off-site delivery benchmark's own checks (bench/offsite_delivery.py): at a tiny size it
delivers every webhook and e-mail once, each webhook verified, and reports so; and the
customers it writes in bulk are the documents the API makes for a customer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench.offsite_delivery import (
    ADMIN_TOKEN,
    PRICE,
    SKU,
    Customer,
    _product,
    api_customers,
    bulk_customers,
    measure,
    write_report,
)
from percolert.core.offsite_settings import OffsiteSettings
from percolert.core.settings import Settings
from percolert.engine import indices
from tests.accounts.tokens import SHOP_SECRET
from tests.conftest import prepare_indices
from tests.servers import run_server


def test_every_customer_gets_one_webhook_and_one_email(
    elasticsearch_url: str, tmp_path: Path
) -> None:
    report = measure(elasticsearch_url, 50, tmp_path, settle_seconds=1.0)
    for result in (report.webhook, report.email):
        assert result is not None
        assert (result.received, result.distinct) == (50, 50)
        assert (result.duplicates, result.missing, result.customers_twice) == (0, 0, 0)
        assert result.attempts == {"delivered": 50}
    assert report.webhook is not None
    assert report.webhook.verified == 50
    assert report.outbox_final == {"webhook": {"delivered": 50}, "email": {"delivered": 50}}
    assert report.within_goal
    assert not report.stalled
    assert not report.goal_met  # judged at 10k customers only
    write_report(report, tmp_path / "offsite.json")
    assert "All 50 webhooks once" in (tmp_path / "offsite.md").read_text()


def _stored(settings: Settings, index: str, document_id: str) -> dict[str, Any]:
    alias = indices.alias_for(settings, index)
    found = httpx.post(
        f"{settings.elasticsearch_url}/{alias}/_mget", json={"ids": [document_id]}, timeout=10
    ).json()["docs"][0]
    assert found["found"], (index, document_id)
    source: dict[str, Any] = found["_source"]
    return source


def test_bulk_customers_are_the_documents_the_api_makes(fresh_settings: Settings) -> None:
    # Off-site delivery on (the API records contacts only then); nothing is sent here.
    offsite = OffsiteSettings(
        smtp_host="127.0.0.1", smtp_port=9, smtp_tls="off", mail_from="alerts@shop.test"
    )
    settings = msgspec.structs.replace(
        fresh_settings, jwt_secret=SHOP_SECRET, admin_token=ADMIN_TOKEN, offsite=offsite
    )
    prepare_indices(settings)
    by_api = Customer("bench-by-api", "by-api@example.com")
    by_bulk = Customer("bench-by-bulk", "by-bulk@example.com")
    with run_server(settings) as url:
        answer = httpx.put(
            f"{url}/api/admin/products/{SKU}",
            json=_product(PRICE),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=15,
        )
        assert answer.status_code == 200, answer.text
        asyncio.run(api_customers(url, [by_api]))
    asyncio.run(bulk_customers(settings, [by_bulk]))

    def watch(customer: Customer) -> dict[str, Any]:
        hits = httpx.post(
            f"{settings.elasticsearch_url}/{indices.alias_for(settings, 'watches')}/_search",
            json={"query": {"term": {"owner": customer.user}}},
            timeout=10,
        ).json()["hits"]["hits"]
        assert len(hits) == 1
        source: dict[str, Any] = hits[0]["_source"]
        return source

    made, written = watch(by_api), watch(by_bulk)
    assert made.keys() == written.keys()
    differing = {key for key in made if made[key] != written[key]}
    assert differing == {"owner", "watch_id", "created_at", "reachable_until"}
    made, written = (
        _stored(settings, "accounts", by_api.user),
        _stored(settings, "accounts", by_bulk.user),
    )
    assert made.keys() == written.keys()
    differing = {key for key in made if made[key] != written[key]}
    assert differing == {"subject", "email", "mail_key", "updated_at"}
