"""What a watch notifies of (`notify`: searches, products or both), against a real server,
real sockets and a real node: set when a watch is made, changed by PATCH /api/watches/{id},
shown wherever watches are, and honoured by the search path (a watch notifying of products
only hears of no search)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.watches.store import SeedFileError, parse_seed_file
from tests.conftest import run_cli
from tests.servers import run_server
from tests.shoppers import Shopper, Socket, default_watch
from tests.web.test_limits import FOREVER, assert_rate_limited, limited
from tests.web.test_watches_api import HOSTILE_IDS

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(catalog_settings: Settings) -> Iterator[str]:
    # No coalescing: every matching search is an alert of its own, at once.
    with run_server(msgspec.structs.replace(catalog_settings, coalesce_seconds=0.0)) as url:
        yield url


async def patch(shopper: Shopper, watch_id: str, body: object) -> Any:
    return await shopper.http.patch(f"/api/watches/{watch_id}", json=body)


async def set_notify(shopper: Shopper, watch_id: str, notify: str) -> dict[str, Any]:
    response = await patch(shopper, watch_id, {"notify": notify})
    assert response.status_code == 200, response.text
    watch: dict[str, Any] = response.json()
    return watch


async def listed(shopper: Shopper) -> dict[str, str]:
    """The shopper's own watches: id → notify."""
    watches = (await shopper.http.get("/api/watches")).json()["watches"]
    return {watch["id"]: watch["notify"] for watch in watches if not watch["is_default"]}


async def search_alerts(
    watcher: Shopper, socket: Socket, searcher: Shopper, text: str
) -> list[str]:
    """The ids of the watches of `watcher` alerted (on `socket`) by `searcher` searching
    `text`: everything that arrives before a marker search made after it."""
    await searcher.search(text)
    return [alert["watch"]["id"] for alert in await watcher.alerts_before_marker(socket, searcher)]


async def watches_changed(socket: Socket) -> list[dict[str, Any]]:
    message = await socket.receive()
    assert message is not None
    assert message["type"] == "watches_changed", message
    watches: list[dict[str, Any]] = message["watches"]
    return watches


