"""The watches API and the `percolert watches` CLI, against a real server and node."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from percolert.settings import Settings
from tests.conftest import delete_indices, make_settings, prepare_indices, run_cli
from tests.servers import run_server
from tests.shoppers import Shopper

pytestmark = pytest.mark.anyio

LIMIT = 4


@pytest.fixture(scope="module")
def watch_settings(elasticsearch_url: str) -> Iterator[Settings]:
    """A deployment of its own (fresh indices), so default-watch seeding sees only its own."""
    settings = make_settings(elasticsearch_url, max_watches_per_user=LIMIT)
    prepare_indices(settings)
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
        huge = await a.http.post("/api/watches", content=b" " * 5000 + b'{"terms": "x"}')
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
    shipped = Path(__file__).resolve().parent.parent / "data" / "default_watches.json"
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
    broken.write_text('[\n  {"terms": "ok"},\n  {"terms": ""},\n  {"terms": "x", "dsl": {}}\n]\n')
    refused = run_cli(watch_settings, "watches", "seed", str(broken))
    assert refused.returncode == 1
    assert f"{broken}:3: invalid watch" in refused.stderr
    assert f"{broken}:4: invalid watch" in refused.stderr
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


def test_session_cookie_is_issued_httponly_and_lax(server: str) -> None:
    response = httpx.get(f"{server}/healthz", timeout=10)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("percolert_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    # A client that keeps its cookie keeps its identity; a tampered cookie gets a new one.
    with httpx.Client(base_url=server, timeout=10) as browser:
        browser.get("/healthz")
        token = browser.cookies["percolert_session"]
        assert "set-cookie" not in browser.get("/healthz").headers
        middle = len(token) - 10  # inside the signature; every bit of that character counts
        forged = token[:middle] + ("x" if token[middle] != "x" else "y") + token[middle + 1 :]
        browser.cookies.set("percolert_session", forged)
        assert "set-cookie" in browser.get("/healthz").headers
