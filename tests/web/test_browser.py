"""The page in a real browser (Debian's headless Chromium, driven by Playwright): watching,
alert toasts, hostile text shown as text, recovery after a reload and a network drop.
Screenshots go to artifacts/screenshots/ (git-ignored)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from percolert.core.settings import Settings
from tests.netproxy import DroppableProxy
from tests.servers import QuietHandler, http_server, metric, run_server
from tests.waiting import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
# As the machine's own probe runs it: no sandbox as root, and no background networking,
# whose connections this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script>kindle'


def chromium_path() -> str:
    path = os.environ.get("PERCOLERT_CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.fail("browser tests need Chromium: apt-get install chromium (or PERCOLERT_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def server(catalog_settings: Settings) -> Iterator[str]:
    with run_server(msgspec.structs.replace(catalog_settings, coalesce_seconds=0.0)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def shopper(browser: Browser, url: str) -> tuple[BrowserContext, Page]:
    """A browser context is a separate cookie jar: a separate shopper."""
    context = browser.new_context(viewport={"width": 1200, "height": 850})
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    return context, page


def search(page: Page, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")
    expect(page.locator("#status")).to_contain_text("result")


def watch(page: Page, text: str) -> None:
    search(page, text)
    page.click("#watch-form button[type=submit]")
    expect(page.locator("#watch-status")).to_contain_text("Watching")
    expect(page.locator("#watches .terms", has_text=text)).to_be_visible()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_watch_then_someone_elses_search_toasts_only_the_watcher(
    browser: Browser, server: str
) -> None:
    a_context, a = shopper(browser, server)
    b_context, b = shopper(browser, server)
    try:
        watch(a, "paperwhite")
        started = time.monotonic()
        search(b, "Kindle Paperwhite Signature")
        toast = a.locator(".toast", has_text="Kindle Paperwhite Signature")
        expect(toast).to_be_visible(timeout=1000)
        assert time.monotonic() - started < 2.0  # search answered + alert shown
        expect(toast).to_contain_text("paperwhite")
        screenshot(a, "watcher-toast")
        assert b.locator(".toast").count() == 0
        screenshot(b, "searcher-no-toast")
    finally:
        a_context.close()
        b_context.close()


def test_two_instances_on_one_redis_alert_each_other_across_browsers(
    browser: Browser, catalog_settings: Settings, redis_url: str
) -> None:
    """Two instances sharing one Redis, each shopper's page on its own instance: each
    one's watch is alerted by the other's search on the other instance."""
    settings = msgspec.structs.replace(catalog_settings, coalesce_seconds=0.0, redis_url=redis_url)
    with run_server(settings) as one, run_server(settings) as two:
        a_context, a = shopper(browser, one)
        b_context, b = shopper(browser, two)
        try:
            watch(a, "paperwhite")
            watch(b, "headphones")
            search(b, "Kindle Paperwhite Signature")
            expect(a.locator(".toast", has_text="Kindle Paperwhite Signature")).to_be_visible()
            search(a, "noise cancelling headphones")
            expect(b.locator(".toast", has_text="noise cancelling headphones")).to_be_visible()
            screenshot(a, "instance-one-toast")
            screenshot(b, "instance-two-toast")
            # Nobody hears of their own search.
            assert a.locator(".toast", has_text="noise cancelling headphones").count() == 0
            assert b.locator(".toast", has_text="Kindle Paperwhite Signature").count() == 0
        finally:
            a_context.close()
            b_context.close()


def test_hostile_text_is_shown_as_text_and_runs_nothing(browser: Browser, server: str) -> None:
    a_context, a = shopper(browser, server)
    b_context, b = shopper(browser, server)
    try:
        watch(a, "kindle")
        a.fill("#watch-terms", '<b onmouseover="window.__xss=3">oasis</b>')
        a.click("#watch-form button[type=submit]")
        expect(a.locator("#watches .terms", has_text="<b onmouseover")).to_be_visible()
        search(b, XSS)
        toast = a.locator(".toast").first
        expect(toast).to_be_visible(timeout=1000)
        # A stranger's words never reach the page: the alert says what matched.
        expect(toast).to_contain_text("matched your watch “kindle”")
        expect(toast).not_to_contain_text("<img")
        expect(a.locator("#recent li").first).not_to_contain_text("<script>")
        # The shopper's own hostile words come back in an alert, as text.
        search(b, "b onmouseover window xss 3 oasis")
        own = a.locator(".toast", has_text='<b onmouseover="window.__xss=3">oasis</b>')
        expect(own).to_be_visible(timeout=1000)
        assert (
            a.locator(".toast img, .toast script, .toast b, #recent img, #watches b").count() == 0
        )
        for page in (a, b):
            assert page.evaluate("window.__xss") is None
        screenshot(a, "hostile-text-as-text")
    finally:
        a_context.close()
        b_context.close()


def test_a_watch_for_products_only_is_listed_so_and_changed_on_the_page(
    browser: Browser, server: str
) -> None:
    context, page = shopper(browser, server)

    def stored() -> list[tuple[str, str]]:
        listed = context.request.get(f"{server}/api/watches").json()["watches"]
        return [(watch["terms"], watch["notify"]) for watch in listed if not watch["is_default"]]

    try:
        search(page, "kobo libra")
        expect(page.locator("#watch-notify")).to_have_value("both")  # the default
        page.select_option("#watch-notify", label="products only")
        page.click("#watch-form button[type=submit]")
        expect(page.locator("#watch-status")).to_contain_text("when a matching product")
        choice = page.locator("#watches .watch", has_text="kobo libra").locator("select.notify")
        expect(choice).to_have_value("products")
        expect(choice.locator("option:checked")).to_have_text("products only")
        assert stored() == [("kobo libra", "products")]
        choice.select_option(label="searches only")
        wait_until_sync(lambda: stored() == [("kobo libra", "searches")], what="the change")
        # The list (redrawn when the socket hears watches_changed) shows the stored choice.
        expect(choice).to_have_value("searches")
        expect(choice).to_be_enabled()
        screenshot(page, "watch-notify-changed")
    finally:
        context.close()


def test_reload_lists_the_recent_alert(browser: Browser, server: str) -> None:
    a_context, a = shopper(browser, server)
    b_context, b = shopper(browser, server)
    try:
        watch(a, "airpods")
        search(b, "AirPods Pro 2")
        expect(a.locator(".toast", has_text="AirPods Pro 2")).to_be_visible(timeout=1000)
        a.reload()
        expect(a.locator("#connection")).to_have_attribute("data-state", "live")
        expect(a.locator("#recent li", has_text="AirPods Pro 2")).to_be_visible()
        assert a.locator(".toast").count() == 0  # listed, not toasted again
        screenshot(a, "after-reload")
    finally:
        a_context.close()
        b_context.close()


def test_alert_missed_during_a_network_drop_appears_when_it_returns(
    browser: Browser, server: str
) -> None:
    proxy = DroppableProxy(int(server.rsplit(":", 1)[1]))
    a_context, a = shopper(browser, proxy.url)
    b_context, b = shopper(browser, server)
    try:
        watch(a, "nintendo")
        proxy.drop()
        expect(a.locator("#connection")).to_have_attribute("data-state", "offline")
        created = metric(server, "percolert_alerts_created_total")
        search(b, "Nintendo Switch OLED")
        # b's search is answered and its alert made while a is still cut off: a can only
        # learn of it by the replay when it reconnects.
        wait_until_sync(
            lambda: metric(server, "percolert_alerts_created_total") > created,
            what="the alert for a",
        )
        expect(a.locator("#connection")).to_have_attribute("data-state", "offline")
        assert a.locator(".toast").count() == 0
        screenshot(a, "network-down")
        proxy.restore()
        expect(a.locator("#connection")).to_have_attribute("data-state", "live", timeout=15000)
        missed = a.locator(".toast", has_text="Nintendo Switch OLED")
        expect(missed).to_be_visible(timeout=3000)
        expect(missed).to_have_count(1)  # replayed once
        screenshot(a, "network-back-missed-alert")
    finally:
        a_context.close()
        b_context.close()
        proxy.close()


def test_page_reads_well_on_a_phone(browser: Browser, server: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(server)
        search(page, "headphones")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # no sideways scrolling
        screenshot(page, "phone")
    finally:
        context.close()


def test_the_page_works_under_its_security_policy(browser: Browser, server: str) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 850})
    context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (event) => window.__violations.push(event.violatedDirective));"
    )
    try:
        page = context.new_page()
        loaded = page.goto(server)
        assert loaded is not None
        assert "frame-ancestors 'none'" in loaded.headers["content-security-policy"]
        # The socket, the stylesheet, the script and the API all work under the policy.
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        assert page.evaluate("getComputedStyle(document.querySelector('.bar')).display") == "flex"
        watch(page, "chromecast")
        page.click("#watches .remove")  # a DELETE from the page passes the origin check
        expect(page.locator("#watches .terms", has_text="chromecast")).to_have_count(0)
        assert page.evaluate("window.__violations") == []
        # The policy is in force: an injected inline script does not run.
        page.evaluate(
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.__inline = 1'; document.body.append(s); }"
        )
        page.wait_for_function("window.__violations.includes('script-src-elem')")
        assert page.evaluate("window.__inline") is None
    finally:
        context.close()


@contextmanager
def page_server(html: str) -> Iterator[str]:
    """Serves `html` at / from another port of this host: a page of another origin on the same
    site (and in the browser's loopback address space, as the shop is)."""

    class Page(QuietHandler):
        def do_GET(self) -> None:
            self.reply(html.encode(), "text/html")

    with http_server(Page) as url:
        yield url


def test_a_page_on_another_port_cannot_plant_a_watch(browser: Browser, server: str) -> None:
    """Same host, other port: the same site, so the browser sends the session cookie with a
    simple cross-origin request; the server must refuse it."""
    attack = f"""<!doctype html><script>
      const plant = (contentType, terms) => fetch("{server}/api/watches", {{
        method: "POST", mode: "no-cors", credentials: "include",
        headers: {{"Content-Type": contentType}}, body: JSON.stringify({{terms}})}});
      window.attempts = Promise.all([
        plant("text/plain", "planted text"),
        plant("application/x-www-form-urlencoded", "planted form"),
      ]).then((replies) => replies.map((reply) => reply.type));
    </script>"""
    context, _ = shopper(browser, server)  # the shopper's page holds their session cookie
    try:
        with page_server(attack) as other:
            attacker = context.new_page()
            attacker.goto(other)
            # Both requests reached the server (an opaque reply: the page may not read it).
            assert attacker.evaluate("window.attempts") == ["opaque", "opaque"]
        listed = context.request.get(f"{server}/api/watches").json()["watches"]
        assert [watch["terms"] for watch in listed if not watch["is_default"]] == []
    finally:
        context.close()
