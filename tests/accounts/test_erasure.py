"""Erasure of an account through the admin API, on a real server over a real node (and a
real Redis with PERCOLERT_TEST_BROKER=redis): afterwards nothing of the account is found in
any index or in Redis, its open socket is closed with 4410, and another account keeps
everything of its own."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from percolert.accounts.ids import account_user_id
from percolert.engine import es, indices
from percolert.realtime.hub import ACCOUNT_ERASED
from percolert.web.logs import JsonFormatter
from tests.accounts import traces
from tests.accounts.conftest import ADMIN, Shop
from tests.accounts.tokens import shop_token
from tests.shoppers import Shopper, Socket, default_watch
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

# A product none of the sample catalog's is: its arrival is news to "kindle" watches.
COLORSOFT = {
    "product_name": "Kindle Colorsoft Signature Edition",
    "description": "7-inch colour e-reader display, auto-adjusting front light, waterproof.",
    "price": 279.99,
    "category": "e-readers",
    "brand": "Amazon",
    "in_stock": True,
}


def erase(shop: Shop, customer_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.delete(
        f"{shop.url}/api/admin/accounts/{quote(customer_id, safe='')}",
        headers=ADMIN if headers is None else headers,
        timeout=60,
    )


async def next_of(socket: Socket, kind: str) -> dict[str, Any]:
    while (message := await socket.receive()) is not None:
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} came")


async def logged_naming(shop: Shop, field: str, user: str) -> int:
    """How many stored sendings of the alert log name `user` in `field`."""
    client = es.create_client(shop.settings)
    try:
        response = await client.count(
            index=indices.alias_for(shop.settings, "alerts"), query={"term": {field: user}}
        )
        return int(response["count"])
    finally:
        await client.close()


async def test_erasure_leaves_nothing_of_the_account_anywhere(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # A customer id that is personal data, as shops' often are.
    customer = f"jane.doe+{uuid.uuid4().hex[:8]}@example.com"
    jane = account_user_id(customer)
    bob_customer = f"bob-{uuid.uuid4().hex[:8]}"
    bob = account_user_id(bob_customer)
    async with (
        Shopper(shop.url, token=shop_token(customer)) as jane_shop,
        Shopper(shop.url, token=shop_token(bob_customer)) as bob_shop,
        Shopper(shop.url) as stranger,
        default_watch(shop.settings, "bluetooth speaker"),
    ):
        jane_socket = await jane_shop.connect()
        bob_socket = await bob_shop.connect()
        jane_watches = [await jane_shop.watch("kindle"), await jane_shop.watch("headphones")]
        bob_watch = await bob_shop.watch("kindle")
        # A search by another shopper alerts both (one sending to the two of them).
        await stranger.search("kindle paperwhite")
        assert (await jane_socket.next_alert()) is not None
        assert (await bob_socket.next_alert()) is not None
        # Jane's own search: a default watch's alert to everyone excludes her.
        await jane_shop.search("bluetooth speaker")
        assert (await bob_socket.next_alert()) is not None
        # A new product: a product alert for each, shown live (Jane's seen mark moves).
        put = httpx.put(
            f"{shop.url}/api/admin/products/ER-9001",
            json=COLORSOFT,
            headers=ADMIN,
            timeout=30,
        )
        assert put.status_code == 200, put.text
        assert put.json()["alerts"] == 2
        await next_of(jane_socket, "product_alert")
        await next_of(bob_socket, "product_alert")
        # Stored, not merely buffered: the erasure is to take them out of the index.
        await wait_until(
            lambda: logged_naming(shop, "recipients", jane), what="Jane's alert logged"
        )
        await wait_until(lambda: logged_naming(shop, "excluded", jane), what="Jane excluded")
        needles = [jane, customer, *(watch["id"] for watch in jane_watches)]
        assert await traces.in_elasticsearch(shop.settings, needles), "nothing to erase?"
        if shop.settings.redis_url is not None:
            assert await traces.in_redis(shop.settings.redis_url, needles), "nothing in Redis?"

        answer = erase(shop, customer)
        assert answer.status_code == 200, answer.text
        erased = answer.json()["erased"]
        assert erased["watches"] == 2
        assert erased["alerts"] == 2  # the sending to both, the one that excluded her
        assert erased["product_alerts"] == 1
        assert erased["seen_marks"] == 1
        assert erased["product_notices"] == 1
        assert erased["sockets"] == 1
        # Her socket is closed, with the code that says why.
        assert await jane_socket.closed_by_server() == (ACCOUNT_ERASED, "account erased")

        # Nothing of her in any index: not her id, not the shop's id for her, not her
        # watches' ids (the product notices named them).
        assert await traces.in_elasticsearch(shop.settings, needles) == []
        if shop.settings.redis_url is not None:
            # Her socket's presence goes as it closes; her inbox entries at the next beat.
            async def redis_clean() -> bool:
                assert shop.settings.redis_url is not None
                return not await traces.in_redis(shop.settings.redis_url, needles)

            await wait_until(redis_clean, what="no trace of her in Redis")

        # Bob keeps all of his: his watch, his alerts, his product alert, his open socket.
        listed = (await bob_shop.http.get("/api/watches")).json()["watches"]
        assert bob_watch["id"] in [watch["id"] for watch in listed]
        exported = (await bob_shop.http.get("/api/me/export")).json()
        assert [alert["watch"]["id"] for alert in exported["alerts"]] == [bob_watch["id"]]
        assert [alert["product"]["sku"] for alert in exported["product_alerts"]] == ["ER-9001"]
        assert exported["seen_mark"] is not None
        assert await logged_naming(shop, "recipients", bob) == 1
        assert jane not in json.dumps(await bob_socket.messages_before_pong())  # open
        # The stored sending to both is Bob's alone now, and replays to him as before.
        replay = await bob_shop.connect(after=0)
        replayed = [replay.hello, *await replay.messages_before_pong()]
        alerts = [message for message in replayed if message["type"] == "alert"]
        assert bob_watch["id"] in [alert["watch"]["id"] for alert in alerts]
        assert jane not in json.dumps(replayed)

    # Erasing again, or an account that never was: nothing left, zeros.
    for again in (customer, f"nobody-{uuid.uuid4().hex}"):
        answer = erase(shop, again)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["erased"].values()) == {0}
    # The logs never named her, by either id (the access log shows the route, not the path).
    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert not [line for line in lines if customer in line or jane in line]
    assert any("/api/admin/accounts/{customer_id}" in line for line in lines)


async def test_an_erased_account_may_come_back_empty(shop: Shop) -> None:
    customer = f"returning-{uuid.uuid4().hex[:8]}"
    async with Shopper(shop.url, token=shop_token(customer)) as before:
        await before.watch("kindle")
    assert erase(shop, customer).status_code == 200
    async with Shopper(shop.url, token=shop_token(customer)) as after:
        socket = await after.connect()
        assert [watch for watch in socket.hello["watches"] if not watch["is_default"]] == []
        assert (await after.watch("kindle"))["terms"] == "kindle"


def test_erasure_needs_the_admin_token_and_a_customer_id_a_token_could_carry(shop: Shop) -> None:
    for headers in ({}, {"Authorization": "Bearer not-the-admin-token"}):
        refused = erase(shop, "someone", headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
    for customer in ("evil\u202eadmin", "x" * 256):
        answer = erase(shop, customer)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_customer_id"
    # Slashes and other reserved characters are part of the id, sent percent-encoded.
    assert erase(shop, "shop/customer?42#a b").status_code == 200
