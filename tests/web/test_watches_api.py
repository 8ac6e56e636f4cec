"""The watches API and the `percolert watches` CLI, against a real server and node."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest

from percolert.core.settings import Settings
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices, run_cli
from tests.servers import free_port, run_server
from tests.shoppers import Shopper

pytestmark = pytest.mark.anyio

LIMIT = 4


@pytest.fixture(scope="module")
def watch_settings(elasticsearch_url: str) -> Iterator[Settings]:
    """A deployment of its own (fresh indices), so default-watch seeding sees only its own;
    with the sample catalog, whose categories watches may name."""
    settings = make_settings(elasticsearch_url, max_watches_per_user=LIMIT)
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture(scope="module")
def server(watch_settings: Settings) -> Iterator[str]:
    with run_server(watch_settings) as url:
        yield url


async def test_add_list_and_remove_own_watches(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        created = await a.http.post(
            "/api/watches",
            json={"terms": "  Noise   Cancelling ", "category": " Audio", "max_price": 199.99},
        )
        assert created.status_code == 201
        watch = created.json()
        assert watch["terms"] == "Noise Cancelling"
        assert watch["category"] == "audio"
        assert watch["max_price"] == 199.99
        assert watch["is_default"] is False

        listed = (await a.http.get("/api/watches")).json()["watches"]
        assert [item["id"] for item in listed] == [watch["id"]]
        assert (await b.http.get("/api/watches")).json()["watches"] == []

        # Someone else cannot delete it, and cannot tell it exists.
        refused = await b.http.delete(f"/api/watches/{watch['id']}")
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "watch_not_found"
        await a.unwatch(watch["id"])
        assert (await a.http.delete(f"/api/watches/{watch['id']}")).status_code == 404
        assert (await a.http.get("/api/watches")).json()["watches"] == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"terms": ""}, 400, "invalid_watch"),
        ({"terms": "!!! ..."}, 400, "invalid_watch"),
        ({"terms": "x" * 101}, 400, "invalid_watch"),
        ({}, 400, "invalid_watch"),
        ({"terms": "kindle", "max_price": 0}, 400, "invalid_watch"),
        ({"terms": "kindle", "max_price": "cheap"}, 400, "invalid_watch"),
        ({"terms": "kindle", "query": {"match_all": {}}}, 400, "invalid_watch"),
        ({"terms": ["kindle"]}, 400, "invalid_watch"),
        # Watches must name something: not stop words, lone letters or bare numbers only.
        ({"terms": "the"}, 400, "invalid_watch"),
        ({"terms": "a"}, 400, "invalid_watch"),
        ({"terms": "5"}, 400, "invalid_watch"),
        ({"terms": "the a 5 of x 2026"}, 400, "invalid_watch"),
        ({"terms": "for the", "phrase": True}, 400, "invalid_watch"),
    ],
)
async def test_bad_specs_are_refused_clearly(
    server: str, body: dict[str, object], status: int, code: str
) -> None:
    async with Shopper(server) as a:
        response = await a.http.post("/api/watches", json=body)
        assert response.status_code == status
        error = response.json()["error"]
        assert error["code"] == code
        assert error["message"]
        assert (await a.http.get("/api/watches")).json()["watches"] == []


async def test_malformed_and_oversized_bodies(server: str) -> None:
    async with Shopper(server) as a:
        broken = await a.http.post(
            "/api/watches", content=b'{"terms": ', headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "invalid_json"
        huge = await a.http.post(
            "/api/watches",
            content=b" " * 5000 + b'{"terms": "x"}',
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "body_too_large"


async def test_duplicates_and_the_per_user_limit_are_409(server: str) -> None:
    async with Shopper(server) as a:
        first = await a.watch("kindle")
        again = await a.http.post("/api/watches", json={"terms": "KINDLE"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "duplicate_watch"
        for terms in ("iphone", "ipad", "macbook"):
            await a.watch(terms)
        over = await a.http.post("/api/watches", json={"terms": "pixel"})
        assert over.status_code == 409
        assert over.json()["error"]["code"] == "too_many_watches"
        assert str(LIMIT) in over.json()["error"]["message"]
        await a.unwatch(first["id"])
        await a.watch("pixel")  # room again


async def test_terms_are_measured_once_trimmed(server: str) -> None:
    async with Shopper(server) as a:
        word = "w" * 100
        padded = await a.watch(f"   {word}  ")
        assert padded["terms"] == word
        spaced = await a.watch("   ".join(["abc"] * 25))  # 99 characters once spaces collapse
        assert spaced["terms"] == " ".join(["abc"] * 25)
        too_long = await a.http.post("/api/watches", json={"terms": f"  {word}x  "})
        assert too_long.status_code == 400
        assert too_long.json()["error"]["code"] == "invalid_watch"
        assert "100" in too_long.json()["error"]["message"]
        for watch in (padded, spaced):
            await a.unwatch(watch["id"])


async def test_the_same_words_in_another_order_are_a_duplicate(server: str) -> None:
    async with Shopper(server) as a:
        first = await a.watch("Dup Watch")
        for terms in ("watch dup", "WATCH, dup!", "dup dup watch", "the watch for dup"):
            again = await a.http.post("/api/watches", json={"terms": terms})
            assert again.status_code == 409, terms
            assert again.json()["error"]["code"] == "duplicate_watch"
        # Other conditions make another watch; so does a phrase, whose word order matters.
        cheap = await a.watch("watch dup", max_price=50)
        phrase = await a.watch("dup watch", phrase=True)
        reversed_phrase = await a.watch("watch dup", phrase=True)
        again = await a.http.post("/api/watches", json={"terms": "Dup  Watch", "phrase": True})
        assert again.status_code == 409
        for watch in (first, cheap, phrase, reversed_phrase):
            await a.unwatch(watch["id"])


async def test_an_unknown_category_is_refused_with_the_known_ones(server: str) -> None:
    async with Shopper(server) as a:
        refused = await a.http.post("/api/watches", json={"terms": "kindle", "category": "ebooks"})
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "unknown_category"
        assert "'ebooks'" in error["message"]
        known = (await a.http.get("/api/categories")).json()["categories"]
        assert "e-readers" in known
        for category in known:
            assert category in error["message"]
        accepted = await a.watch("kindle", category=" E-Readers ")
        assert accepted["category"] == "e-readers"
        assert [item["id"] for item in (await a.http.get("/api/watches")).json()["watches"]] == [
            accepted["id"]
        ]
        await a.unwatch(accepted["id"])


HOSTILE_IDS = [
    "_search",
    "_count",
    "_mapping",
    "%2e%2e",  # (a literal ".." would be resolved by the client before sending)
    "_doc%3Fpretty",
    "w-" + "0" * 19 + "g",
    "default-" + "A" * 16,
    "x" * 8000,
]


@pytest.mark.parametrize("watch_id", HOSTILE_IDS, ids=lambda watch_id: watch_id[:20])
async def test_ids_the_server_never_issues_are_404(server: str, watch_id: str) -> None:
    async with Shopper(server) as a:
        watch = await a.watch("kindle")
        response = await a.http.delete(f"/api/watches/{watch_id}")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "watch_not_found"
        listed = (await a.http.get("/api/watches")).json()["watches"]
        assert [item["id"] for item in listed] == [watch["id"]]
        await a.unwatch(watch["id"])


async def test_errors_never_name_the_cluster(watch_settings: Settings) -> None:
    """With Elasticsearch unreachable, a foreign-looking id is still 404 (nothing was asked of
    Elasticsearch), and the 503s say nothing of where the cluster is."""
    closed = f"127.0.0.1:{free_port()}"
    settings = msgspec.structs.replace(watch_settings, elasticsearch_url=f"http://{closed}")
    with run_server(settings) as server:
        async with Shopper(server) as a:
            for watch_id in ("_search", "%2e%2e", "x" * 8000):
                response = await a.http.delete(f"/api/watches/{watch_id}")
                assert response.status_code == 404, response.text
            failures = [
                await a.http.delete(f"/api/watches/w-{'0' * 20}"),
                await a.http.get("/api/watches"),
                await a.http.post("/api/watches", json={"terms": "kindle"}),
                await a.http.get("/api/search", params={"q": "kindle"}),
                await a.http.get("/api/categories"),
                await a.http.get("/readyz"),
            ]
            for response in failures:
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "elasticsearch_unavailable"
                assert closed not in response.text
                assert "127.0.0.1" not in response.text


async def test_the_limit_holds_under_concurrent_requests(server: str) -> None:
    async with Shopper(server) as a:
        statuses: list[int] = []

        async def add(terms: str) -> None:
            response = await a.http.post("/api/watches", json={"terms": terms})
            statuses.append(response.status_code)

        async with anyio.create_task_group() as tasks:
            for number in range(12):
                tasks.start_soon(add, f"word{number}")
        assert sorted(statuses) == [201] * LIMIT + [409] * (12 - LIMIT)
        assert len((await a.http.get("/api/watches")).json()["watches"]) == LIMIT


async def test_every_socket_of_the_user_hears_watches_changed(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        tabs = [await a.connect(), await a.connect()]
        other = await b.connect()
        watch = await a.watch("steam deck")
        for tab in tabs:
            message = await tab.receive()
            assert message is not None
            assert message["type"] == "watches_changed"
            assert [item["id"] for item in message["watches"]] == [watch["id"]]
        # b's next message is about b's own change: a's never reached b.
        own = await b.watch("switch lite")
        message = await other.receive()
        assert message is not None
        assert message["type"] == "watches_changed"
        listed = [item["id"] for item in message["watches"]]
        assert own["id"] in listed
        assert watch["id"] not in listed
        await b.unwatch(own["id"])
        await a.unwatch(watch["id"])
        for tab in tabs:
            message = await tab.receive()
            assert message is not None
            assert message["watches"] == []


async def test_cli_seeds_default_watches_idempotently(
    server: str, watch_settings: Settings, tmp_path: Path
) -> None:
    shipped = Path(__file__).resolve().parents[2] / "data" / "default_watches.json"
    count = len(json.loads(shipped.read_text()))
    first = run_cli(watch_settings, "watches", "seed", str(shipped))
    assert first.returncode == 0, first.stderr
    assert f"{count} added, 0 unchanged, 0 removed" in first.stdout
    again = run_cli(watch_settings, "watches", "seed", str(shipped))
    assert f"0 added, {count} unchanged, 0 removed" in again.stdout

    async with Shopper(server) as a:
        listed = (await a.http.get("/api/watches")).json()["watches"]
        assert len(listed) == count
        assert all(watch["is_default"] for watch in listed)
        default_id = listed[0]["id"]
        assert (await a.http.delete(f"/api/watches/{default_id}")).status_code == 404

    changed = tmp_path / "defaults.json"
    changed.write_text('[\n  {"terms": "kindle"},\n  {"terms": "steam deck"}\n]\n')
    updated = run_cli(watch_settings, "watches", "seed", str(changed))
    assert "1 added, 1 unchanged" in updated.stdout
    assert f"{count - 1} removed" in updated.stdout
    listing = run_cli(watch_settings, "watches", "list", "--defaults")
    assert '"steam deck"' in listing.stdout
    assert '"iphone"' not in listing.stdout

    broken = tmp_path / "broken.json"
    broken.write_text(
        '[\n  {"terms": "ok"},\n  {"terms": ""},\n  {"terms": "x", "dsl": {}},\n'
        '  {"terms": "!!! ..."}\n]\n'
    )
    refused = run_cli(watch_settings, "watches", "seed", str(broken))
    assert refused.returncode == 1
    assert f"{broken}:3: invalid watch" in refused.stderr
    assert f"{broken}:4: invalid watch" in refused.stderr
    assert f"{broken}:5: invalid watch: terms must contain at least one word" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert '"steam deck"' in run_cli(watch_settings, "watches", "list", "--defaults").stdout


def test_cli_add_list_and_remove(watch_settings: Settings) -> None:
    added = run_cli(
        watch_settings, "watches", "add", "--default", "apple watch", "--max-price", "500"
    )
    assert added.returncode == 0, added.stderr
    watch_id = added.stdout.split()[1]
    assert '"apple watch", under $500' in added.stdout
    assert watch_id in run_cli(watch_settings, "watches", "list").stdout
    assert run_cli(watch_settings, "watches", "rm", watch_id).returncode == 0
    gone = run_cli(watch_settings, "watches", "rm", watch_id)
    assert gone.returncode == 1
    assert "no watch with id" in gone.stderr
    empty = run_cli(watch_settings, "watches", "add", "--default", "...")
    assert empty.returncode == 1
    assert "at least one word" in empty.stderr
    stop_words = run_cli(watch_settings, "watches", "add", "--default", "the 5")
    assert stop_words.returncode == 1
    assert "must name something" in stop_words.stderr
    for foreign in ("_search", "..", "x" * 2000):
        refused = run_cli(watch_settings, "watches", "rm", foreign)
        assert refused.returncode == 1
        assert "no watch with id" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_session_cookie_is_issued_httponly_and_lax(server: str) -> None:
    response = httpx.post(f"{server}/api/session", json={}, timeout=10)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("percolert_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    # A client that keeps its cookie keeps its identity; a tampered cookie gets a new one.
    with httpx.Client(base_url=server, timeout=10) as browser:
        browser.post("/api/session", json={})
        token = browser.cookies["percolert_session"]
        assert "set-cookie" not in browser.post("/api/session", json={}).headers
        middle = len(token) - 10  # inside the signature; every bit of that character counts
        forged = token[:middle] + ("x" if token[middle] != "x" else "y") + token[middle + 1 :]
        browser.cookies.set("percolert_session", forged)
        assert "set-cookie" in browser.post("/api/session", json={}).headers
