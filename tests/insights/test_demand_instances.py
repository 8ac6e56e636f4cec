"""The demand view of two instances sharing a Redis: an alert one instance publishes counts
once, its reach counts each instance's shoppers, and the live figures add up the instances."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from percolert.core.settings import Settings
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices
from tests.servers import run_server
from tests.shoppers import Shopper
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-two-instances-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def instances(elasticsearch_url: str, redis_url: str) -> Iterator[tuple[str, str]]:
    settings: Settings = make_settings(
        elasticsearch_url,
        redis_url=redis_url,
        admin_token=TOKEN,
        coalesce_seconds=0.0,
        insights_cache_seconds=0.0,
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    try:
        with run_server(settings) as one, run_server(settings) as two:
            yield one, two
    finally:
        asyncio.run(delete_indices(settings))


async def admin(url: str, method: str, path: str, body: object = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=15) as client:
        return await client.request(method, f"/api/admin/{path}", json=body)


async def test_an_alert_counts_once_and_reaches_the_shoppers_of_both(
    instances: tuple[str, str],
) -> None:
    one, two = instances
    promoted = await admin(one, "POST", "default-watches", {"text": "kindle"})
    assert promoted.status_code == 201, promoted.text
    watch_id = promoted.json()["id"]
    async with Shopper(one) as here, Shopper(two) as there, Shopper(one) as searcher:
        sockets = [await here.connect(), await there.connect()]

        async def both_present() -> dict[str, Any] | None:
            live: dict[str, Any] = (await admin(two, "GET", "live")).json()
            return live if live["instances"] == 2 and live["connected_shoppers"] >= 2 else None

        live = await eventually(both_present, timeout=20, what="both instances' presence")
        assert live["sockets"] >= 2
        await searcher.search("kindle")
        for socket in sockets:
            alert = await socket.next_alert(timeout=10)
            assert alert is not None
            assert alert["watch"]["id"] == watch_id

        async def counted() -> dict[str, Any] | None:
            found = await admin(two, "GET", "insights?since=1h")
            rows = {row["watch_id"]: row for row in found.json()["default_watches"]}
            row: dict[str, Any] | None = rows.get(watch_id)
            return row if row is not None and row["reach"] >= 2 else None

        row = await eventually(counted, timeout=20, what="the alert's reach on both instances")
        assert (row["alerts"], row["reach"]) == (1, 2)
