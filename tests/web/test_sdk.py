"""The JavaScript SDK (web/sdk/) in a real browser (Debian's Chromium, driven by Playwright)
against a real server: anonymous and token connections, status events, alerts, resuming
after the server closes the socket (nothing missed, nothing twice), watch CRUD, the web
components (hostile text shown as text), the demo page's "Notify me" per result, and a
storefront on another origin.

The SDK runs in a document of the server's own origin (one of its JSON responses, emptied),
under the strict Content-Security-Policy the server sends with it: the SDK must work there.
A storefront's page comes from another port of this host, with its own copy of the SDK.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Route,
    WebSocket,
    WebSocketRoute,
    expect,
)

from percolert.core.settings import Settings
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.accounts.tokens import SHOP_SECRET, bearer, shop_token
from tests.products.test_product_feed import Writer
from tests.products.test_product_page import run_async
from tests.servers import QuietHandler, free_port, http_server, metric, run_server
from tests.waiting import wait_until_sync
from tests.web.test_browser import browser, screenshot, shopper
from tests.web.test_browser import watch as watch_this_search

__all__ = ["browser"]  # the browser fixture, shared with the page's other tests

SDK_DIR = Path(__file__).resolve().parents[2] / "web" / "sdk"
TEST_PAGE = (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>SDK</title></head>"
    "<body></body></html>"
)
HOSTILE = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script>'
EVENTS = [
    "status",
    "hello",
    "alert",
    "product_alert",
    "away",
    "watches_changed",
    "watch_too_broad",
    "token_expiring",
    "protocol_mismatch",
    "error",
]

# Loads the SDK into the page and records every event the client dispatches (details made
# plain data: an error's message, code and status). With `tokens` (not undefined) the client
# asks `getToken`, which answers the next of `window.tokens` (the last one again once one is
# left) and records why it was asked in `window.tokenCalls`.
START = """
async ({ sdk, options, tokens, events }) => {
  const { Percolert } = await import(`${sdk}/percolert.js`);
  await import(`${sdk}/components.js`);
  const plain = (value) => JSON.parse(JSON.stringify(value, (key, inner) =>
    inner instanceof Error
      ? { name: inner.name, message: inner.message, code: inner.code, status: inner.status }
      : inner));
  window.events = [];
  window.tokenCalls = [];
  window.tokens = tokens;
  if (tokens !== undefined) {
    options.getToken = async ({ reason }) => {
      window.tokenCalls.push(reason);
      return window.tokens.length > 1 ? window.tokens.shift() : window.tokens[0];
    };
  }
  const client = new Percolert(options);
  for (const type of events) {
    client.addEventListener(type, (event) => {
      window.events.push({ type, detail: plain(event.detail) });
    });
  }
  window.client = client;
  Percolert.setDefault(client);
  client.connect();
}
"""
ADMIN_TOKEN = "admin-token-for-the-sdk-tests"
FAST_RECONNECT = {"initialDelay": 200, "maxDelay": 1000}
VISITS_PATH = "/api/alerts/visits"


def watch_violations(context: BrowserContext) -> None:
    context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (event) => window.__violations.push(event.violatedDirective));"
    )


def sdk_page(
    context: BrowserContext,
    server: str,
    *,
    tokens: list[str | None] | None = None,
    options: dict[str, Any] | None = None,
    before_start: Callable[[Page], object] | None = None,
) -> Page:
    """A page at the server's origin with a client of the SDK started in it (`window.client`):
    anonymous, or with `tokens` the answers of its `getToken`, in turn."""
    page = context.new_page()
    if before_start is not None:
        before_start(page)
    # A document of the server's origin, under the policy it sends with every response.
    loaded = page.goto(f"{server}/healthz")
    assert loaded is not None
    assert "script-src 'self';" in loaded.headers["content-security-policy"]
    page.evaluate("document.body.replaceChildren()")
    start(page, "/static/sdk", tokens=tokens, options=options)
    return page


def start(
    page: Page,
    sdk: str,
    *,
    tokens: list[str | None] | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    arguments: dict[str, Any] = {"sdk": sdk, "options": options or {}, "events": EVENTS}
    if tokens is not None:
        arguments["tokens"] = tokens
    page.evaluate(START, arguments)


def wait_in_page(page: Page, holds: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Wait until `holds()`, letting Playwright run the test's handlers meanwhile (they run
    only while the test is in one of its calls)."""
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        page.wait_for_timeout(20)


def events(page: Page, kind: str) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = page.evaluate(
        "(kind) => window.events.filter((e) => e.type === kind).map((e) => e.detail)",
        kind,
    )
    return recorded


