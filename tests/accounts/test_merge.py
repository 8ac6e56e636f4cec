"""`POST /api/me/merge` on a real server, as the SDK sends it at login (the shop's token and
the anonymous session's cookie together): the session's own watches move into the account,
duplicates dropped, the account's cap kept (what is over it stays with the session), once;
nothing else of the session becomes the account's."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from percolert.web.middleware.sessions import COOKIE_NAME
from tests.accounts.conftest import Shop
from tests.accounts.tokens import bearer, shop_token
from tests.shoppers import Shopper, Socket

pytestmark = pytest.mark.anyio


async def own_watches(shopper: Shopper) -> list[dict[str, Any]]:
    listed = (await shopper.http.get("/api/watches")).json()["watches"]
    return [watch for watch in listed if not watch["is_default"]]


async def next_of(socket: Socket, kind: str) -> dict[str, Any]:
    while (message := await socket.receive()) is not None:
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} came")


async def merge(shopper: Shopper, token: str) -> dict[str, Any]:
    """The SDK's request at login: the session's cookie (the shopper's) and the token."""
    response = await shopper.http.post("/api/me/merge", json={}, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert "set-cookie" not in response.headers
    report: dict[str, Any] = response.json()
    return report


@pytest.mark.parametrize("shop", [{"max_watches_per_user": 3}], indirect=True)
async def test_login_moves_the_sessions_watches_into_the_account(shop: Shop) -> None:
    token = shop_token(f"dana-{uuid.uuid4().hex[:8]}")
    async with (
        Shopper(shop.url) as browser,
        Shopper(shop.url, token=token) as account,
        Shopper(shop.url) as searcher,
    ):
        # The account, on another device: two watches of three allowed.
        await account.watch("kindle")
        tablet = await account.watch("tablet")
        # The browser, anonymous: three watches, one of them the account's "kindle" again
        # (in other words: the same meaning), and an alert of its own.
        browser_socket = await browser.connect()
        oldest = await browser.watch("Kindle ", notify="searches")
        moving = await browser.watch("noise cancelling headphones", max_price=200)
        staying = await browser.watch("bluetooth speaker")
        await searcher.search("bluetooth speaker")
        session_alert = await browser_socket.next_alert()
        assert session_alert is not None
        account_socket = await account.connect()

        report = await merge(browser, token)
        # Oldest first: the duplicate goes, the headphones fill the account's last place,
        # the speaker is over the cap and stays with the session.
        assert report == {"moved": 1, "duplicates": 1, "over_cap": 1, "refused": 0}
        accounts = await own_watches(account)
        assert sorted(watch["terms"] for watch in accounts) == [
            "kindle",
            "noise cancelling headphones",
            "tablet",
        ]
        moved = next(w for w in accounts if w["terms"] == "noise cancelling headphones")
        assert moved["max_price"] == 200
        assert moved["notify"] == "both"
        assert tablet["id"] in [watch["id"] for watch in accounts]
        assert [watch["id"] for watch in await own_watches(browser)] == [staying["id"]]
        assert oldest["id"] not in json.dumps(accounts)
        assert moving["id"] not in json.dumps(accounts)  # the account's own now: a new id
        # Both hear of it.
        changed = await next_of(account_socket, "watches_changed")
        assert moved["id"] in [watch["id"] for watch in changed["watches"]]
        changed = await next_of(browser_socket, "watches_changed")
        assert [w["id"] for w in changed["watches"] if not w["is_default"]] == [staying["id"]]

        # Once: a second merge moves nothing (the speaker is still over the cap).
        assert await merge(browser, token) == {
            "moved": 0,
            "duplicates": 0,
            "over_cap": 1,
            "refused": 0,
        }
        assert len(await own_watches(account)) == 3

        # The session's alerts stay the session's: the account's export, greeting and
        # replay hold none of them.
        exported = (await account.http.get("/api/me/export")).json()
        assert exported["alerts"] == []
        replay = await account.connect(after=0)
        received = [replay.hello, *await replay.messages_before_pong()]
        assert session_alert["id"] not in json.dumps(received)


async def test_a_merge_needs_the_token_and_is_a_no_op_without_a_session(shop: Shop) -> None:
    token = shop_token(f"erin-{uuid.uuid4().hex[:8]}")
    async with Shopper(shop.url) as browser, Shopper(shop.url, token=token) as account:
        await browser.watch("kindle")
        # The cookie alone is no account.
        refused = await browser.http.post("/api/me/merge", json={})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "account_required"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        # The token alone has no session to move anything from.
        alone = await account.http.post("/api/me/merge", json={})
        assert alone.status_code == 200, alone.text
        assert alone.json() == {"moved": 0, "duplicates": 0, "over_cap": 0, "refused": 0}
        assert await own_watches(account) == []
        # A bad token is refused before anything moves.
        bad = await browser.http.post(
            "/api/me/merge", json={}, headers=bearer(shop_token("x", expires_in=-120))
        )
        assert bad.status_code == 401
        assert len(await own_watches(browser)) == 1
        assert COOKIE_NAME in browser.http.cookies
