"""The example shop on its own origin, in a real browser: its own login, tokens from its
backend (RS256, its JWKS read by Percolert), the SDK's components embedded; a customer's
watches and alerts on two browsers at once, another customer's apart, anonymous watches moved
in at login, and a token that expires on an open socket."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import httpx
import msgspec
import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserContext, Locator, Page, WebSocket, expect

from percolert.core.settings import Settings
from tests.servers import free_port, run_server, serving
from tests.web.test_browser import ROOT, browser, screenshot

__all__ = ["browser"]  # the browser fixture, shared with the page's other tests

SHOP_SCRIPT = ROOT / "examples" / "shop" / "shop.py"
ADMIN_TOKEN = "admin-token-of-the-shop-tests"


def shop_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_shop", SHOP_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def running_shop(port: int, percolert: str, token_seconds: float) -> Iterator[str]:
    app = shop_module().create_shop(percolert, token_seconds=token_seconds)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    with serving(server, port) as url:
        yield url


class Site(msgspec.Struct):
    shop: str
    percolert: str


@contextmanager
def shop_and_percolert(settings: Settings, token_seconds: float = 600.0) -> Iterator[Site]:
    shop_port, percolert_port = free_port(), free_port()
    shop = f"http://127.0.0.1:{shop_port}"
    percolert = f"http://127.0.0.1:{percolert_port}"
    configured = msgspec.structs.replace(
        settings,
        jwks_url=f"{shop}/.well-known/jwks.json",
        jwks_allow_http=True,
        jwt_audience="percolert",
        jwt_leeway_seconds=0,
        token_refresh_ahead_seconds=2,
        allowed_origins=(shop,),
        coalesce_seconds=0.0,
        admin_token=ADMIN_TOKEN,
    )
    with (
        running_shop(shop_port, percolert, token_seconds),
        run_server(configured, percolert_port),
    ):
        yield Site(shop=shop, percolert=percolert)


@pytest.fixture(scope="module")
def site(catalog_settings: Settings) -> Iterator[Site]:
    with shop_and_percolert(catalog_settings) as running:
        yield running


def visit(browser: Browser, site: Site, customer: str | None) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.goto(site.shop)
    if customer is not None:
        log_in(page, customer)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    return context, page


def customer_named(name: str) -> str:
    """A customer of this test alone (the catalog's indices are shared across the suite,
    and other tests' customers may have the same first names)."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


def log_in(page: Page, customer: str) -> None:
    page.fill("#name", customer)
    page.click("#login button[type=submit]")
    expect(page.locator("#customer")).to_have_text(customer)


def search_and_watch(page: Page, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")
    expect(page.locator("#status")).to_contain_text("result")
    page.locator("#notify-search button").click()
    expect(page.locator("#watches .terms", has_text=text)).to_be_visible()


def someone_searches(site: Site, text: str) -> None:
    """An anonymous shopper elsewhere searches (Playwright's loop runs in this thread: a
    synchronous client)."""
    with httpx.Client(base_url=site.percolert, timeout=15) as stranger:
        stranger.post("/api/session", json={}).raise_for_status()
        stranger.get("/api/search", params={"q": text}).raise_for_status()


def alert_items(page: Page, text: str) -> Locator:
    return page.locator("#alerts [part~=item]", has_text=text)


def test_one_customer_on_two_browsers_another_apart(browser: Browser, site: Site) -> None:
    alice = customer_named("alice")
    laptop_context, laptop = visit(browser, site, alice)
    phone_context, phone = visit(browser, site, alice)
    bob_context, bob = visit(browser, site, customer_named("bob"))
    try:
        # Words of this test's own (other tests' default watches may watch "kindle").
        search_and_watch(laptop, "kindle oasis")
        # The other browser of the same customer shows the watch at once.
        expect(phone.locator("#watches .terms", has_text="kindle oasis")).to_be_visible()
        expect(bob.locator("#watches .terms")).to_have_count(0)
        someone_searches(site, "kindle oasis")
        for page in (laptop, phone):
            expect(alert_items(page, "“kindle oasis”")).to_have_count(1)
        # Bob's own watch's alert arrives after anything the search above sent him.
        search_and_watch(bob, "marker")
        someone_searches(site, "marker")
        expect(alert_items(bob, "“marker”")).to_have_count(1)
        expect(alert_items(bob, "“kindle oasis”")).to_have_count(0)
        screenshot(laptop, "shop-two-browsers")
    finally:
        for context in (laptop_context, phone_context, bob_context):
            context.close()


def put_product(site: Site, sku: str, name: str, *, in_stock: bool) -> None:
    """The shop's admin puts a product (in the shared catalog: a name no other test uses)."""
    product = {
        "product_name": name,
        "description": "A lamp for the shop tests.",
        "price": 40.0,
        "category": "smart-home",
        "brand": "Zorblat",
        "in_stock": in_stock,
    }
    response = httpx.put(
        f"{site.percolert}/api/admin/products/{sku}",
        json=product,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text


def test_notify_me_when_one_product_is_back_in_stock(browser: Browser, site: Site) -> None:
    mark = uuid.uuid4().hex[:8]
    sku, name = f"ZX-{mark}", f"Zorblat Lamp {mark}"
    put_product(site, sku, name, in_stock=False)
    context, page = visit(browser, site, customer_named("erin"))
    try:
        page.fill("#q", f"zorblat {mark}")
        page.press("#q", "Enter")
        result = page.locator(f"#results li[data-sku='{sku}']")
        expect(result.locator(".stock")).to_have_text("sold out")
        button = result.locator("percolert-notify button")
        expect(button).to_have_text("Notify me when back in stock")
        button.click()
        expect(page.locator("#watches .terms", has_text=f"{name} ({sku})")).to_be_visible()
        put_product(site, sku, name, in_stock=True)
        expect(alert_items(page, name)).to_have_count(1)
        expect(alert_items(page, name)).to_contain_text("Back in stock")
        screenshot(page, "shop-back-in-stock")
    finally:
        context.close()


def test_anonymous_watches_move_into_the_account_at_login_once(
    browser: Browser, site: Site
) -> None:
    carol = customer_named("carol")
    context, page = visit(browser, site, None)
    try:
        search_and_watch(page, "headphones")
        log_in(page, carol)
        expect(page.locator("#merged")).to_have_text("Moved 1 watch into your account.")
        expect(page.locator("#watches .terms", has_text="headphones")).to_be_visible()
        # A second login (a second merge) moves nothing.
        page.click("#logout button[type=submit]")
        log_in(page, carol)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator("#merged")).to_be_hidden()
        expect(page.locator("#watches .terms", has_text="headphones")).to_have_count(1)
        # Carol's other browser has it too.
        other_context, other = visit(browser, site, carol)
        expect(other.locator("#watches .terms", has_text="headphones")).to_have_count(1)
        other_context.close()
    finally:
        context.close()


def test_an_expiring_token_is_refreshed_through_the_shop(
    browser: Browser, catalog_settings: Settings
) -> None:
    with shop_and_percolert(catalog_settings, token_seconds=4) as short:
        context = browser.new_context()
        page = context.new_page()
        sockets: list[WebSocket] = []
        page.on("websocket", lambda socket: sockets.append(socket))

        def account_sockets() -> int:
            return len([socket for socket in sockets if "auth=token" in socket.url])

        try:
            page.goto(short.shop)
            log_in(page, customer_named("dave"))
            expect(page.locator("#connection")).to_have_attribute("data-state", "live")
            words = "camera " + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:8])
            search_and_watch(page, words)
            # Refreshed ahead of expiry, again and again: by the third, the first token and
            # the second have expired.
            for _ in range(3):
                with page.expect_request(f"{short.shop}/token", timeout=20_000):
                    pass
            expect(page.locator("#connection")).to_have_attribute("data-state", "live")
            assert account_sockets() == 1, "the socket was reopened rather than refreshed"
            someone_searches(short, words)
            expect(alert_items(page, f"“{words}”")).to_have_count(1)

            # The shop gives no more tokens: at expiry the socket closes (4401) and the page
            # says so; once the shop gives tokens again, the page reconnects.
            page.route(f"{short.shop}/token", lambda route: route.fulfill(status=401, body="{}"))
            expect(page.locator("#connection")).to_have_attribute(
                "data-state", "unauthorized", timeout=15_000
            )
            page.unroute(f"{short.shop}/token")
            page.click("#reconnect")
            expect(page.locator("#connection")).to_have_attribute("data-state", "live")
            assert account_sockets() == 2
        finally:
            context.close()
