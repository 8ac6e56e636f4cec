"""Product alerts on the page in a real browser (Debian's Chromium via Playwright): a live
price drop as a product card with the old price struck through, hostile product text shown
as text, and "while you were away" after a return."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec
import pytest
from playwright.sync_api import Browser, expect

from percolert.core.settings import Settings
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.products.test_product_feed import Writer
from tests.servers import metric, run_server
from tests.waiting import wait_until_sync
from tests.web.test_browser import browser, screenshot, shopper

__all__ = ["browser"]  # the browser fixture, shared with the page's other tests

T = TypeVar("T")

HOSTILE = '<img src=x onerror="window.__xss = 1">Kindle <script>window.__xss = 2</script>'


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end from a test driving Playwright's synchronous API, whose
    event loop runs in this thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module")
def server(catalog_settings: Settings) -> Iterator[str]:
    settings = msgspec.structs.replace(catalog_settings, product_alert_poll_seconds=0.1)
    with run_server(settings) as url:
        yield url


def test_a_price_drop_shows_as_a_product_card_and_hostile_text_as_text(
    browser: Browser, server: str, catalog_settings: Settings
) -> None:
    writer = Writer(catalog_settings)
    context, page = shopper(browser, server)
    try:
        [cookie] = [c for c in context.cookies() if c["name"] == COOKIE_NAME]
        user = writer.user_of_cookie(cookie["value"])
        run_async(writer.write(user, [HOSTILE]))
        card = page.locator("#product-alerts-list .product-card")
        expect(card).to_have_count(1)
        expect(card.locator(".name")).to_have_text(HOSTILE)
        expect(card.locator(".label")).to_have_text("price drop")
        expect(card.locator("del.old-price")).to_have_text("$179.00")
        expect(card.locator(".price")).to_have_text("$129.00")
        expect(card.locator(".brand")).to_have_text("Amazon")
        assert page.locator(".product-card img, .product-card script, .toast img").count() == 0
        assert page.evaluate("window.__xss") is None
        screenshot(page, "product-card-price-drop")
        # Away meanwhile (the page closed, the session kept): on return, once. Written once
        # the server has let the closed page's socket go (else it may take them live).
        page.close()
        wait_until_sync(
            lambda: metric(server, "percolert_connected_sockets") == 0,
            what="the closed page's socket to be gone",
        )
        run_async(writer.write(user, [f"Kindle Filler {n}" for n in range(10)]))
        [away] = run_async(
            writer.write(
                user,
                ["Kindle Paperwhite"],
                previous_price=149.0,
                more=("Kindle Oasis", "Kindle Scribe"),
            )
        )
        page = context.new_page()
        page.goto(server)
        section = page.locator("#away")
        expect(section).to_be_visible()
        # The ten newest, newest first, then how many more.
        cards = section.locator(".product-card")
        expect(cards).to_have_count(10)
        expect(cards.first.locator(".name")).to_have_text(away.product.product_name)
        expect(cards.first.locator("del.old-price")).to_have_text("$149.00")
        expect(cards.first.locator(".product-more")).to_have_text(
            "and 2 more: Kindle Oasis, Kindle Scribe"
        )
        expect(cards.last.locator(".name")).to_have_text("Kindle Filler 1")
        expect(section.locator("#away-more")).to_have_text("and 1 more")
        screenshot(page, "product-while-you-were-away")
        # "Show" searches for the product.
        cards.first.locator(".show").click()
        expect(page.locator("#q")).to_have_value("Kindle Paperwhite")
        expect(page.locator("#status")).to_contain_text("result")
        page.reload()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator("#away")).to_be_hidden()
    finally:
        context.close()


def test_back_in_stock_at_a_lower_price_strikes_the_old_price_through(
    browser: Browser, server: str, catalog_settings: Settings
) -> None:
    """Back in stock wins over a simultaneous drop and keeps its previous price: the card
    shows that drop too."""
    writer = Writer(catalog_settings)
    context, page = shopper(browser, server)
    try:
        [cookie] = [c for c in context.cookies() if c["name"] == COOKIE_NAME]
        user = writer.user_of_cookie(cookie["value"])
        run_async(writer.write(user, ["Kindle Kids"], change="back_in_stock"))
        card = page.locator("#product-alerts-list .product-card")
        expect(card).to_have_count(1)
        expect(card.locator(".label")).to_have_text("back in stock")
        expect(card.locator("del.old-price")).to_have_text("$179.00")
        expect(card.locator(".price")).to_have_text("$129.00")
    finally:
        context.close()