async def test_notify_is_kept_and_shown_in_listing_hello_and_watches_changed(server: str) -> None:
    async with Shopper(server) as a:
        tab = await a.connect()
        plain = await a.watch("oasis")
        assert plain["notify"] == "both"  # the default
        assert [item["notify"] for item in await watches_changed(tab)] == ["both"]
        products = await a.watch("paperwhite", notify="products")
        assert products["notify"] == "products"
        told = {item["id"]: item["notify"] for item in await watches_changed(tab)}
        assert told == {plain["id"]: "both", products["id"]: "products"}
        assert await listed(a) == told
        later = await a.connect()
        assert {item["id"]: item["notify"] for item in later.hello["watches"]} == told
        # What a watch notifies of is no part of what it means: the same words are a duplicate.
        again = await a.http.post("/api/watches", json={"terms": "Oasis", "notify": "searches"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "duplicate_watch"
        assert await listed(a) == told
        for watch in (plain, products):
            await a.unwatch(watch["id"])


async def test_only_watches_notifying_of_searches_hear_of_searches(server: str) -> None:
    async with (
        Shopper(server) as searcher,
        Shopper(server) as searches,
        Shopper(server) as products,
        Shopper(server) as both,
    ):
        watchers = {"searches": searches, "products": products, "both": both}
        made = {
            notify: await who.watch("kindle", notify=notify) for notify, who in watchers.items()
        }
        sockets = {notify: await who.connect() for notify, who in watchers.items()}
        await searcher.search("kindle scribe")
        heard = {
            notify: [
                alert["watch"]["id"]
                for alert in await who.alerts_before_marker(sockets[notify], searcher)
            ]
            for notify, who in watchers.items()
        }
        assert heard == {
            "searches": [made["searches"]["id"]],
            "products": [],
            "both": [made["both"]["id"]],
        }


async def test_patch_stops_and_restarts_search_alerts_from_the_next_search(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("chromebook")
        socket = await a.connect()
        assert await search_alerts(a, socket, b, "chromebook deals") == [watch["id"]]

        changed = await set_notify(a, watch["id"], "products")
        assert changed == {**watch, "notify": "products"}
        assert await listed(a) == {watch["id"]: "products"}
        assert await search_alerts(a, socket, b, "chromebook deals") == []

        assert (await set_notify(a, watch["id"], "both"))["notify"] == "both"
        assert await search_alerts(a, socket, b, "chromebook deals") == [watch["id"]]
        assert (await set_notify(a, watch["id"], "searches"))["notify"] == "searches"
        assert await search_alerts(a, socket, b, "chromebook deals") == [watch["id"]]
        await a.unwatch(watch["id"])


async def test_every_tab_of_the_owner_hears_the_change(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("garmin")
        tabs = [await a.connect(), await a.connect()]
        other = await b.connect()
        await set_notify(a, watch["id"], "searches")
        for tab in tabs:
            assert [(item["id"], item["notify"]) for item in await watches_changed(tab)] == [
                (watch["id"], "searches")
            ]
        # b's next message is of b's own change: a's never reached b.
        own = await b.watch("fitbit")
        assert [item["id"] for item in await watches_changed(other)] == [own["id"]]
        for who, made in ((a, watch), (b, own)):
            await who.unwatch(made["id"])


async def test_another_shoppers_or_a_default_watch_is_not_found(
    server: str, catalog_settings: Settings
) -> None:
    async with (
        Shopper(server) as a,
        Shopper(server) as b,
        default_watch(catalog_settings, "roomba") as (default, _),
    ):
        watch = await a.watch("roomba", notify="both")
        socket = await a.connect()
        for who, watch_id in ((b, watch["id"]), (a, default.id), (b, default.id)):
            refused = await patch(who, watch_id, {"notify": "products"})
            assert refused.status_code == 404, refused.text
            assert refused.json()["error"]["code"] == "watch_not_found"
        assert await socket.messages_before_pong() == []  # no watches_changed
        assert await listed(a) == {watch["id"]: "both"}
        seen = (await a.http.get("/api/watches")).json()["watches"]
        assert [item["notify"] for item in seen if item["id"] == default.id] == ["both"]
        # Both still notify of searches (one alert per person and search, whichever).
        assert len(await search_alerts(a, socket, b, "roomba")) == 1
        await a.unwatch(watch["id"])


@pytest.mark.parametrize("watch_id", HOSTILE_IDS, ids=lambda watch_id: watch_id[:20])
async def test_ids_the_server_never_issues_are_404(server: str, watch_id: str) -> None:
    async with Shopper(server) as a:
        refused = await patch(a, watch_id, {"notify": "searches"})
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "watch_not_found"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"notify": "sometimes"}', "invalid_watch"),
        (b'{"notify": "PRODUCTS"}', "invalid_watch"),
        (b'{"notify": null}', "invalid_watch"),
        (b'{"notify": "both", "terms": "other words"}', "invalid_watch"),
        (b'{"notify": "both", "owner": "someone"}', "invalid_watch"),
        (b"{}", "invalid_watch"),
        (b'"both"', "invalid_watch"),
        (b"[]", "invalid_watch"),
        (b'{"notify": ', "invalid_json"),
        (b"", "invalid_json"),
    ],
)
async def test_bad_bodies_are_400_and_change_nothing(server: str, body: bytes, code: str) -> None:
    async with Shopper(server) as a:
        watch = await a.watch("kobo", notify="products")
        socket = await a.connect()
        response = await a.http.patch(f"/api/watches/{watch['id']}", content=body, headers=JSON)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert error["message"]
        if code == "invalid_watch":
            assert "notify" in error["message"]
        assert await listed(a) == {watch["id"]: "products"}
        assert await socket.messages_before_pong() == []  # no watches_changed
        await a.unwatch(watch["id"])


async def test_foreign_pages_and_bodies_other_than_json_cannot_change_a_watch(server: str) -> None:
    async with Shopper(server) as a:
        watch = await a.watch("fujifilm")
        body = b'{"notify": "products"}'
        url = f"/api/watches/{watch['id']}"
        foreign = await a.http.patch(url, content=body, headers={**JSON, "origin": "http://x.test"})
        assert foreign.status_code == 403
        assert foreign.json()["error"]["code"] == "forbidden_origin"
        plain = await a.http.patch(url, content=body, headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        assert await listed(a) == {watch["id"]: "both"}
        own = await a.http.patch(url, content=body, headers={**JSON, "origin": server})
        assert own.status_code == 200, own.text
        await a.unwatch(watch["id"])


async def test_a_change_counts_against_the_watch_change_limit(catalog_settings: Settings) -> None:
    settings = limited(catalog_settings, limit_watch_changes_per_session=f"2/{FOREVER}")
    with run_server(settings) as url:
        async with Shopper(url) as a:
            watch = await a.watch("kindle")
            await set_notify(a, watch["id"], "searches")
            assert_rate_limited(await patch(a, watch["id"], {"notify": "products"}))
            assert await listed(a) == {watch["id"]: "searches"}


def test_cli_adds_a_default_watch_with_notify_and_lists_it(catalog_settings: Settings) -> None:
    added = run_cli(
        catalog_settings, "watches", "add", "--default", "zzclinotify", "--notify", "searches"
    )
    assert added.returncode == 0, added.stderr
    watch_id = added.stdout.split()[1]
    try:
        assert '"zzclinotify", notify searches' in added.stdout
        listing = run_cli(catalog_settings, "watches", "list", "--defaults").stdout
        assert f"{watch_id}  default" in listing
        assert '"zzclinotify", notify searches' in listing
    finally:
        assert run_cli(catalog_settings, "watches", "rm", watch_id).returncode == 0
    # A default watch never alerts of products: one that would notify of nothing else is
    # refused, not kept silent.
    refused = run_cli(
        catalog_settings, "watches", "add", "--default", "zzclinotify", "--notify", "products"
    )
    assert refused.returncode == 1
    assert "never alerts of products" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "zzclinotify" not in run_cli(catalog_settings, "watches", "list", "--defaults").stdout


def test_a_seed_file_may_not_make_a_default_watch_of_products_only() -> None:
    data = (
        b'[\n  {"terms": "kindle", "notify": "searches"},\n'
        b'  {"terms": "kobo", "notify": "products"}\n]'
    )
    with pytest.raises(SeedFileError) as refused:
        parse_seed_file(data, TextNormalizer())
    [(line, reason)] = refused.value.problems
    assert line == 3
    assert "never alerts of products" in reason
    assert [
        spec.notify
        for spec in parse_seed_file(data.replace(b"products", b"both"), TextNormalizer())
    ] == ["searches", "both"]