def wait_for(page: Page, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """The details of the events of `kind` once there are at least `count` of them."""
    page.wait_for_function(
        "([kind, count]) => window.events.filter((event) => event.type === kind).length >= count",
        arg=[kind, count],
    )
    return events(page, kind)


def statuses(page: Page) -> list[str]:
    return [detail["status"] for detail in events(page, "status")]


def wait_live(page: Page, times: int = 1) -> None:
    page.wait_for_function(
        "(times) => window.events.filter((e) => e.type === 'status' && e.detail.status === 'live')"
        ".length >= times",
        arg=times,
    )


def call(page: Page, script: str, argument: Any = None) -> Any:
    """Run `script` (an async function of the client and `argument`) in the page; a rejected
    promise comes back as {"error": {name, message, code, status}}."""
    return page.evaluate(
        """async ([script, argument]) => {
          const run = eval(script);
          try {
            return { value: await run(window.client, argument) };
          } catch (error) {
            const { name, message, code, status } = error;
            return { error: { name, message, code, status } };
          }
        }""",
        [script, argument],
    )


class Searcher:
    """Another shopper, searching through the API (its own session)."""

    def __init__(self, server: str) -> None:
        self.http = httpx.Client(base_url=server, timeout=10)

    def search(self, text: str) -> None:
        self.http.get("/api/search", params={"q": text}).raise_for_status()

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def storefront() -> Iterator[str]:
    """A storefront on another origin of this host (another port): its page and its own copy
    of the SDK, as a shop serves the npm package."""
    with shop_server() as url:
        yield url


@pytest.fixture(scope="module")
def sdk_settings(catalog_settings: Settings, storefront: str) -> Settings:
    return msgspec.structs.replace(
        catalog_settings,
        coalesce_seconds=0.0,
        product_alert_poll_seconds=0.1,
        allowed_origins=(storefront,),
        jwt_secret=SHOP_SECRET,
        admin_token=ADMIN_TOKEN,
        # An expired token is refused at once: the tests make short-lived ones.
        jwt_leeway_seconds=0.0,
        # The demand view read afresh each time: the visit tests poll it.
        insights_cache_seconds=0.0,
    )


@pytest.fixture(scope="module")
def server(sdk_settings: Settings) -> Iterator[str]:
    with run_server(sdk_settings) as url:
        yield url


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    watch_violations(context)
    yield context
    context.close()


@pytest.fixture
def searcher(server: str) -> Iterator[Searcher]:
    other = Searcher(server)
    yield other
    other.close()


# --- anonymous ------------------------------------------------------------------------------


def test_an_anonymous_client_connects_greeted_and_says_so(
    context: BrowserContext, server: str
) -> None:
    page = sdk_page(context, server)
    wait_live(page)
    # Connecting first, live only once greeted.
    assert statuses(page)[:2] == ["connecting", "live"]
    [hello] = wait_for(page, "hello")
    assert hello["protocol"] == 2
    assert page.evaluate("window.client.status") == "live"
    # The greeting's watches (the shop's defaults) are announced as the list.
    [listed] = wait_for(page, "watches_changed")
    assert listed["watches"] == hello["watches"]
    # A session cookie, asked for before the socket.
    assert [c for c in context.cookies() if c["name"] == COOKIE_NAME]
    assert page.evaluate("window.__violations") == []


def test_an_alert_reaches_the_watcher_and_not_the_searcher(
    context: BrowserContext, browser: Browser, server: str
) -> None:
    watcher = sdk_page(context, server)
    other = browser.new_context()
    try:
        searcher = sdk_page(other, server)
        wait_live(watcher)
        wait_live(searcher)
        added = call(watcher, "(client) => client.addWatch({ terms: 'paperwhite' })")
        assert added["value"]["terms"] == "paperwhite"
        results = call(
            searcher, "(client) => client.search('Kindle Paperwhite Signature', { size: 5 })"
        )
        assert results["value"]["total"] > 0
        [alert] = wait_for(watcher, "alert")
        assert alert["watch"]["terms"] == "paperwhite"
        assert alert["count"] == 1
        assert any("Paperwhite" in product["product_name"] for product in alert["found"])
        assert "query" not in alert  # what matched, never what was typed
        assert watcher.evaluate("window.client.lastSeq") == alert["seq"]
        assert events(searcher, "alert") == []  # never for one's own search
    finally:
        other.close()


def test_after_the_server_closes_the_socket_the_client_resumes_with_nothing_missed_or_twice(
    context: BrowserContext, sdk_settings: Settings
) -> None:
    """The server shuts down (1001) and comes back on the same port; an alert made meanwhile
    (by another instance) is replayed once on the reconnect with `after=`."""
    port = free_port()
    sockets: list[str] = []
    with run_server(sdk_settings, port) as first:
        page = sdk_page(
            context,
            first,
            options={"reconnect": FAST_RECONNECT},
            before_start=lambda page: page.on("websocket", lambda ws: sockets.append(ws.url)),
        )
        wait_live(page)
        call(page, "(client) => client.addWatch({ terms: 'nintendo' })")
        searcher = Searcher(first)
        searcher.search("Nintendo Switch OLED")
        [before] = wait_for(page, "alert")
        searcher.close()
    wait_for(page, "status", 3)  # connecting, live, offline
    closes = [
        detail.get("code") for detail in events(page, "status") if detail["status"] == "offline"
    ]
    assert closes[0] == 1001  # the server going away
    # Meanwhile another instance takes a search that matches the watch.
    with run_server(sdk_settings) as other:
        created = metric(other, "percolert_alerts_created_total")
        searcher = Searcher(other)
        searcher.search("Nintendo Switch Lite")
        wait_until_sync(
            lambda: metric(other, "percolert_alerts_created_total") > created,
            what="the alert made while the page was away",
        )
        searcher.close()
    assert len(events(page, "alert")) == 1
    with run_server(sdk_settings, port):
        wait_live(page, 2)
        alerts = wait_for(page, "alert", 2)
        missed = alerts[1]
        assert "Nintendo Switch Lite" in [p["product_name"] for p in missed["found"]]
        assert missed["seq"] > before["seq"]
        # Resumed after the last alert it had: the replay is the one it missed.
        assert any(url.endswith(f"/ws?after={before['seq']}") for url in sockets)
        assert sockets[0].endswith("/ws")
        # Nothing twice: the next alert is a new one, and the missed one came once.
        searcher = Searcher(f"http://127.0.0.1:{port}")
        searcher.search("Nintendo Switch 2")
        alerts = wait_for(page, "alert", 3)
        searcher.close()
        assert len({alert["id"] for alert in alerts}) == len(alerts) == 3
        assert page.evaluate("window.client.lastSeq") == alerts[-1]["seq"]


class SocketTap:
    """Every socket the page opens goes to the real server through Playwright, so that the
    test can close one with the codes the server uses, hold reconnects back, or hand the
    page a message again."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.held = False
        self.routes: list[tuple[WebSocketRoute, WebSocketRoute | None]] = []
        page.route_web_socket(re.compile(r".*/ws(\?.*)?$"), self._route)

    def _route(self, ws: WebSocketRoute) -> None:
        self.urls.append(ws.url)
        if self.held:
            self.routes.append((ws, None))  # open to the page, never greeted
            return
        self.routes.append((ws, ws.connect_to_server()))

    def close_as_server(self, code: int, reason: str = "") -> None:
        """Close the newest socket as the server would (the page sees `code`)."""
        page_side, server_side = self.routes[-1]
        page_side.close(code=code, reason=reason)
        if server_side is not None:
            server_side.close()

    def send(self, message: dict[str, Any]) -> None:
        """Hand the page a message on its newest socket, as if the server sent it."""
        self.routes[-1][0].send(json.dumps(message))


@pytest.mark.parametrize(("code", "reason"), [(1012, "resync"), (1013, "too slow"), (4408, "")])
def test_closed_by_the_server_with_a_code_it_reconnects_with_after(
    context: BrowserContext, server: str, searcher: Searcher, code: int, reason: str
) -> None:
    taps: list[SocketTap] = []
    page = sdk_page(
        context,
        server,
        options={"reconnect": FAST_RECONNECT},
        before_start=lambda page: taps.append(SocketTap(page)),
    )
    [tap] = taps
    wait_live(page)
    call(page, "(client) => client.addWatch({ terms: 'chromecast' })")
    searcher.search("Chromecast with Google TV")
    [first] = wait_for(page, "alert")
    # The same alert handed over again (a replay overlapping what was live): dropped.
    tap.send({**first, "type": "alert"})
    tap.held = True
    tap.close_as_server(code, reason)
    offline = next(s for s in wait_for(page, "status", 3) if s["status"] == "offline")
    assert offline["code"] == code
    assert offline["retryIn"] > 0
    wait_in_page(page, lambda: len(tap.urls) >= 2, what="the reconnect")
    # Held back (connected, never greeted): meanwhile an alert is made for it.
    created = metric(server, "percolert_alerts_created_total")
    searcher.search("Chromecast audio")
    wait_until_sync(
        lambda: metric(server, "percolert_alerts_created_total") > created,
        what="the alert made while the page was away",
    )
    assert page.evaluate("window.client.status") == "connecting"
    tap.held = False
    tap.close_as_server(1013, "too slow")
    wait_live(page, 2)
    alerts = wait_for(page, "alert", 2)
    assert [alert["id"] for alert in alerts] == [first["id"], alerts[1]["id"]]
    assert alerts[1]["id"] != first["id"]
    assert all(url.endswith(f"?after={first['seq']}") for url in tap.urls[1:])
    assert not tap.urls[0].endswith(f"?after={first['seq']}")


def test_watch_crud_through_the_sdk(context: BrowserContext, server: str) -> None:
    page = sdk_page(context, server)
    wait_live(page)
    added = call(
        page,
        "(client) => client.addWatch({ terms: 'kobo  libra', max_price: 250, notify: 'products' })",
    )["value"]
    assert (added["terms"], added["max_price"], added["notify"]) == ("kobo libra", 250, "products")
    listed = call(page, "(client) => client.watches()")["value"]
    assert [w["id"] for w in listed if not w["is_default"]] == [added["id"]]
    changed = call(page, "(client, id) => client.setNotify(id, 'both')", added["id"])["value"]
    assert changed["notify"] == "both"
    # The server tells every socket of the user; the client's own list follows its calls.
    page.wait_for_function(
        "(id) => window.events.some((e) => e.type === 'watches_changed'"
        " && e.detail.watches.some((w) => w.id === id && w.notify === 'both'))",
        arg=added["id"],
    )
    assert call(page, "(client, id) => client.removeWatch(id)", added["id"]) == {"value": None}
    assert call(page, "(client) => client.watchList.filter((w) => !w.is_default)") == {"value": []}
    listed = call(page, "(client) => client.watches()")["value"]
    assert [w for w in listed if not w["is_default"]] == []
    # Errors carry the server's code and message, and the HTTP status.
    refused = call(page, "(client) => client.addWatch({ terms: 'the' })")["error"]
    assert refused["name"] == "PercolertError"
    assert (refused["code"], refused["status"]) == ("invalid_watch", 400)
    assert "name something" in refused["message"]
    gone = call(page, "(client, id) => client.removeWatch(id)", added["id"])["error"]
    assert (gone["code"], gone["status"]) == ("watch_not_found", 404)
    categories = call(page, "(client) => client.categories()")["value"]
    assert "e-readers" in categories
    assert page.evaluate("window.__violations") == []


def test_product_alerts_and_away_reach_the_client_once(
    context: BrowserContext, server: str, sdk_settings: Settings
) -> None:
    writer = Writer(sdk_settings)
    page = sdk_page(context, server)
    wait_live(page)
    [cookie] = [c for c in context.cookies() if c["name"] == COOKIE_NAME]
    user = writer.user_of_cookie(cookie["value"])
    [live] = run_async(writer.write(user, ["Kindle Colorsoft"]))
    [alert] = wait_for(page, "product_alert")
    assert (alert["id"], alert["change"]) == (live.id, "price_drop")
    assert alert["product"]["previous_price"] == 179.0
    page.close()
    wait_until_sync(
        lambda: metric(server, "percolert_connected_sockets") == 0,
        what="the closed page's socket to be gone",
    )
    [missed] = run_async(writer.write(user, ["Kindle Scribe"]))
    page = sdk_page(context, server)
    [away] = wait_for(page, "away")
    assert [a["id"] for a in away["alerts"]] == [missed.id]
    assert events(page, "product_alert") == []  # listed as away, not sent again


def speaking_protocol_3(page: Page) -> None:
    """The page's sockets hear a server whose hello says protocol 3 (one the SDK does not
    speak), and otherwise the real server."""

    def route(ws: WebSocketRoute) -> None:
        upstream = ws.connect_to_server()

        def relay(message: str | bytes) -> None:
            decoded = json.loads(message)
            if decoded["type"] == "hello":
                decoded["protocol"] = 3
            ws.send(json.dumps(decoded))

        upstream.on_message(relay)

    page.route_web_socket(re.compile(r".*/ws(\?.*)?$"), route)


def test_a_protocol_the_sdk_does_not_speak_is_reported(
    context: BrowserContext, server: str
) -> None:
    page = sdk_page(context, server, before_start=speaking_protocol_3)
    [mismatch] = wait_for(page, "protocol_mismatch")
    assert (mismatch["expected"], mismatch["received"]) == (2, 3)
    # The page decides; left alone, the client goes on.
    wait_live(page)


# --- components -----------------------------------------------------------------------------


def test_a_panel_with_a_currency_the_browser_lacks_still_shows_alerts(
    context: BrowserContext, server: str, sdk_settings: Settings
) -> None:
    page = sdk_page(context, server)
    wait_live(page)
    page.evaluate(
        """() => {
          const panel = document.createElement("percolert-alerts");
          panel.setAttribute("currency", "not a currency");
          document.body.append(panel);
        }"""
    )
    writer = Writer(sdk_settings)
    [cookie] = [c for c in context.cookies() if c["name"] == COOKIE_NAME]
    run_async(writer.write(writer.user_of_cookie(cookie["value"]), ["Kindle Currency Test"]))
    item = page.locator("percolert-alerts li", has_text="Kindle Currency Test")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("$129.00")


def test_components_show_hostile_text_as_text(
    context: BrowserContext, server: str, searcher: Searcher, sdk_settings: Settings
) -> None:
    page = sdk_page(context, server)
    wait_live(page)
    terms = '<b onmouseover="window.__xss=3">oasis</b>'
    page.evaluate(
        """(terms) => {
          const panel = document.createElement("percolert-alerts");
          const notify = document.createElement("percolert-notify");
          notify.setAttribute("terms", terms);
          const invalid = document.createElement("percolert-notify");
          invalid.id = "invalid";
          invalid.setAttribute("terms", "kindle");
          invalid.setAttribute("category", '<img src=x onerror="window.__xss = 4">');
          document.body.append(notify, invalid, panel);
        }""",
        terms,
    )
    button = page.locator("percolert-notify:not(#invalid) button")
    expect(button).to_have_text("Notify me")
    expect(button).to_have_attribute("aria-pressed", "false")
    button.click()
    expect(button).to_have_text("Watching")
    expect(button).to_have_attribute("aria-pressed", "true")
    expect(page.locator("percolert-notify:not(#invalid)")).to_have_attribute("state", "watching")
    # The shopper's own hostile words come back in an alert, as text.
    searcher.search("b onmouseover window xss 3 oasis")
    toast = page.locator("percolert-alerts .toast")
    expect(toast).to_have_count(1)
    expect(toast).to_contain_text(f"matched your watch “{terms}”")
    item = page.locator("percolert-alerts li")
    expect(item).to_have_count(1)
    expect(item).to_contain_text(terms)
    # A product's hostile name, as text too.
    writer = Writer(sdk_settings)
    [cookie] = [c for c in context.cookies() if c["name"] == COOKIE_NAME]
    run_async(writer.write(writer.user_of_cookie(cookie["value"]), [HOSTILE]))
    expect(page.locator("percolert-alerts .toast", has_text=HOSTILE)).to_have_count(1)
    expect(page.locator("percolert-alerts li", has_text=HOSTILE)).to_have_count(1)
    # The server's refusal, naming the hostile category, as text.
    page.locator("#invalid button").click()
    message = page.locator("#invalid [part=message]")
    expect(message).to_contain_text("unknown category '<img src=x onerror=")
    expect(page.locator("#invalid")).to_have_attribute("state", "error")
    hostile_elements = (
        "percolert-alerts img, percolert-alerts script, percolert-alerts b, percolert-notify img"
    )
    assert page.locator(hostile_elements).count() == 0
    assert page.evaluate("window.__xss") is None
    # Pressed again: no longer watching.
    button.click()
    expect(button).to_have_text("Notify me")
    listed = call(page, "(client) => client.watches()")["value"]
    assert [w for w in listed if not w["is_default"]] == []
    assert page.evaluate("window.__violations") == []  # shadow styles under a strict CSP
    screenshot(page, "sdk-components-hostile")


def test_components_can_be_restyled_by_the_shop(context: BrowserContext, server: str) -> None:
    page = sdk_page(context, server)
    wait_live(page)
    page.evaluate(
        """() => {
          const notify = document.createElement("percolert-notify");
          notify.setAttribute("terms", "kindle");
          notify.style.setProperty("--percolert-accent", "rgb(255, 0, 0)");
          document.body.append(notify);
        }"""
    )
    button = page.locator("percolert-notify button")
    expect(button).to_have_css("color", "rgb(255, 0, 0)")
    expect(button).to_have_css("border-top-color", "rgb(255, 0, 0)")


# --- the demo page --------------------------------------------------------------------------


def test_each_result_has_notify_me_and_a_sold_out_one_says_back_in_stock(
    browser: Browser, server: str
) -> None:
    context, page = shopper(browser, server)
    try:
        page.fill("#q", "iphone 16 pro")
        page.press("#q", "Enter")
        expect(page.locator("#status")).to_contain_text("result")
        sold_out = page.locator("#results .result[data-sku='PH-0002'] percolert-notify button")
        expect(sold_out).to_have_text("Notify me when back in stock")
        in_stock = page.locator("#results .result", has_text="in stock").filter(
            has_not_text="out of stock"
        )
        expect(in_stock.first.locator("percolert-notify button")).to_have_text("Notify me")
        for result in page.locator("#results .result").all():
            expect(result.locator("percolert-notify button")).to_have_count(1)
        sold_out.click()
        expect(sold_out).to_have_text("Watching")
        # In the list, and stored as a watch of that product's return.
        expect(page.locator("#watches .watch", has_text="PH-0002")).to_be_visible()
        listed = context.request.get(f"{server}/api/watches").json()["watches"]
        [product] = [w for w in listed if w.get("sku") == "PH-0002"]
        assert product["on"] == ["back_in_stock"]
        screenshot(page, "sdk-notify-me-per-result")
        # Another tab of the same shopper knows: the button there says so, and pressed there
        # it stops the watch here too.
        tab = context.new_page()
        tab.goto(server)
        tab.fill("#q", "iphone 16 pro")
        tab.press("#q", "Enter")
        there = tab.locator("#results .result[data-sku='PH-0002'] percolert-notify button")
        expect(there).to_have_text("Watching")
        there.click()
        expect(there).to_have_text("Notify me when back in stock")
        expect(sold_out).to_have_text("Notify me when back in stock")
        expect(page.locator("#watches .watch", has_text="PH-0002")).to_have_count(0)
    finally:
        context.close()


def test_the_demo_page_follows_an_alerts_product_to_a_search_and_reports_the_visit(
    browser: Browser, server: str, searcher: Searcher, sdk_settings: Settings
) -> None:
    context, page = shopper(browser, server)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        watch_this_search(page, "garmin fenix")
        [mine] = [
            w
            for w in context.request.get(f"{server}/api/watches").json()["watches"]
            if w["terms"] == "garmin fenix"
        ]
        searcher.search("Garmin Fenix 8 AMOLED 47mm")
        # Recent alerts: the product is a link (a search for it, should it open apart).
        link = page.locator("#recent a[part~='product-link']", has_text="Garmin Fenix 8")
        expect(link).to_have_attribute("href", f"{server}/?q=Garmin%20Fenix%208%20AMOLED%2047mm")
        page.fill("#q", "")
        with page.expect_response(lambda reply: reply.url == f"{server}{VISITS_PATH}") as visited:
            link.click()
        assert visited.value.status == 204
        body = json.loads(visited.value.request.post_data or "")
        assert body["watch_id"] == mine["id"]
        assert body["alert_id"].startswith("alert:")  # counted once per alert
        # Followed here: a search for it, without leaving the page (and its socket).
        expect(page.locator("#q")).to_have_value("Garmin Fenix 8 AMOLED 47mm")
        expect(
            page.locator("#results .result", has_text="Garmin Fenix 8 AMOLED 47mm").first
        ).to_be_visible()
        assert page.url == f"{server}/"
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        # A product alert's card: "Show" reports the visit too. Its watch is a made-up one
        # (the test's writer), so the server refuses it: the page carries on regardless.
        writer = Writer(sdk_settings)
        [cookie] = [c for c in context.cookies() if c["name"] == COOKIE_NAME]
        [written] = run_async(writer.write(writer.user_of_cookie(cookie["value"]), ["Kobo Sage"]))
        show = page.locator("#product-alerts-list .product-card .show")
        with page.expect_response(lambda reply: reply.url == f"{server}{VISITS_PATH}") as refused:
            show.click()
        assert refused.value.status == 404
        body = json.loads(refused.value.request.post_data or "")
        assert body["watch_id"] == written.watch.id
        assert body["alert_id"].startswith("product_alert:")
        expect(page.locator("#q")).to_have_value("Kobo Sage")
        expect(page.locator("#status")).to_contain_text("result")
        screenshot(page, "sdk-demo-alert-product-followed")
        assert errors == []  # nothing unhandled, the refusal included
    finally:
        context.close()


def test_the_page_reloads_once_for_a_newer_protocol(browser: Browser, server: str) -> None:
    context = browser.new_context()
    loads: list[str] = []
    try:
        page = context.new_page()
        speaking_protocol_3(page)
        page.on("load", lambda loaded: loads.append(loaded.url))
        page.goto(server)
        # Reloaded once (the first load never goes live); still stale, it shows what it can
        # rather than loop.
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        assert page.evaluate("performance.getEntriesByType('navigation')[0].type") == "reload"
        assert page.evaluate("sessionStorage.getItem('percolert-reloaded')") == "1"
        assert len(loads) == 2
    finally:
        context.close()


# --- visits: alerts followed to the shop ----------------------------------------------------


@contextmanager
def default_watch(server: str, text: str) -> Iterator[dict[str, Any]]:
    """A default watch of `text` (everyone's), made by the shop's admin; retired after."""
    with httpx.Client(base_url=server, headers=bearer(ADMIN_TOKEN), timeout=10) as admin:
        made = admin.post("/api/admin/default-watches", json={"text": text})
        assert made.status_code == 201, made.text
        watch: dict[str, Any] = made.json()
        try:
            yield watch
        finally:
            admin.delete(f"/api/admin/default-watches/{watch['id']}").raise_for_status()


def insights(server: str) -> dict[str, Any]:
    """The demand view of the last hour, as the shop's admin reads it."""
    reply = httpx.get(
        f"{server}/api/admin/insights",
        params={"since": "1h"},
        headers=bearer(ADMIN_TOKEN),
        timeout=10,
    )
    reply.raise_for_status()
    report: dict[str, Any] = reply.json()
    return report


def default_row(report: dict[str, Any], watch_id: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = report["default_watches"]
    [row] = [row for row in rows if row["watch_id"] == watch_id]
    return row


def wait_for_visits(server: str, watch_id: str, visits: int) -> dict[str, Any]:
    """The demand view once it shows the default watch `watch_id` with `visits` visits (an
    alert's count lands in its log within seconds)."""
    seen: dict[str, Any] = {}

    def shown() -> bool:
        seen["report"] = insights(server)
        return bool(default_row(seen["report"], watch_id)["visits"] == visits)

    wait_until_sync(shown, timeout=30, what=f"{visits} visit(s) of {watch_id} in the insights")
    report: dict[str, Any] = seen["report"]
    return report


def logged_visits(settings: Settings, watch_ids: list[str]) -> int:
    """Visits of those watches in the search log itself, whatever the view lists."""
    reply = httpx.post(
        f"{settings.elasticsearch_url}/{settings.index_prefix}-searchlog-*/_count",
        json={
            "query": {
                "bool": {
                    "filter": [{"term": {"kind": "visit"}}, {"terms": {"watch_id": watch_ids}}]
                }
            }
        },
        timeout=10,
    )
    reply.raise_for_status()
    return int(reply.json()["count"])


def is_visit(request: Request) -> bool:
    return urlsplit(request.url).path == VISITS_PATH and request.method == "POST"


def test_a_followed_product_link_is_a_visit_the_shops_admin_sees(
    context: BrowserContext, server: str, searcher: Searcher
) -> None:
    with default_watch(server, "garmin forerunner") as everyones:
        page = sdk_page(context, server)
        wait_live(page)
        page.evaluate(
            """(template) => {
              const panel = document.createElement("percolert-alerts");
              panel.setAttribute("product-url", template);
              document.body.append(panel);
            }""",
            "/healthz?product={sku}",
        )
        searcher.search("Garmin Forerunner 265")
        [alert] = wait_for(page, "alert")
        assert alert["watch"]["id"] == everyones["id"]
        [product] = [p for p in alert["found"] if p["product_name"] == "Garmin Forerunner 265"]
        link = page.locator("percolert-alerts li a[part~='product-link']", has_text="Forerunner")
        address = f"{server}/healthz?product={product['sku']}"
        expect(link).to_have_attribute("href", address)
        # Followed: the page goes to the product's page. The visit is held back until the
        # product's page has replaced this one: sent with keepalive, it goes on regardless.
        held: list[Route] = []
        page.route(f"{server}{VISITS_PATH}", lambda route: held.append(route))
        link.click()
        page.wait_for_url(address)
        expect(page.locator("percolert-alerts")).to_have_count(0)  # the page is gone
        wait_in_page(page, lambda: len(held) == 1, "the visit")
        [route] = held
        assert json.loads(route.request.post_data or "") == {
            "watch_id": everyones["id"],
            "alert_id": f"alert:{alert['id']}",
        }
        route.continue_()
        report = wait_for_visits(server, everyones["id"], 1)
        row = default_row(report, everyones["id"])
        assert row["alerts"] >= 1
        assert row["reach"] >= 1
        for listed in report["alerts_per_watch"]:
            if listed["watch_id"] == everyones["id"]:
                assert listed["visits"] == 1
                assert listed["visit_rate"] == round(1 / listed["reach"], 4)


def test_product_links_are_http_encoded_text_and_count_each_alert_once(
    context: BrowserContext, server: str
) -> None:
    page = sdk_page(context, server)
    wait_live(page)
    watch = call(page, "(client) => client.addWatch({ terms: 'kobo clara' })")["value"]
    other = call(page, "(client) => client.addWatch({ terms: 'kobo libra' })")["value"]
    bodies: list[Any] = []

    def sent(request: Request) -> None:
        if is_visit(request):
            bodies.append(request.post_data_json)

    page.on("request", sent)
    sku = "KB/1 ?#&"
    page.evaluate(
        """({ watch, sku, name }) => {
          window.visits = [];
          document.addEventListener("percolert-visit", (event) => {
            const { alert, product, url } = event.detail;
            const { cancelable } = event;
            window.visits.push({ alert: alert.id, sku: product.sku, url, cancelable });
            event.preventDefault(); // the shop routes by itself: the page stays
          });
          const panel = (id, template) => {
            const made = document.createElement("percolert-alerts");
            made.id = id;
            made.setAttribute("mode", "list");
            if (template !== null) made.setAttribute("product-url", template);
            document.body.append(made);
          };
          panel("linked", "/products/{sku}?name={name}");
          panel("plain", null);
          panel("scripted", "javascript:alert(document.domain)//{sku}");
          panel("elsewhere", "ftp://shop.example/{sku}");
          const card = (sku, name) => ({
            sku, product_name: name, price: 99, previous_price: null,
            category: "e-readers", brand: "Kobo",
          });
          window.client.dispatchEvent(new CustomEvent("alert", { detail: {
            type: "alert", id: "visit-test", seq: 1, count: 1, at: new Date().toISOString(),
            watch: { id: watch.id, terms: watch.terms },
            found: [card(sku, name), card("KB-0002", "Kobo Clara BW")],
          } }));
        }""",
        {"watch": watch, "sku": sku, "name": HOSTILE},
    )
    links = page.locator("#linked a[part~='product-link']")
    expect(links).to_have_count(2)
    # The SKU and the name URL-encoded into the template, the name shown as text.
    first = urlsplit(links.first.get_attribute("href") or "")
    assert (first.scheme, first.netloc) == tuple(urlsplit(server)[:2])
    assert first.path == "/products/KB%2F1%20%3F%23%26"
    assert parse_qs(first.query) == {"name": [HOSTILE]}
    expect(links.first).to_have_text(HOSTILE)
    # No template, or one that is not http(s): the products are text, as before.
    for panel in ("#plain", "#scripted", "#elsewhere"):
        expect(page.locator(f"{panel} li")).to_contain_text("Kobo Clara BW")
        expect(page.locator(f"{panel} a")).to_have_count(0)
    assert page.locator("percolert-alerts img, percolert-alerts script").count() == 0
    # Followed (the page's router took it): the event, and the visit sent.
    links.first.click()
    wait_in_page(page, lambda: len(bodies) == 1, "the visit")
    assert bodies == [{"watch_id": watch["id"], "alert_id": "alert:visit-test"}]
    # Another of the alert's products: the event again, but the alert's visit counts once.
    links.nth(1).click()
    visits = page.evaluate("window.visits")
    assert [(v["alert"], v["sku"], v["cancelable"]) for v in visits] == [
        ("visit-test", sku, True),
        ("visit-test", "KB-0002", True),
    ]
    assert visits[1]["url"] == f"{server}/products/KB-0002?name=Kobo%20Clara%20BW"
    # (A visit sent after the clicks comes after anything they sent.)
    assert call(page, "(client, id) => client.visited(id)", other["id"]) == {"value": None}
    wait_in_page(page, lambda: len(bodies) == 2, "the second visit")
    assert bodies == [
        {"watch_id": watch["id"], "alert_id": "alert:visit-test"},
        {"watch_id": other["id"]},  # an id alone: a visit that names no alert
    ]
    assert urlsplit(page.url).path == "/healthz"  # never navigated
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("window.__violations") == []


def test_a_visit_of_a_watch_the_shopper_does_not_hear_from_is_refused_and_counted_nowhere(
    context: BrowserContext,
    browser: Browser,
    server: str,
    searcher: Searcher,
    sdk_settings: Settings,
) -> None:
    elsewhere = browser.new_context()
    try:
        stranger = sdk_page(elsewhere, server)
        wait_live(stranger)
        theirs = call(stranger, "(client) => client.addWatch({ terms: 'garmin venu' })")["value"]
        with default_watch(server, "garmin instinct") as everyones:
            page = sdk_page(context, server)
            wait_live(page)
            searcher.search("Garmin Venu 3")
            searcher.search("Garmin Instinct 2 Solar")
            stranger.wait_for_function(
                "(id) => window.events.some((e) => e.type === 'alert' && e.detail.watch.id === id)",
                arg=theirs["id"],
            )
            [alert] = wait_for(page, "alert")
            assert alert["watch"]["id"] == everyones["id"]
            # Another shopper's watch, by its id or in their alert, and a watch there is
            # not: refused.
            for script in (
                "(client, id) => client.visited(id)",
                """(client, id) => client.visited({
                  type: "alert", id: "theirs", seq: 1, count: 1, found: [], at: "",
                  watch: { id, terms: "" },
                })""",
            ):
                refused = call(page, script, theirs["id"])["error"]
                assert (refused["name"], refused["code"], refused["status"]) == (
                    "PercolertError",
                    "watch_not_found",
                    404,
                )
            missing = call(page, "(client) => client.visited('no-such-watch')")["error"]
            assert (missing["code"], missing["status"]) == ("watch_not_found", 404)
            # Not an alert nor an id: refused in the page, before any request.
            invalid = call(page, "(client) => client.visited({ type: 'alert' })")["error"]
            assert (invalid["code"], invalid["status"]) == ("invalid_visit", 0)
            # Then a visit that counts (the default watch's alert): once it shows, anything
            # logged before it would show too.
            counted = call(
                page,
                "(client) => client.visited(window.events.find((e) => e.type === 'alert').detail)",
            )
            assert counted == {"value": None}
            report = wait_for_visits(server, everyones["id"], 1)
            listed = [*report["alerts_per_watch"], *report["default_watches"]]
            assert [row["visits"] for row in listed if row["watch_id"] == theirs["id"]] in ([], [0])
            assert "no-such-watch" not in [row["watch_id"] for row in listed]
            assert logged_visits(sdk_settings, [everyones["id"]]) == 1
            assert logged_visits(sdk_settings, [theirs["id"], "no-such-watch"]) == 0
    finally:
        elsewhere.close()


# --- accounts: the shop's token -------------------------------------------------------------


def test_a_token_client_authenticates_with_its_first_message(
    context: BrowserContext, browser: Browser, server: str
) -> None:
    customer = f"customer-{time.time_ns()}"
    token = shop_token(customer)
    urls: list[str] = []
    sent: list[list[str]] = []

    def observe(page: Page) -> None:
        def opened(ws: WebSocket) -> None:
            urls.append(ws.url)
            frames: list[str] = []
            sent.append(frames)
            ws.on("framesent", lambda payload: frames.append(str(payload)))

        page.on("websocket", opened)

    page = sdk_page(context, server, tokens=[token], before_start=observe)
    wait_live(page)
    assert urls[0].endswith("/ws?auth=token")  # the token itself never in the URL
    assert json.loads(sent[0][0]) == {"type": "auth", "token": token}
    assert page.evaluate("window.tokenCalls") == ["connect"]
    # The account's watch, added with the bearer token, is the account's on any device.
    added = call(page, "(client) => client.addWatch({ terms: 'kindle oasis' })")["value"]
    with httpx.Client(base_url=server, timeout=10) as other_device:
        listed = other_device.get("/api/watches", headers=bearer(shop_token(customer))).json()
    assert added["id"] in [w["id"] for w in listed["watches"]]
    second = browser.new_context()
    try:
        laptop = sdk_page(second, server, tokens=[shop_token(customer)])
        [hello] = wait_for(laptop, "hello")
        assert added["id"] in [w["id"] for w in hello["watches"]]
    finally:
        second.close()
    assert page.evaluate("window.__violations") == []


def test_a_refused_token_is_replaced_and_the_client_reconnects(
    context: BrowserContext, server: str
) -> None:
    customer = f"customer-{time.time_ns()}"
    expired = shop_token(customer, expires_in=-60)
    page = sdk_page(
        context,
        server,
        tokens=[expired, shop_token(customer)],
        options={"reconnect": FAST_RECONNECT},
    )
    wait_live(page)
    # Refused (4401): a fresh token asked for at once, and the socket opened again with it.
    assert page.evaluate("window.tokenCalls") == ["connect", "expired"]
    assert "unauthorized" not in statuses(page)


def test_without_a_token_the_client_is_unauthorized_and_stops(
    context: BrowserContext, server: str
) -> None:
    sockets: list[str] = []
    page = sdk_page(
        context,
        server,
        tokens=[None],
        before_start=lambda page: page.on("websocket", lambda ws: sockets.append(ws.url)),
    )
    page.wait_for_function(
        "() => window.events.some((e) => e.type === 'status' && e.detail.status === 'unauthorized')"
    )
    assert page.evaluate("window.client.status") == "unauthorized"
    [error] = wait_for(page, "error")
    assert error["code"] == "unauthorized"
    assert sockets == []  # nothing opened without a token
    # A call to the API without a token is refused in the page, before any request.
    refused = call(page, "(client) => client.watches()")["error"]
    assert (refused["code"], refused["status"]) == ("unauthorized", 401)


def test_the_socket_token_is_renewed_in_place_before_it_expires(
    context: BrowserContext, server: str, searcher: Searcher
) -> None:
    customer = f"customer-{time.time_ns()}"
    expires = time.time() + 6
    sockets: list[str] = []
    page = sdk_page(
        context,
        server,
        tokens=[shop_token(customer, expires_in=6), shop_token(customer)],
        before_start=lambda page: page.on("websocket", lambda ws: sockets.append(ws.url)),
    )
    wait_live(page)
    [expiring] = wait_for(page, "token_expiring")
    assert expiring["expires_at"]
    page.wait_for_function("() => window.tokenCalls.includes('expiring')")
    call(page, "(client) => client.addWatch({ terms: 'airpods' })")
    # Past the first token's expiry the same socket still delivers.
    wait_in_page(page, lambda: time.time() > expires + 1, "the first token to expire", 15)
    searcher.search("AirPods Pro 2")
    [alert] = wait_for(page, "alert")
    assert alert["watch"]["terms"] == "airpods"
    assert len(sockets) == 1  # renewed on the socket, not reconnected
    assert "offline" not in statuses(page)


def test_an_api_call_refused_for_its_token_is_retried_once_with_a_fresh_one(
    context: BrowserContext, server: str
) -> None:
    customer = f"customer-{time.time_ns()}"
    page = sdk_page(context, server, tokens=[shop_token(customer)])
    wait_live(page)
    # The token the client holds expires before its next call (played here by the request's
    # first sending carrying an expired one): refused, a fresh token, sent again, once.
    expired = shop_token(customer, expires_in=-60)
    sent: list[str | None] = []

    def first_expired(route: Route) -> None:
        sent.append(route.request.headers.get("authorization"))
        if len(sent) == 1:
            route.continue_(headers={**route.request.headers, "authorization": f"Bearer {expired}"})
        else:
            route.continue_()

    page.route(f"{server}/api/watches", first_expired)
    added = call(page, "(client) => client.addWatch({ terms: 'kindle scribe' })")
    assert added["value"]["terms"] == "kindle scribe"
    assert page.evaluate("window.tokenCalls") == ["connect", "unauthorized"]
    assert len(sent) == 2


def test_an_erased_account_is_not_reconnected(context: BrowserContext, server: str) -> None:
    customer = f"customer-{time.time_ns()}"
    sockets: list[str] = []
    page = sdk_page(
        context,
        server,
        tokens=[shop_token(customer)],
        options={"reconnect": FAST_RECONNECT},
        before_start=lambda page: page.on("websocket", lambda ws: sockets.append(ws.url)),
    )
    wait_live(page)
    erased = httpx.delete(
        f"{server}/api/admin/accounts/{customer}", headers=bearer(ADMIN_TOKEN), timeout=10
    )
    assert erased.status_code == 200
    page.wait_for_function(
        "() => window.events.some((e) => e.type === 'status' && e.detail.status === 'unauthorized')"
    )
    [ended] = [s for s in events(page, "status") if s["status"] == "unauthorized"]
    assert ended["error"]["code"] == "account_erased"
    assert page.evaluate("window.client.status") == "unauthorized"
    # Terminal: the shop's token for the erased account is not asked for again.
    assert page.evaluate("window.tokenCalls") == ["connect"]
    assert len(sockets) == 1
    # Nor is anything written with it (it may be valid a while yet).
    refused = call(page, "(client) => client.addWatch({ terms: 'kindle' })")
    assert refused["error"]["code"] == "account_erased"
    listed = httpx.get(f"{server}/api/watches", headers=bearer(shop_token(customer)), timeout=10)
    assert [w for w in listed.json()["watches"] if not w["is_default"]] == []


def test_merge_moves_anonymous_watches_into_the_account_and_export_lists_them(
    context: BrowserContext, server: str
) -> None:
    anonymous = sdk_page(context, server)
    wait_live(anonymous)
    added = call(anonymous, "(client) => client.addWatch({ terms: 'sonos arc' })")
    assert added["value"]["terms"] == "sonos arc"
    anonymous.close()
    customer = f"customer-{time.time_ns()}"
    # The same browser (its anonymous cookie), now logged in at the shop.
    page = sdk_page(context, server, tokens=[shop_token(customer)])
    wait_live(page)
    merged = call(page, "(client) => client.mergeAnonymousWatches()")["value"]
    assert (merged["moved"], merged["duplicates"], merged["over_cap"]) == (1, 0, 0)
    again = call(page, "(client) => client.mergeAnonymousWatches()")["value"]
    assert again["moved"] == 0  # idempotent
    listed = call(page, "(client) => client.watches()")["value"]
    assert "sonos arc" in [w["terms"] for w in listed]
    exported = call(page, "(client) => client.exportMyData()")["value"]
    assert exported["identity"]["kind"] == "account"
    assert "sonos arc" in [w["terms"] for w in exported["watches"]]
    # Moved, not copied: the anonymous session has it no more.
    logged_out = sdk_page(context, server)
    listed = call(logged_out, "(client) => client.watches()")["value"]
    assert "sonos arc" not in [w["terms"] for w in listed]


# --- a storefront on another origin ---------------------------------------------------------


@contextmanager
def shop_server() -> Iterator[str]:
    """Serves an empty page at / and web/sdk/ at /sdk/ from another port of this host."""
    sdk_files = {f"/sdk/{path.name}": path for path in SDK_DIR.iterdir() if path.suffix == ".js"}

    class Shop(QuietHandler):
        def do_GET(self) -> None:
            if self.path in sdk_files:
                self.reply(sdk_files[self.path].read_bytes(), "text/javascript")
            else:
                self.reply(TEST_PAGE.encode(), "text/html")

    with http_server(Shop) as url:
        yield url


def test_a_storefront_on_another_origin_uses_the_sdk_anonymously(
    context: BrowserContext, server: str, storefront: str, searcher: Searcher
) -> None:
    page = context.new_page()
    page.goto(storefront)
    start(page, "/sdk", options={"baseUrl": server})
    wait_live(page)
    added = call(page, "(client) => client.addWatch({ terms: 'bose quietcomfort' })")
    assert added["value"]["terms"] == "bose quietcomfort"
    searcher.search("Bose QuietComfort Ultra")
    [alert] = wait_for(page, "alert")
    assert alert["watch"]["terms"] == "bose quietcomfort"


def test_a_storefront_on_another_origin_uses_the_sdk_with_a_token(
    context: BrowserContext, server: str, storefront: str
) -> None:
    customer = f"customer-{time.time_ns()}"
    page = context.new_page()
    page.goto(storefront)
    start(page, "/sdk", tokens=[shop_token(customer)], options={"baseUrl": server})
    wait_live(page)
    added = call(page, "(client) => client.addWatch({ terms: 'jbl tune' })")["value"]
    with httpx.Client(base_url=server, timeout=10) as backend:
        listed = backend.get("/api/watches", headers=bearer(shop_token(customer))).json()
    assert added["id"] in [w["id"] for w in listed["watches"]]


def test_a_storefront_on_another_origin_reports_visits_anonymously_and_with_a_token(
    context: BrowserContext, server: str, storefront: str
) -> None:
    """Across origins the visit is a credentialed keepalive request with a preflight (its
    JSON body): the server's CORS must answer both."""
    anonymous = context.new_page()
    anonymous.goto(storefront)
    start(anonymous, "/sdk", options={"baseUrl": server})
    wait_live(anonymous)
    mine = call(anonymous, "(client) => client.addWatch({ terms: 'garmin vivoactive' })")["value"]
    with anonymous.expect_response(lambda reply: is_visit(reply.request)) as answered:
        assert call(anonymous, "(client, id) => client.visited(id)", mine["id"]) == {"value": None}
    assert answered.value.status == 204
    customer = f"customer-{time.time_ns()}"
    page = context.new_page()
    page.goto(storefront)
    start(page, "/sdk", tokens=[shop_token(customer)], options={"baseUrl": server})
    wait_live(page)
    theirs = call(page, "(client) => client.addWatch({ terms: 'garmin epix' })")["value"]
    with page.expect_request(is_visit) as sent:
        assert call(page, "(client, id) => client.visited(id)", theirs["id"]) == {"value": None}
    assert sent.value.headers["authorization"].startswith("Bearer ")
    # The anonymous shopper's watch is not the customer's.
    refused = call(page, "(client, id) => client.visited(id)", mine["id"])["error"]
    assert (refused["code"], refused["status"]) == ("watch_not_found", 404)


# --- the package ----------------------------------------------------------------------------


def test_the_module_exports_what_its_declarations_say(context: BrowserContext, server: str) -> None:
    page = sdk_page(context, server)
    exported = page.evaluate(
        """async () => {
          const sdk = await import("/static/sdk/percolert.js");
          const components = await import("/static/sdk/components.js");
          const own = (object) => Object.getOwnPropertyNames(object).sort();
          const methods = (cls) => own(cls.prototype).filter((n) => n !== "constructor");
          return {
            sdk: Object.keys(sdk).sort(),
            components: Object.keys(components).sort(),
            client: methods(sdk.Percolert),
            statics: own(sdk.Percolert).filter((n) => !["length", "name", "prototype"].includes(n)),
          };
        }"""
    )
    declared = (SDK_DIR / "percolert.d.ts").read_text()
    declared_components = (SDK_DIR / "components.d.ts").read_text()
    assert exported["sdk"] == sorted(
        re.findall(r"^export declare (?:const|class) (\w+)", declared, re.M)
    )
    assert exported["components"] == sorted(
        re.findall(r"^export declare (?:const|class|function) (\w+)", declared_components, re.M)
    )
    body = declared.split("export declare class Percolert extends EventTarget {", 1)[1]
    members = set(re.findall(r"^  (?:readonly |static readonly |static )?(\w+)[(:?<]", body, re.M))
    inherited = {"constructor", "addEventListener", "removeEventListener"}
    assert set(exported["client"]) | set(exported["statics"]) == members - inherited
    package = json.loads((SDK_DIR / "package.json").read_text())
    assert package["name"] == "@percolert/sdk"
    for entry in package["exports"].values():
        if isinstance(entry, dict):
            for path in entry.values():
                assert (SDK_DIR / path).is_file(), path
                assert path.removeprefix("./") in package["files"]


def test_the_declarations_compile_under_strict_typescript() -> None:
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("needs Node.js (npx) to run the TypeScript compiler")
    checked = subprocess.run(
        [
            npx,
            "--yes",
            "--package=typescript@5.9.3",
            "tsc",
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "es2022",
            "--moduleResolution",
            "bundler",
            "--lib",
            "es2022,dom,dom.iterable",
            "types-check.ts",
        ],
        cwd=SDK_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
