"""The heart of Percolert, end to end: real server, real node, real WebSocket clients,
asserting who receives what and who does not."""

from __future__ import annotations

import json
from collections.abc import Iterator

import msgspec
import pytest
from websockets.exceptions import InvalidStatus

from percolert.core.settings import Settings
from tests.servers import metric, run_server
from tests.shoppers import Shopper, default_watch
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

WINDOW = 1.0  # coalescing window of this module's server, seconds


async def every_window_closed(server: str) -> None:
    """Every coalescing window has ended, its follow-up (if any) sent."""
    await wait_until(
        lambda: metric(server, "percolert_coalescing_windows") == 0,
        what="every coalescing window to close",
    )


@pytest.fixture(scope="module")
def alert_settings(catalog_settings: Settings) -> Settings:
    return msgspec.structs.replace(
        catalog_settings, coalesce_seconds=WINDOW, max_watches_per_user=5
    )


@pytest.fixture(scope="module")
def server(alert_settings: Settings) -> Iterator[str]:
    with run_server(alert_settings) as url:
        yield url


async def test_only_the_watcher_is_alerted_about_someone_elses_search(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b, Shopper(server) as c:
        watch = await a.watch("kindle")
        a_socket, b_socket, c_socket = await a.connect(), await b.connect(), await c.connect()
        await b.search("Kindle Paperwhite")

        alert = await a_socket.next_alert()
        assert alert is not None
        assert alert["watch"] == {"id": watch["id"], "terms": "kindle"}
        # What the search found, as the catalog has it: never the words typed.
        assert alert["found"][0]["product_name"].startswith("Kindle Paperwhite")
        assert "query" not in alert
        assert alert["count"] == 1
        assert await a.alerts_before_marker(a_socket, c) == []  # exactly one
        assert await b.alerts_before_marker(b_socket, c) == []
        assert await c.alerts_before_marker(c_socket, b) == []
        await a.unwatch(watch["id"])


async def test_every_open_tab_of_the_watcher_gets_it(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("macbook air")
        tabs = [await a.connect(), await a.connect(), await a.connect()]
        await b.search("MacBook Air 13")
        alerts = [await tab.next_alert() for tab in tabs]
        assert all(alert is not None for alert in alerts)
        assert len({alert["id"] for alert in alerts if alert}) == 1  # the same alert everywhere
        await a.unwatch(watch["id"])


async def test_own_searches_never_alert(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("paperwhite")
        socket = await a.connect()
        await a.search("kindle paperwhite")
        assert await a.alerts_before_marker(socket, b) == []
        await a.unwatch(watch["id"])


async def test_a_default_watch_reaches_everyone_but_the_searcher(
    server: str, alert_settings: Settings
) -> None:
    async with (
        default_watch(alert_settings, "playstation") as (default, _),
        Shopper(server) as a,
        Shopper(server) as b,
        Shopper(server) as c,
    ):
        sockets = {"a": await a.connect(), "b": await b.connect(), "c": await c.connect()}
        assert any(w["id"] == default.id and w["is_default"] for w in sockets["a"].hello["watches"])
        await b.search("PlayStation 5 Pro")
        for name in ("a", "c"):
            alert = await sockets[name].next_alert()
            assert alert is not None, name
            assert alert["watch"]["id"] == default.id
        assert await b.alerts_before_marker(sockets["b"], c) == []


async def test_no_alert_after_the_watch_is_deleted(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("galaxy")
        socket = await a.connect()
        await a.unwatch(watch["id"])
        changed = await socket.receive()
        assert changed is not None
        assert changed["type"] == "watches_changed"
        await b.search("galaxy s25")
        assert await a.alerts_before_marker(socket, b) == []


async def test_repeats_within_the_window_coalesce_into_one_alert_with_a_count(
    server: str,
) -> None:
    async with Shopper(server) as a, Shopper(server) as b, Shopper(server) as c:
        watch = await a.watch("headphones")
        socket = await a.connect()
        await b.search("sony headphones")
        first = await socket.next_alert()
        assert first is not None
        assert first["count"] == 1
        assert first["found"][0]["brand"] == "Sony"
        for text in ("bose headphones", "headphones", "jbl headphones", "beats headphones"):
            await (b if text != "headphones" else c).search(text)
        follow_up = await socket.next_alert(timeout=WINDOW + 2)
        assert follow_up is not None
        assert follow_up["count"] == 4
        # What the folded searches found, the latest search's first, at most three.
        assert follow_up["found"][0]["brand"] == "Beats"
        assert len(follow_up["found"]) == 3
        await every_window_closed(server)
        assert await a.alerts_before_marker(socket, b) == []  # nothing more: the flood is over
        await a.unwatch(watch["id"])


async def test_one_alert_per_search_when_ones_own_and_a_default_watch_match(
    server: str, alert_settings: Settings
) -> None:
    async with (
        default_watch(alert_settings, "kindle"),
        Shopper(server) as a,
        Shopper(server) as b,
    ):
        own = await a.watch("kindle")
        socket = await a.connect()
        for text in ("kindle one", "kindle two", "kindle three"):
            await b.search(text)
        first = await socket.next_alert()
        assert first is not None
        assert (first["watch"]["id"], first["count"]) == (own["id"], 1)
        follow_up = await socket.next_alert(timeout=WINDOW + 2)
        assert follow_up is not None
        assert (follow_up["watch"]["id"], follow_up["count"]) == (own["id"], 2)
        await every_window_closed(server)
        assert await a.alerts_before_marker(socket, b) == []  # not a second follow-up
        await a.unwatch(own["id"])


async def test_the_alert_names_the_search_never_the_searcher(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("iphone")
        socket = await a.connect()
        b_socket = await b.connect()
        b_user_hint = b.cookie.split(".")[0]  # the user id is the signed part of the cookie
        await b.search("iphone 16 pro")
        alert = await socket.next_alert()
        assert alert is not None
        assert set(alert) == {"type", "id", "seq", "watch", "found", "count", "at"}
        text = json.dumps(alert)
        assert b_user_hint not in text
        assert b.cookie not in text
        assert await a.alerts_before_marker(socket, b) == []  # that alert was all
        await b_socket.close()
        await a.unwatch(watch["id"])


async def test_forged_and_foreign_handshakes_are_refused(server: str) -> None:
    async with Shopper(server) as a:
        middle = len(a.cookie) - 10  # inside the signature; every bit of that character counts
        flipped = "A" if a.cookie[middle] != "A" else "B"
        signature_flipped = a.cookie[:middle] + flipped + a.cookie[middle + 1 :]
        for cookie in ("someone-else", signature_flipped, "x." + a.cookie.split(".", 1)[1]):
            with pytest.raises(InvalidStatus) as refused:
                await a.connect(cookie=cookie)
            assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as foreign:
            await a.connect(origin="https://evil.example")
        assert foreign.value.response.status_code == 403
        assert (await a.connect()).hello["type"] == "hello"  # the genuine one still works


async def test_allowed_origins_may_connect(alert_settings: Settings) -> None:
    settings = msgspec.structs.replace(
        alert_settings, allowed_origins=("https://shop.example.com",)
    )
    with run_server(settings) as url:
        async with Shopper(url) as a:
            socket = await a.connect(origin="https://shop.example.com")
            assert socket.hello["type"] == "hello"


async def test_matching_ignores_case_plurals_and_punctuation(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("Charger, USB-C!")
        socket = await a.connect()
        await b.search("usb c CHARGERS")
        alert = await socket.next_alert()
        assert alert is not None
        assert alert["watch"]["id"] == watch["id"]
        await a.unwatch(watch["id"])


async def test_all_terms_must_occur(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("sony headphones")
        socket = await a.connect()
        await b.search("sony tv")
        await b.search("bose headphones")
        assert await a.alerts_before_marker(socket, b) == []
        await b.search("headphones by sony")
        assert await socket.next_alert() is not None
        await a.unwatch(watch["id"])


async def test_category_and_price_apply_to_what_the_search_found(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        cheap = await a.watch("headphones", category="audio", max_price=150)
        too_cheap = await a.watch("headphones", category="audio", max_price=20)
        wrong_category = await a.watch("headphones", category="laptops")
        socket = await a.connect()
        # The search finds audio products, the cheapest well under $150 but over $20.
        found = (await b.search("noise cancelling headphones", size=20)).json()["results"]
        assert min(hit["price"] for hit in found) < 150
        alerts = await a.alerts_before_marker(socket, b)
        assert [alert["watch"]["id"] for alert in alerts] == [cheap["id"]]
        for watch in (cheap, too_cheap, wrong_category):
            await a.unwatch(watch["id"])


async def test_phrase_watches_need_the_words_together(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("noise cancelling", phrase=True)
        socket = await a.connect()
        await b.search("cancelling the noise")
        assert await a.alerts_before_marker(socket, b) == []
        await b.search("Noise-Cancelling earbuds")
        assert await socket.next_alert() is not None
        await a.unwatch(watch["id"])


async def test_one_search_alerts_each_of_hundreds_of_open_sockets(server: str) -> None:
    """300 open tabs of the watcher each get the alert of one search, and the search is
    answered. How fast, and whether searches slow down as sockets grow, is a benchmark's
    question, not a unit test's on a shared machine: bench/harness.py records search and
    alert latency for every design at 1k-10k sockets (`percolert-broadcast`: each search
    alerts every socket; search p50/p99 per step in docs/benchmarks/results.md, summed up
    under "Equal work (broadcast)" in docs/benchmarks/README.md)."""
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("oasis")
        tabs = [await a.connect() for _ in range(300)]
        await b.search("kindle oasis")
        alerts = [alert for tab in tabs if (alert := await tab.next_alert()) is not None]
        assert len(alerts) == len(tabs)
        assert len({alert["id"] for alert in alerts}) == 1  # the same alert on every tab
        assert {alert["found"][0]["sku"] for alert in alerts} == {"ER-0004"}
        await a.unwatch(watch["id"])


async def test_with_alerts_off_search_works_and_nobody_is_alerted(
    alert_settings: Settings,
) -> None:
    """PERCOLERT_ALERTS=off sheds the percolation: searches answer, sockets stay open, and
    a watch that would match gets nothing (the same watch alerts with alerts on, above)."""
    off = msgspec.structs.replace(alert_settings, alerts_enabled=False)
    with run_server(off) as url:
        async with Shopper(url) as a, Shopper(url) as b:
            watch = await a.watch("kindle")
            socket = await a.connect()
            response = await b.search("Kindle Paperwhite")
            assert response.status_code == 200
            assert response.json()["results"]
            # The search was answered and, with alerts off, never handed to percolation: what
            # the socket was sent by now is all it will get.
            assert await socket.messages_before_pong() == []
            assert metric(url, "percolert_percolate_batch_size_count") == 0
            assert metric(url, "percolert_alerts_created_total") == 0
            await a.unwatch(watch["id"])
