"""Product alerts end to end, as the issue states them: `percolert ingest` (another process)
changes the catalog, a real server delivers to real sockets, and owners who were away find
the alerts on return. Real node, real server, real sockets, the real CLI.

Absence is shown without waiting: product alerts of one owner arrive in the order they were
written, so "the first product alert after X is the marker" proves X alerted nobody.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from percolert.core.settings import Settings
from tests.conftest import SAMPLE_CATALOG, prepare_indices, run_cli
from tests.servers import run_server
from tests.shoppers import Shopper, Socket

pytestmark = pytest.mark.anyio


@pytest.fixture
def deployment(fresh_settings: Settings) -> Iterator[tuple[Settings, str]]:
    settings = msgspec.structs.replace(fresh_settings, product_alert_poll_seconds=0.1)
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    with run_server(settings) as url:
        yield settings, url


def product(sku: str, name: str, price: float, **fields: Any) -> dict[str, Any]:
    return {
        "sku": sku,
        "product_name": name,
        "description": fields.pop("description", ""),
        "price": price,
        "category": fields.pop("category", "e-readers"),
        "brand": fields.pop("brand", "Amazon"),
        "in_stock": fields.pop("in_stock", True),
    }


def ingest(settings: Settings, tmp_path: Path, name: str, *products: dict[str, Any]) -> str:
    """`percolert ingest` of a file of `products`; its summary line."""
    path = tmp_path / f"{name}.ndjson"
    path.write_text("".join(json.dumps(p) + "\n" for p in products))
    done = run_cli(settings, "ingest", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


async def next_product_alert(socket: Socket, timeout: float = 10.0) -> dict[str, Any] | None:
    """The next product alert on `socket` (search alerts and other messages skipped)."""
    while (message := await socket.receive(timeout)) is not None:
        if message["type"] == "product_alert":
            return message
    return None


async def test_a_new_product_and_a_price_drop_reach_the_matching_owner_only(
    deployment: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, url = deployment
    async with Shopper(url) as a, Shopper(url) as b:
        kindle = await a.watch("kindle", max_price=150)
        await b.watch("headphones")
        a_socket = await a.connect()
        b_socket = await b.connect()

        summary = ingest(settings, tmp_path, "new", product("K-NEW-1", "Kindle Kids", 129.0))
        assert "1 alert" in summary, summary
        alert = await next_product_alert(a_socket)
        assert alert is not None
        assert alert["change"] == "new"
        assert alert["watch"]["id"] == kindle["id"]
        assert alert["product"]["sku"] == "K-NEW-1"
        assert alert["product"]["price"] == 129.0

        # Over the watch's max price: nobody. The same file again: nobody.
        ingest(settings, tmp_path, "dear", product("K-NEW-2", "Kindle Scribe", 179.0))
        ingest(settings, tmp_path, "new-again", product("K-NEW-1", "Kindle Kids", 129.0))
        # A drop under the max price: a price drop with both prices, and it comes first.
        ingest(settings, tmp_path, "drop", product("K-NEW-2", "Kindle Scribe", 139.0))
        drop = await next_product_alert(a_socket)
        assert drop is not None
        assert drop["change"] == "price_drop"
        assert drop["product"]["sku"] == "K-NEW-2"
        assert (drop["product"]["price"], drop["product"]["previous_price"]) == (139.0, 179.0)

        # B's first product alert is about headphones: nothing before it was for B.
        ingest(
            settings,
            tmp_path,
            "marker",
            product("H-NEW-1", "Studio Headphones", 99.0, category="audio", brand="Sony"),
        )
        marker = await next_product_alert(b_socket)
        assert marker is not None
        assert marker["product"]["sku"] == "H-NEW-1"


async def test_an_owner_away_during_the_ingest_finds_it_once_on_return(
    deployment: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, url = deployment
    async with Shopper(url) as a:
        await a.watch("kindle", max_price=150)
        ingest(settings, tmp_path, "away", product("K-AWAY-1", "Kindle Kids", 99.0))
        first = await a.connect()
        assert first.hello["away"] is not None
        [shown] = first.hello["away"]["alerts"]
        assert shown["product"]["sku"] == "K-AWAY-1"
        second = await a.connect()  # another tab
        assert second.hello.get("away") is None
        await first.close()
        reloaded = await a.connect()  # a reload
        assert reloaded.hello.get("away") is None


async def test_many_products_matching_one_watch_make_one_digest(
    deployment: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, url = deployment
    async with Shopper(url) as c:
        watch = await c.watch("zqwidget")
        socket = await c.connect()
        widgets = [
            product(f"ZQ-{n:03d}", f"Zqwidget {n}", 10.0 + n, category="gaming", brand="Zq")
            for n in range(300)
        ]
        ingest(settings, tmp_path, "widgets", *widgets)
        digest = await next_product_alert(socket)
        assert digest is not None
        assert digest["watch"]["id"] == watch["id"]
        assert digest["total"] == 300
        assert len(digest["more"]) == 4
        # One alert for the run: the next one is the marker of a later run.
        ingest(
            settings,
            tmp_path,
            "one-more",
            product("ZQ-LAST", "Zqwidget last", 5.0, category="gaming"),
        )
        after = await next_product_alert(socket)
        assert after is not None
        assert (after["product"]["sku"], after["total"]) == ("ZQ-LAST", 1)


async def test_a_watch_notifying_of_searches_only_gets_no_product_alerts(
    deployment: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, url = deployment
    async with Shopper(url) as d:
        await d.watch("kindle", notify="searches")
        marker = await d.watch("zqmarker", notify="products")
        socket = await d.connect()
        ingest(settings, tmp_path, "kindle", product("K-SEARCHES-1", "Kindle Kids", 99.0))
        ingest(settings, tmp_path, "marker", product("ZQ-MARK", "Zqmarker", 9.0, category="gaming"))
        first = await next_product_alert(socket)
        assert first is not None
        assert first["watch"]["id"] == marker["id"]


TOKEN = "admin-token-for-the-tests-0123456789"


@pytest.fixture
def slow_poll_deployment(fresh_settings: Settings) -> Iterator[str]:
    """With an admin token, and a poll an hour apart: only a wake delivers in time."""
    settings = msgspec.structs.replace(
        fresh_settings, admin_token=TOKEN, product_alert_poll_seconds=3600.0
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    with run_server(settings) as url:
        yield url


async def test_an_admin_price_drop_reaches_the_open_page_at_once(slow_poll_deployment: str) -> None:
    """The demo's curl: the instance that took the change delivers it without waiting for
    its poll, and only to the owner whose watch it matches."""
    url = slow_poll_deployment
    async with Shopper(url) as a, Shopper(url) as b:
        kindle = await a.watch("kindle", max_price=150)
        await b.watch("kindle", max_price=100)
        a_socket = await a.connect()
        sku = "ER-0001"  # Kindle Paperwhite (16 GB), $159.99 in the sample catalog
        response = await a.http.put(
            f"/api/admin/products/{sku}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json=product(sku, "Kindle Paperwhite (16 GB)", 139.99),
        )
        assert response.status_code == 200, response.text
        assert response.json()["events"] == ["price_drop"]
        assert response.json()["alerts"] == 1
        alert = await next_product_alert(a_socket)
        assert alert is not None
        assert alert["watch"]["id"] == kindle["id"]
        assert (alert["product"]["price"], alert["product"]["previous_price"]) == (139.99, 159.99)
