"""The admin's demand page (/admin) in a real browser over a real server: demand seeded
through the shoppers' API shows in its tables; a wrong token is refused; a search that found
nothing is made a default watch from the page, and a default watch retired; hostile search
texts are shown as text; it works under the security policy and on a phone. Screenshots go
to artifacts/screenshots/ (git-ignored)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from percolert.core.settings import Settings
from tests.conftest import (
    SAMPLE_CATALOG,
    delete_indices,
    make_settings,
    on_test_broker,
    prepare_indices,
)
from tests.servers import run_server
from tests.waiting import wait_until_sync
from tests.web.test_browser import CHROMIUM_ARGS, SCREENSHOTS, chromium_path

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Searched that often by shoppers before the page is opened (none of them with a watch on it).
SEARCHES = {"kindle": 5, "headphones": 3, "airpods": 2}
NOTHING = "zzqx unobtainium"  # finds nothing in the sample catalog
NOTHING_TIMES = 4
SKU = "AU-0004"  # Sony WH-CH720N, 149.99, in stock until the test sells it out
WAITED_PRICES = (119.0, 129.0)
HOSTILE = '<img src=x onerror="window.__xss=1">'
# Expectations on the page: the API answers at once, the page polls every 5 s and 30 s.
SLOW = 20_000


@pytest.fixture(scope="module")
def admin_settings(elasticsearch_url: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A deployment of its own: these tests sell a product out and add default watches,
    which every shopper of the deployment would see. Insights are read afresh every time."""
    settings = on_test_broker(
        make_settings(
            elasticsearch_url,
            admin_token=TOKEN,
            coalesce_seconds=0.0,
            insights_cache_seconds=0.0,
        ),
        request,
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture(scope="module")
def server(admin_settings: Settings) -> Iterator[str]:
    with run_server(admin_settings) as url:
        yield url


@pytest.fixture(scope="module")
def browser(admin_settings: Settings) -> Iterator[Browser]:
    # Playwright runs an event loop in this thread while it is open: the deployment is set
    # up (and torn down, with asyncio.run) outside it, hence before (and after) the browser.
    del admin_settings
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def shopper(url: str) -> Iterator[httpx.Client]:
    """A shopper with a session of its own (its cookie kept by the client)."""
    with httpx.Client(base_url=url, timeout=15) as client:
        client.post("/api/session", json={}).raise_for_status()
        yield client


def search(client: httpx.Client, text: str) -> int:
    """Search as the shop's page does; how many products it found."""
    response = client.get("/api/search", params={"q": text})
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


def insights(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/admin/insights", params={"since": "24h"}, headers=AUTH)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def counted(rows: list[dict[str, Any]], text: str) -> int | None:
    return next((row["count"] for row in rows if row["text"] == text), None)


def sell_out(url: str, sku: str) -> None:
    line = next(
        line for line in SAMPLE_CATALOG.read_text().splitlines() if f'"sku": "{sku}"' in line
    )
    product = {**json.loads(line), "in_stock": False}
    response = httpx.put(
        f"{url}/api/admin/products/{sku}",
        content=json.dumps(product),
        headers={"Content-Type": "application/json", **AUTH},
        timeout=15,
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def seeded(server: str) -> str:
    """Known demand, made through the shoppers' API and the admin API; returns once the
    admin API's insights show all of it (the search log is written once a second)."""
    with ExitStack() as shoppers:
        watcher, searcher = (
            shoppers.enter_context(shopper(server)),
            shoppers.enter_context(shopper(server)),
        )
        waiting = [shoppers.enter_context(shopper(server)) for _ in range(3)]
        # A word watch of a shopper's own: a watched term, and alerts from others' searches.
        response = watcher.post("/api/watches", json={"terms": "kindle"})
        assert response.status_code == 201, response.text
        watched = response.json()["id"]
        for text, times in SEARCHES.items():
            for _ in range(times):
                assert search(searcher, text) > 0
        for _ in range(NOTHING_TIMES):
            assert search(searcher, NOTHING) == 0
        # Two shoppers wait for the product at a price of theirs; it sells out; a third
        # then waits for it at any price.
        for client, price in zip(waiting, WAITED_PRICES, strict=False):
            response = client.post("/api/watches", json={"sku": SKU, "max_price": price})
            assert response.status_code == 201, response.text
        sell_out(server, SKU)
        response = waiting[2].post("/api/watches", json={"sku": SKU})
        assert response.status_code == 201, response.text
        # The watcher followed one of its alerts to the shop (as the SDK reports it).
        response = watcher.post("/api/alerts/visits", json={"watch_id": watched})
        assert response.status_code == 204, response.text

    def all_shown() -> bool:
        document = insights(server)
        queue = {row["sku"]: row for row in document["restock_queue"]}
        return (
            all(counted(document["top_searches"], t) == n for t, n in SEARCHES.items())
            and counted(document["no_result_searches"], NOTHING) == NOTHING_TIMES
            and SKU in queue
            and queue[SKU]["watchers"] == 3
            and queue[SKU]["with_price"] == 2
            # Alerts are counted by watch and logged every few seconds.
            and [
                (row["label"], row["alerts"], row["visits"]) for row in document["alerts_per_watch"]
            ]
            == [("kindle", SEARCHES["kindle"], 1)]
        )

    wait_until_sync(all_shown, timeout=30, what="the seeded demand in the insights")
    return server


def admin_context(browser: Browser, width: int = 1280, height: int = 900) -> BrowserContext:
    """A browser of its own, noting every breach of the security policy."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (event) => window.__violations.push(event.violatedDirective));"
    )
    return context


def sign_in(page: Page, url: str) -> None:
    page.goto(f"{url}/admin")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#admin-token", TOKEN)
    page.click("#admin-login")
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()


def row(page: Page, table: str, first: str) -> Locator:
    """The row of table#`table` whose first cell is exactly `first`."""
    return page.locator(f"#{table} tbody tr").filter(
        has=page.locator("td:first-child").get_by_text(first, exact=True)
    )


def cells(locator: Locator) -> list[str]:
    return [text.strip() for text in locator.locator("td").all_inner_texts()]


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_wrong_token_is_refused_and_the_right_one_signs_in_and_out(
    browser: Browser, server: str
) -> None:
    context = admin_context(browser)
    try:
        page = context.new_page()
        page.goto(f"{server}/admin")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#dashboard")).to_be_hidden()
        page.fill("#admin-token", "not-the-token-0123456789")
        page.click("#admin-login")
        expect(page.locator("#login-error")).to_have_text("that is not the admin token")
        expect(page.locator("#dashboard")).to_be_hidden()
        assert context.request.get(f"{server}/admin/api/session").status == 401
        page.fill("#admin-token", TOKEN)
        page.click("#admin-login")
        expect(page.locator("#dashboard")).to_be_visible()
        expect(page.locator("#login-error")).to_have_text("")
        cookie = next(c for c in context.cookies() if c["name"] == "percolert_admin")
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # no script may read it
        # Reloaded, the page finds its session and signs in by itself.
        page.reload()
        expect(page.locator("#top-searches")).to_have_attribute("data-loaded", "true")
        page.click("#admin-logout")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#dashboard")).to_be_hidden()
        assert context.request.get(f"{server}/admin/api/session").status == 401
        assert page.evaluate("window.__violations") == []
    finally:
        context.close()


def test_the_tables_show_the_seeded_demand(browser: Browser, seeded: str) -> None:
    context = admin_context(browser)
    try:
        page = context.new_page()
        sign_in(page, seeded)
        expect(page.locator("#window")).to_have_value("24h")
        kindle = row(page, "top-searches", "kindle")
        expect(kindle.locator("td").nth(1)).to_have_text("5")
        assert cells(kindle)[2:4] == ["0", "new"]  # nothing the day before
        expect(row(page, "top-searches", "headphones").locator("td").nth(1)).to_have_text("3")
        nothing = row(page, "no-result-searches", NOTHING)
        expect(nothing.locator("td").nth(1)).to_have_text(str(NOTHING_TIMES))
        expect(nothing.locator("button.promote")).to_have_text("Make default watch")
        queued = row(page, "restock-queue", SKU)
        expect(queued.locator("td").nth(3)).to_have_text("3")  # waiting
        assert cells(queued)[1:] == [
            "Sony WH-CH720N Noise Cancelling Headphones",
            "149.99",
            "3",
            "2",  # with a price
            "119.00",
            "124.00",
            "129.00",
        ]
        assert cells(row(page, "watched-products", SKU))[2:] == ["149.99", "no", "3"]
        expect(row(page, "watched-terms", "kindle").locator("td").nth(1)).to_have_text("1")
        # Its alerts reached no socket (nobody was connected): no visit rate to give.
        alerted = row(page, "alerts-per-watch", "kindle")
        expect(alerted.locator("td").nth(2)).to_have_text("5")
        assert cells(alerted) == ["kindle", "no", "5", "0", "1", "—"]
        total = NOTHING_TIMES + sum(SEARCHES.values())
        expect(page.locator("#totals .stat[data-key=searches] .value")).to_have_text(str(total))
        expect(page.locator("#totals .stat[data-key=no_results] .value")).to_have_text(
            str(NOTHING_TIMES)
        )
        # No shopper here has an account: nothing went off-site, on either channel.
        for channel in ("webhook", "email"):
            assert cells(row(page, "offsite", channel)) == [channel, "0", "0", "0", "0"]
        # Every table is loaded; those with nothing to show say so.
        for table in page.locator("#dashboard table.data").all():
            expect(table).to_have_attribute("data-loaded", "true")
        expect(page.locator("#default-watches tbody tr.empty")).to_have_text("nothing yet")
        # The charts are drawn (the vendored uPlot runs under the policy), and the live
        # figures come in: this one instance, reporting every few seconds.
        expect(page.locator("#timeline-chart canvas")).to_have_count(1)
        expect(page.locator("#live-instances")).to_have_text("1", timeout=SLOW)
        expect(page.locator("#live-chart canvas")).to_have_count(1)
        # Another window asks again: the last hour holds the same searches.
        page.select_option("#window", label="Last hour")
        expect(page.locator("#status")).to_contain_text("last hour")
        expect(row(page, "top-searches", "kindle").locator("td").nth(1)).to_have_text("5")
        assert page.evaluate("window.__violations") == []
    finally:
        context.close()


def test_a_search_that_found_nothing_becomes_a_default_watch_and_is_retired(
    browser: Browser, seeded: str
) -> None:
    context = admin_context(browser)
    try:
        page = context.new_page()
        sign_in(page, seeded)
        nothing = row(page, "no-result-searches", NOTHING)
        nothing.locator("button.promote").click()
        expect(page.locator("#notice")).to_have_text(f'Default watch "{NOTHING}" added')
        # Every shopper now has it, as a default watch.
        with shopper(seeded) as fresh:
            listed = fresh.get("/api/watches").json()["watches"]
        assert [(w["terms"], w["is_default"]) for w in listed] == [(NOTHING, True)]
        # The page lists it: new, it reached nobody yet, and may be retired.
        default = row(page, "default-watches", NOTHING)
        expect(default.locator(".unused")).to_have_text("reaches nobody")
        assert cells(default)[2:5] == ["0", "0", "0"]
        # The live figures are read again every 5 s: two readings draw a line.
        expect(page.locator("#live-chart")).to_have_attribute("data-readings", "2", timeout=SLOW)
        expect(page.locator("#live-instances")).to_have_text("1", timeout=SLOW)
        screenshot(page, "admin-page")
        page.once("dialog", lambda dialog: dialog.accept())
        default.locator("button.retire").click()
        expect(page.locator("#notice")).to_have_text(f'Default watch "{NOTHING}" retired')
        expect(page.locator("#default-watches tbody tr.empty")).to_have_text("nothing yet")
        with shopper(seeded) as fresh:
            assert fresh.get("/api/watches").json()["watches"] == []
        assert page.evaluate("window.__violations") == []
    finally:
        context.close()


def test_a_write_without_the_pages_csrf_token_is_refused(browser: Browser, seeded: str) -> None:
    """The cookie alone writes nothing: a change needs the session's X-CSRF-Token."""
    context = admin_context(browser)
    try:
        page = context.new_page()
        sign_in(page, seeded)
        refused = context.request.post(
            f"{seeded}/admin/api/default-watches",
            data=json.dumps({"text": "planted"}),
            headers={"Content-Type": "application/json", "Origin": seeded},
        )
        assert refused.status == 403
        assert refused.json()["error"]["code"] == "csrf"
        assert insights(seeded)["default_watches"] == []
    finally:
        context.close()


def test_a_hostile_search_text_is_shown_as_text(browser: Browser, seeded: str) -> None:
    with shopper(seeded) as client:
        search(client, HOSTILE)
    wait_until_sync(
        lambda: counted(insights(seeded)["top_searches"], HOSTILE) == 1,
        timeout=30,
        what="the hostile search in the insights",
    )
    context = admin_context(browser)
    try:
        page = context.new_page()
        sign_in(page, seeded)
        expect(row(page, "top-searches", HOSTILE).locator("td").nth(1)).to_have_text("1")
        assert page.locator("#dashboard table img").count() == 0
        assert page.evaluate("window.__xss") is None
        assert page.evaluate("window.__violations") == []
        screenshot(page, "admin-page-hostile-text")
    finally:
        context.close()


def test_the_page_reads_on_a_phone(browser: Browser, seeded: str) -> None:
    context = admin_context(browser, 390, 844)
    try:
        page = context.new_page()
        sign_in(page, seeded)
        expect(row(page, "top-searches", "kindle").locator("td").nth(1)).to_have_text("5")
        # The page does not scroll sideways: its wide tables do, each in its own box.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        wrap = page.locator("#restock-queue").locator("xpath=..")
        assert wrap.evaluate("(box) => box.scrollWidth > box.clientWidth")
        assert re.fullmatch(
            r"auto|scroll", wrap.evaluate("(box) => getComputedStyle(box).overflowX")
        )
        screenshot(page, "admin-page-phone")
    finally:
        context.close()
