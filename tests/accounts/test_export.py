"""`GET /api/me/export` on a real server: an anonymous session's and an account's data as
they were made (watches, the alerts sent to them, product alerts, the seen mark), as a
download, and never anything of another user."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from percolert.accounts.ids import account_user_id
from percolert.alerts.personal import own_alerts
from percolert.engine import es, indices
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.accounts.conftest import ADMIN, Shop
from tests.accounts.tokens import shop_token
from tests.shoppers import Shopper, Socket
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

HEADPHONES = {
    "product_name": "Studio Headphones Pro X",
    "description": "Over-ear headphones, closed back, detachable cable.",
    "price": 189.0,
    "category": "audio",
    "brand": "Acme",
    "in_stock": True,
}


def session_user(shopper: Shopper) -> str:
    """An anonymous shopper's user id: the first part of the signed cookie's value."""
    return shopper.http.cookies[COOKIE_NAME].split(".")[0]


async def export_of(shopper: Shopper) -> dict[str, Any]:
    response = await shopper.http.get("/api/me/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == 'attachment; filename="percolert-export.json"'
    assert response.headers["cache-control"] == "no-store"
    exported: dict[str, Any] = response.json()
    return exported


async def next_of(socket: Socket, kind: str) -> dict[str, Any]:
    while (message := await socket.receive()) is not None:
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} came")


async def test_an_export_holds_the_callers_data_and_nobody_elses(shop: Shop) -> None:
    customer = f"carol-{uuid.uuid4().hex[:8]}@example.com"
    async with (
        Shopper(shop.url) as anonymous,
        Shopper(shop.url, token=shop_token(customer)) as carol,
        Shopper(shop.url) as other,
    ):
        anonymous_socket = await anonymous.connect()
        carol_socket = await carol.connect()
        mine = await anonymous.watch("kindle", notify="searches")
        hers = await carol.watch("headphones")
        theirs = await other.watch("kindle")
        await other.search("kindle paperwhite")  # alerts the anonymous shopper
        await anonymous.search("noise cancelling headphones")  # alerts Carol
        anonymous_alert = await anonymous_socket.next_alert()
        carol_alert = await carol_socket.next_alert()
        assert anonymous_alert is not None
        assert carol_alert is not None
        put = httpx.put(
            f"{shop.url}/api/admin/products/AU-9001", json=HEADPHONES, headers=ADMIN, timeout=30
        )
        assert put.status_code == 200, put.text
        product_alert = await next_of(carol_socket, "product_alert")

        async def logged(shopper: Shopper) -> bool:
            return bool((await export_of(shopper))["alerts"])

        await wait_until(lambda: logged(anonymous), what="the anonymous alert logged")
        await wait_until(lambda: logged(carol), what="Carol's alert logged")

        exported = await export_of(anonymous)
        assert exported["identity"]["kind"] == "anonymous"
        assert exported["identity"]["user_id"] == session_user(anonymous)
        started = exported["identity"]["session_started"]
        assert started is not None
        assert started <= exported["exported_at"]
        assert [watch["id"] for watch in exported["watches"]] == [mine["id"]]
        assert exported["watches"][0]["notify"] == "searches"
        assert exported["alerts"] == [anonymous_alert]
        assert exported["product_alerts"] == []
        assert exported["seen_mark"] is None
        assert exported["limit"] == 1000
        assert exported["truncated"] is False

        exported = await export_of(carol)
        assert exported["identity"] == {
            "kind": "account",
            "user_id": account_user_id(customer),
            "session_started": None,
        }
        assert [watch["id"] for watch in exported["watches"]] == [hers["id"]]
        assert exported["alerts"] == [carol_alert]
        assert exported["product_alerts"] == [product_alert]
        assert exported["seen_mark"] is not None
        assert product_alert["id"] in exported["seen_mark"]["shown"]
        # The shop's customer id is not stored, so not exported either.
        assert customer not in json.dumps(exported)

        # Nobody's export holds anything of another: ids, watches or alerts.
        everyone = {
            "anonymous": (session_user(anonymous), mine["id"], anonymous_alert["id"]),
            "carol": (account_user_id(customer), hers["id"], carol_alert["id"]),
            "other": (session_user(other), theirs["id"], None),
        }
        for name, shopper in (("anonymous", anonymous), ("carol", carol), ("other", other)):
            text = json.dumps(await export_of(shopper))
            for someone, marks in everyone.items():
                if someone != name:
                    assert not [mark for mark in marks if mark and mark in text], (name, someone)


async def test_own_alerts_are_bounded_and_say_so(shop: Shop) -> None:
    async with Shopper(shop.url) as reader, Shopper(shop.url) as searcher:
        socket = await reader.connect()
        await reader.watch("kindle")
        await reader.watch("headphones")
        await searcher.search("kindle")
        await searcher.search("headphones")
        assert await socket.next_alert() is not None
        assert await socket.next_alert() is not None
        user = session_user(reader)
        client = es.create_client(shop.settings)
        alias = indices.alias_for(shop.settings, "alerts")
        try:

            async def both_logged() -> bool:
                return len((await own_alerts(client, alias, user, 10))[0]) == 2

            await wait_until(both_logged, what="both alerts logged")
            newest, more = await own_alerts(client, alias, user, 1)
            assert more is True
            assert [alert.watch.terms for alert in newest] == ["headphones"]
            everything, more = await own_alerts(client, alias, user, 2)
            assert more is False
            assert len(everything) == 2
        finally:
            await client.close()
