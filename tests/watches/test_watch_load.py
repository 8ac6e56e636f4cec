"""Bulk watch loading (`percolert watches load`, WatchStore.load): the same watches the API
makes, bad lines reported by number without losing the good ones, and the index's refresh
interval put back whatever happens."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import indices
from percolert.watches.load import LoadError
from percolert.watches.store import WatchLoadFailed, WatchStore
from tests.alerts.test_recovery import best_hit, first_found
from tests.conftest import SAMPLE_CATALOG, client_for, prepare_indices, run_cli
from tests.servers import run_server
from tests.shoppers import Shopper

pytestmark = pytest.mark.anyio


def refresh_interval(settings: Settings) -> tuple[Any, Any]:
    """The watches index's own refresh_interval and translog durability (None: it has none
    of its own, the default applies)."""
    alias = indices.alias_for(settings, "watches")
    response = httpx.get(f"{settings.elasticsearch_url}/{alias}/_settings", timeout=10)
    response.raise_for_status()
    [index_settings] = response.json().values()
    own = index_settings["settings"]["index"]
    return own.get("refresh_interval"), own.get("translog", {}).get("durability")


def store_for(settings: Settings) -> WatchStore:
    return WatchStore(
        client_for(settings),
        indices.alias_for(settings, "watches"),
        TextNormalizer(),
        max_per_user=5,
    )


@pytest.fixture
def settings(fresh_settings: Settings) -> Settings:
    """Fresh indices, no catalog."""
    prepare_indices(fresh_settings)
    return fresh_settings


@pytest.fixture
def shop(fresh_settings: Settings) -> Iterator[tuple[Settings, str]]:
    """Fresh indices with the sample catalog, and a server on them."""
    prepare_indices(fresh_settings, catalog=SAMPLE_CATALOG)
    with run_server(fresh_settings) as server:
        yield fresh_settings, server


async def owner_of(settings: Settings, watch_id: str) -> str:
    client = client_for(settings)
    try:
        found = await client.get(index=indices.alias_for(settings, "watches"), id=watch_id)
    finally:
        await client.close()
    owner: str = found["_source"]["owner"]
    return owner


async def test_the_cli_loads_the_good_lines_reports_the_bad_and_a_search_alerts_the_owner(
    shop: tuple[Settings, str], tmp_path: Path
) -> None:
    fresh_settings, server = shop
    async with Shopper(server) as owner, Shopper(server) as searcher:
        # Whose a shopper is: the owner of a watch the API made for them.
        made = await owner.watch("bicycle")
        user = await owner_of(fresh_settings, made["id"])
        lines = [
            {"owner": user, "terms": "kindle"},
            "not json at all",
            {"owner": user, "terms": "bicycle"},  # what the API made already
            {"owner": user, "terms": "lego", "max_price": -3},
            {"owner": "someone-away", "terms": "kindle paperwhite", "notify": "searches"},
            {"owner": user, "terms": "KINDLE"},  # the first line again, as words
            {"terms": "tablet", "notify": "products"},  # a default for products: refused
            {"terms": "headphones", "category": "Audio"},  # a default watch
            {"owner": user, "terms": "kindle", "surprise": 1},
            {"owner": user, "terms": "of the 5 x"},  # names nothing: refused
        ]
        path = tmp_path / "watches.ndjson"
        path.write_text(
            "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
        )

        done = run_cli(fresh_settings, "watches", "load", str(path))

        assert done.returncode == 1, done.stderr  # some lines were refused
        assert "loaded 3, duplicates 2, refused 5" in done.stdout
        refused = [line for line in done.stderr.splitlines() if line.startswith(str(path))]
        assert [line.split(":")[1] for line in refused] == ["2", "4", "7", "9", "10"]
        assert "not valid JSON" in refused[0]
        assert "max_price" in refused[1]
        assert "never alerts of products" in refused[2]
        assert "surprise" in refused[3]
        assert "terms must name something" in refused[4]
        assert refresh_interval(fresh_settings) == (None, None)

        listed = (await owner.http.get("/api/watches")).json()["watches"]
        assert sorted(watch["terms"] for watch in listed if not watch["is_default"]) == [
            "bicycle",
            "kindle",
        ]
        assert [watch["terms"] for watch in listed if watch["is_default"]] == ["headphones"]

        socket = await owner.connect()
        paperwhite = await best_hit(searcher, "Kindle Paperwhite")
        alert = await socket.next_alert()
        assert alert is not None
        kindle = next(watch for watch in listed if watch["terms"] == "kindle")
        assert alert["watch"] == {"id": kindle["id"], "terms": "kindle"}
        assert first_found(alert) == paperwhite

        # The same file again: every watch collides with itself, nothing changes.
        again = run_cli(fresh_settings, "watches", "load", str(path))
        assert "loaded 0, duplicates 5, refused 5" in again.stdout


async def test_a_document_elasticsearch_refuses_does_not_lose_the_others(
    settings: Settings,
) -> None:
    store = store_for(settings)
    # A keyword longer than Lucene takes (32,766 bytes): refused by Elasticsearch itself.
    immense = "x" * 40_000
    try:
        report = await store.load(
            [
                (1, "ann", WatchSpec(terms="kindle")),
                (2, immense, WatchSpec(terms="kindle")),
                LoadError(3, "bad line"),
                (4, "bob", WatchSpec(terms="   ")),
                (5, "cat", WatchSpec(terms="kindle")),
            ],
            chunk_size=2,
        )
        assert (report.loaded, report.duplicates, report.refused) == (2, 0, 3)
        assert [error.ref for error in report.errors] == [2, 3, 4]
        assert "refused by Elasticsearch" in report.errors[0].reason
        assert "at least one word" in report.errors[2].reason
        assert [watch.terms for watch in await store.owned_by("ann")] == ["kindle"]
        assert [watch.terms for watch in await store.owned_by("cat")] == ["kindle"]

        with pytest.raises(WatchLoadFailed) as failed:
            await store.add_many(
                [("dan", WatchSpec(terms="lego")), (immense, WatchSpec(terms="xbox"))]
            )
        assert failed.value.report.loaded == 1
        assert "refused by Elasticsearch" in failed.value.report.errors[0].reason
        assert [watch.terms for watch in await store.owned_by("dan")] == ["lego"]
    finally:
        await store._client.close()


async def test_duplicates_collide_with_watches_the_api_made(settings: Settings) -> None:
    store = store_for(settings)
    try:
        made = await store.add("ann", WatchSpec(terms="Kindle  Paperwhite"))
        report = await store.load(
            [
                (1, "ann", WatchSpec(terms="kindle paperwhite ")),
                (2, "ann", WatchSpec(terms="kindle paperwhite", notify="products")),
                (3, "bob", WatchSpec(terms="kindle paperwhite")),
                (4, "bob", WatchSpec(terms="kindle paperwhite")),
            ]
        )
        assert (report.loaded, report.duplicates, report.refused) == (1, 3, 0)
        assert [watch.id for watch in await store.owned_by("ann")] == [made.id]
        assert len(await store.owned_by("bob")) == 1
    finally:
        await store._client.close()


def _watches_then(
    count: int, then: Iterator[None], owner: str = "user"
) -> Iterator[tuple[int, str, WatchSpec]]:
    """`count` watches, then whatever `then` does when it is first advanced."""
    for number in range(count):
        yield number, f"{owner}-{number}", WatchSpec(terms=f"word{number}")
    next(then)


async def test_the_refresh_interval_is_off_during_a_load_and_back_after_failure_or_cancel(
    settings: Settings,
) -> None:
    fresh_settings = settings
    alias = indices.alias_for(fresh_settings, "watches")
    store = store_for(fresh_settings)
    seen_during: list[tuple[Any, Any]] = []

    def look_then_fail() -> Iterator[None]:
        seen_during.append(refresh_interval(fresh_settings))
        raise RuntimeError("the input broke")
        yield

    try:
        await store._client.indices.put_settings(
            index=alias, settings={"index": {"refresh_interval": "7s"}}
        )
        with pytest.raises(RuntimeError, match="the input broke"):
            await store.load(_watches_then(50, look_then_fail()), chunk_size=10)
        assert seen_during == [("-1", "async")]
        assert refresh_interval(fresh_settings) == ("7s", None)

        with anyio.CancelScope() as scope:

            def look_then_cancel() -> Iterator[None]:
                seen_during.append(refresh_interval(fresh_settings))
                scope.cancel()
                yield

            await store.load(_watches_then(50, look_then_cancel()), chunk_size=10)
        assert scope.cancelled_caught
        assert seen_during == [("-1", "async")] * 2
        assert refresh_interval(fresh_settings) == ("7s", None)

        # An index that had no interval of its own gets none back (the default).
        await store._client.indices.put_settings(
            index=alias, settings={"index": {"refresh_interval": None}}
        )
        report = await store.load(_watches_then(30, iter([None]), "later"), chunk_size=10)
        assert report.loaded == 30
        assert refresh_interval(fresh_settings) == (None, None)
        count = await store._client.count(index=alias)
        assert count["count"] >= 30  # searchable when the load returns

        # Refresh off already (another load, or the operator): left off, not "put back" on.
        await store._client.indices.put_settings(
            index=alias, settings={"index": {"refresh_interval": "-1"}}
        )
        report = await store.load(_watches_then(5, iter([None]), "off"))
        assert report.loaded == 5
        assert refresh_interval(fresh_settings) == ("-1", None)
        assert len(await store.owned_by("off-1")) == 1  # the load's own refresh
    finally:
        await store._client.close()


def test_ascii_text_is_split_as_the_folding_path_splits_it() -> None:
    """The normaliser's ASCII shortcut (what makes preparing a watch cheap) finds the words
    the accent-folding path finds."""
    word = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
    rng = random.Random(3)
    alphabet = "abcXYZ019 '_-.,!\t" + "".join(chr(code) for code in range(32, 127))
    normalizer = TextNormalizer()
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        folded = unicodedata.normalize("NFKD", text.casefold())
        plain = "".join(char for char in folded if not unicodedata.combining(char))
        assert normalizer.words(text) == word.findall(plain), text
    assert normalizer.words("Café Ünïcode") == ["cafe", "unicode"]
