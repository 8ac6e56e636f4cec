"""The demand view on a real server over a real node: searches and watches seeded with known
counts come back in the admin API's tables and in `percolert insights --json`; the search log
names no shopper; a promoted search alerts on the next matching search; the page's API is
behind its cookie and CSRF token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from percolert.accounts.ids import account_user_id
from percolert.core.messages import Watch
from percolert.core.settings import Settings
from percolert.engine import es
from percolert.insights import searchlog
from percolert.insights.activity import logged_watch
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.accounts.tokens import SHOP_SECRET, shop_token
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices, run_cli
from tests.servers import run_server
from tests.shoppers import Shopper
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-the-demand-tests-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOTHING = "zzqx unobtainium"
SOLD_OUT = "ER-0002"


@pytest.fixture(scope="module")
def demand_settings(elasticsearch_url: str) -> Iterator[Settings]:
    settings = make_settings(
        elasticsearch_url,
        admin_token=TOKEN,
        jwt_secret=SHOP_SECRET,
        coalesce_seconds=0.0,
        insights_cache_seconds=0.0,
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture(scope="module")
def server(demand_settings: Settings) -> Iterator[str]:
    with run_server(demand_settings) as url:
        yield url


async def insights(url: str, since: str = "1h") -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=15) as client:
        response = await client.get("/api/admin/insights", params={"since": since})
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found


def by(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in rows}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def seeded(server: str) -> dict[str, Any]:
    """Searches with known counts by several shoppers (one a shop's customer), and three
    shoppers waiting for a product that then sells out (two at a price)."""
    users: list[str] = []
    async with (
        Shopper(server) as first,
        Shopper(server) as second,
        Shopper(server, token=shop_token("customer-77", email="c77@example.com")) as customer,
    ):
        for shopper, texts in [
            (first, ["kindle"] * 3 + ["headphones"] * 2 + [NOTHING] * 2),
            (second, ["Kindle  "] * 2 + ["HEADPHONES"] + [NOTHING]),
            (customer, [NOTHING, "call me on +1 555 123 4567 kindle"]),
        ]:
            for text in texts:
                await shopper.search(text)
        answer = await first.search(NOTHING)  # five of it in all
        assert answer.json()["total"] == 0
        for shopper, price in [(first, 150.0), (second, 120.0), (customer, None)]:
            spec: dict[str, Any] = {"sku": SOLD_OUT}
            if price is not None:
                spec["max_price"] = price
            response = await shopper.http.post("/api/watches", json=spec)
            assert response.status_code == 201, response.text
        await first.watch("Ereader cover")
        await second.watch("ereader  COVER")
        await customer.watch("ereader stand")
        users = [first.cookie.split(".")[0], second.cookie.split(".")[0]]
    product = json.loads(
        next(line for line in SAMPLE_CATALOG.read_text().splitlines() if SOLD_OUT in line)
    )
    async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=15) as admin:
        response = await admin.put(
            f"/api/admin/products/{SOLD_OUT}", json={**product, "in_stock": False}
        )
        assert response.status_code == 200, response.text
    return {"users": users, "subject": "customer-77", "product": product}


async def test_the_tables_count_what_was_seeded(
    server: str, demand_settings: Settings, seeded: dict[str, Any]
) -> None:
    async def counted() -> dict[str, Any] | None:
        found = await insights(server)
        top = by(found["top_searches"], "text")
        ready = top.get("kindle", {}).get("count") == 5 and top.get(NOTHING, {}).get("count") == 5
        return found if ready and found["restock_queue"] else None

    found = await eventually(counted, timeout=20, what="the seeded counts")
    top = by(found["top_searches"], "text")
    # Normalised: "Kindle  " and "kindle" count together, as do "HEADPHONES" and "headphones".
    assert top["kindle"]["count"] == 5
    assert top["kindle"]["results"] > 0
    assert top["headphones"]["count"] == 3
    # Redacted: the phone number never reaches the log.
    assert "call me on [number] kindle" in top
    assert not any("555" in text for text in top)
    assert next(row["text"] for row in found["no_result_searches"]) == NOTHING
    assert by(found["no_result_searches"], "text")[NOTHING] == {
        "text": NOTHING,
        "count": 5,
        "previous": 0,
        "results": 0,
    }
    assert found["totals"]["searches"] == 5 + 3 + 5 + 1
    assert found["totals"]["no_results"] == 5 + sum(
        1 for row in found["no_result_searches"] if row["text"] != NOTHING
    )
    [waiting] = [row for row in found["restock_queue"] if row["sku"] == SOLD_OUT]
    assert waiting["watchers"] == 3
    assert waiting["with_price"] == 2
    assert (waiting["price_min"], waiting["price_max"]) == (120.0, 150.0)
    assert waiting["in_stock"] is False
    assert waiting["name"] == seeded["product"]["product_name"]
    assert by(found["watched_products"], "sku")[SOLD_OUT]["watchers"] == 3
    terms = by(found["watched_terms"], "term")
    # Counted together whatever their case and spacing.
    assert terms["ereader cover"]["watches"] == 2
    assert terms["ereader stand"]["watches"] == 1

    # The CLI prints the same tables from the same aggregations.
    result = await asyncio.to_thread(
        run_cli, demand_settings, "insights", "--since", "1h", "--json"
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert by(printed["top_searches"], "text")["kindle"]["count"] == 5
    assert by(printed["no_result_searches"], "text")[NOTHING]["count"] == 5
    assert by(printed["restock_queue"], "sku")[SOLD_OUT]["with_price"] == 2
    text = await asyncio.to_thread(run_cli, demand_settings, "insights", "--since", "1h")
    assert "Searches with no results" in text.stdout
    assert NOTHING in text.stdout


async def test_the_search_log_names_no_shopper(
    server: str, demand_settings: Settings, seeded: dict[str, Any]
) -> None:
    await eventually(lambda: _searches(server), timeout=20, what="searches logged")
    client = es.create_client(demand_settings)
    try:
        await client.indices.refresh(index=searchlog.pattern(demand_settings))
        response = await client.search(
            index=searchlog.pattern(demand_settings), size=10_000, query={"match_all": {}}
        )
    finally:
        await client.close()
    documents = [hit["_source"] for hit in response.body["hits"]["hits"]]
    assert {doc["kind"] for doc in documents} >= {"search", "presence"}
    allowed = {
        "kind",
        "at",
        "text",
        "results",
        "count",
        "watch_id",
        "label",
        "default",
        "alerts",
        "shoppers",
        "sockets",
        "instance",
    }
    assert set().union(*documents) <= allowed
    everything = json.dumps(documents)
    identities = [
        *seeded["users"],
        seeded["subject"],
        account_user_id(seeded["subject"]),
        "c77@example.com",
    ]
    for identity in identities:
        assert identity not in everything


async def _searches(server: str) -> int | None:
    return (await insights(server))["totals"]["searches"] or None


async def test_a_promoted_search_alerts_on_the_next_matching_search(
    server: str, seeded: dict[str, Any]
) -> None:
    async with Shopper(server) as watcher, Shopper(server) as searcher, AdminPage(server) as page:
        socket = await watcher.connect()
        promoted = await page.request("POST", "default-watches", {"text": NOTHING})
        assert promoted.status_code == 201, promoted.text
        watch = promoted.json()
        assert watch["is_default"]
        assert watch["terms"] == NOTHING
        await searcher.search(NOTHING)
        alert = await socket.next_alert(timeout=10)
        assert alert is not None
        assert alert["watch"]["id"] == watch["id"]

        async def reached() -> dict[str, Any] | None:
            rows = by((await insights(server))["default_watches"], "watch_id")
            row = rows.get(watch["id"])
            return row if row is not None and row["reach"] >= 1 else None

        row = await eventually(reached, timeout=20, what="the default watch's reach")
        assert (row["alerts"], row["reach"]) == (1, 1)
        assert by((await insights(server))["alerts_per_watch"], "watch_id")[watch["id"]]["default"]

        # Retired, it is gone from the view and alerts nobody.
        retired = await page.request("DELETE", f"default-watches/{watch['id']}")
        assert retired.status_code == 204, retired.text
        assert watch["id"] not in by((await insights(server))["default_watches"], "watch_id")
        again = await page.request("DELETE", f"default-watches/{watch['id']}")
        assert again.status_code == 404


class AdminPage:
    """The admin page's API as its script uses it: log in with the token, then the cookie
    and the CSRF token it was given."""

    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=15)
        self.csrf = ""

    async def __aenter__(self) -> AdminPage:
        response = await self.http.post("/admin/api/session", json={"token": TOKEN})
        assert response.status_code == 204, response.text
        session = await self.http.get("/admin/api/session")
        assert session.status_code == 200, session.text
        self.csrf = session.json()["csrf"]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, body: object = None) -> httpx.Response:
        return await self.http.request(
            method,
            f"/admin/api/{path}",
            json=body,
            headers={"X-CSRF-Token": self.csrf},
        )


async def test_the_page_api_is_behind_its_cookie_and_csrf_token(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=15) as anonymous:
        assert (await anonymous.get("/admin")).status_code == 200  # the page: a login form
        for method, path in [("GET", "insights"), ("GET", "live"), ("GET", "session")]:
            refused = await anonymous.request(method, f"/admin/api/{path}")
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "unauthorized"
        wrong = await anonymous.post("/admin/api/session", json={"token": TOKEN + "x"})
        assert wrong.status_code == 401
        # The bearer token is the admin API's, not a key to the page's cookie-only API.
        assert (await anonymous.get("/admin/api/insights", headers=AUTH)).status_code == 401
    async with AdminPage(server) as page:
        cookie = page.http.cookies.jar
        [admin_cookie] = [c for c in cookie if c.name == "percolert_admin"]
        assert admin_cookie.path == "/admin"
        login = await page.http.post("/admin/api/session", json={"token": TOKEN})
        header = login.headers["set-cookie"]
        assert "HttpOnly" in header
        assert "SameSite=Strict" in header
        assert COOKIE_NAME not in login.headers.get("set-cookie", "").split("=")[0]
        # A new login is a new session: the old CSRF token no longer writes.
        stale = await page.request("POST", "default-watches", {"text": "lamp"})
        assert stale.status_code == 403
        page.csrf = (await page.http.get("/admin/api/session")).json()["csrf"]
        assert (await page.request("GET", "insights?since=24h")).status_code == 200
        assert (await page.request("GET", "insights?since=1y")).status_code == 400
        # A write without the CSRF token, or with another session's, is refused.
        bare = await page.http.post("/admin/api/default-watches", json={"text": "lamp"})
        assert (bare.status_code, bare.json()["error"]["code"]) == (403, "csrf")
        forged = await page.http.post(
            "/admin/api/default-watches", json={"text": "lamp"}, headers={"X-CSRF-Token": "0" * 64}
        )
        assert forged.status_code == 403
        # From another site's page: refused at the edge, whatever it carries.
        cross = await page.http.post(
            "/admin/api/default-watches",
            json={"text": "lamp"},
            headers={"X-CSRF-Token": page.csrf, "Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        form = await page.http.post(
            "/admin/api/default-watches",
            content=b"text=lamp",
            headers={
                "X-CSRF-Token": page.csrf,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert form.status_code == 415
        # The page's answers, and the admin API's, are never cached.
        read = await page.http.get("/admin/api/insights?since=1h")
        assert read.headers["cache-control"] == "no-store"
        async with httpx.AsyncClient(base_url=server, headers=AUTH) as admin:
            assert (await admin.get("/api/admin/live")).headers["cache-control"] == "no-store"
        shown = await page.http.get("/admin")
        assert shown.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
        # Logged out, the cookie is gone; a copy of it kept elsewhere is refused too.
        [kept] = [c.value or "" for c in page.http.cookies.jar if c.name == "percolert_admin"]
        assert (await page.request("POST", "logout", {})).status_code == 204
        assert (await page.http.get("/admin/api/insights")).status_code == 401
        async with httpx.AsyncClient(base_url=server, cookies={"percolert_admin": kept}) as copy:
            assert (await copy.get("/admin/api/insights")).status_code == 401


async def test_a_product_alert_shown_live_counts_for_its_watch(server: str) -> None:
    product = json.loads(
        next(line for line in SAMPLE_CATALOG.read_text().splitlines() if '"ER-0001"' in line)
    )
    async with Shopper(server) as owner:
        response = await owner.http.post("/api/watches", json={"sku": "ER-0001"})
        assert response.status_code == 201, response.text
        # Counted under its words, not its id (which leads to its owner).
        watch_id, _ = logged_watch(msgspec.convert(response.json(), Watch), False)
        assert watch_id != response.json()["id"]
        socket = await owner.connect()
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=15) as admin:
            cheaper = {**product, "price": round(product["price"] * 0.8, 2)}
            put = await admin.put("/api/admin/products/ER-0001", json=cheaper)
            assert put.status_code == 200, put.text
        while (message := await socket.receive(timeout=10)) is not None:
            if message["type"] == "product_alert":
                break
        assert message is not None

        async def counted() -> dict[str, Any] | None:
            row: dict[str, Any] | None = by(
                (await insights(server))["alerts_per_watch"], "watch_id"
            ).get(watch_id)
            return row

        row = await eventually(counted, timeout=20, what="the product alert's count")
        assert (row["alerts"], row["reach"], row["default"]) == (1, 1, False)
