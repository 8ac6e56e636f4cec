"""Watches on one product (`sku`), against a real server, real sockets and a real node: made
through POST /api/watches, alerted by that product's back in stock and price drops (put
through the admin API, as the shop's back office does), never by a search nor by another
product with the same words; counted by the shop (GET /api/admin/products/{sku}/watchers)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import msgspec
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import indices
from percolert.products import catalog as products
from percolert.service.migrations import upgrade_watch
from percolert.watches.percolator import Match, Percolator, SearchEvent
from percolert.watches.store import InvalidWatch, SeedFileError, WatchStore, parse_seed_file
from tests.conftest import (
    SAMPLE_CATALOG,
    client_for,
    delete_indices,
    make_settings,
    on_test_broker,
    prepare_indices,
)
from tests.servers import run_server
from tests.shoppers import Shopper, Socket, default_watch

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-product-watches-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOTH = ["back_in_stock", "price_drop"]


@pytest.fixture(scope="module")
def watch_settings(elasticsearch_url: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A deployment of its own (these tests change its catalog) with an admin token, on the
    Redis broker when the suite runs on it."""
    settings = make_settings(
        elasticsearch_url,
        admin_token=TOKEN,
        coalesce_seconds=0.0,
        product_alert_poll_seconds=0.1,
        max_watches_per_user=6,
    )
    settings = on_test_broker(settings, request)
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture(scope="module")
def server(watch_settings: Settings) -> Iterator[str]:
    with run_server(watch_settings) as url:
        yield url


def word() -> str:
    """A word no product or watch of any other test has (letters only: it names something)."""
    return "zq" + "".join(chr(ord("a") + int(digit, 16)) for digit in uuid.uuid4().hex[:10])


def put(url: str, sku: str, **product: Any) -> dict[str, Any]:
    """The admin API's answer to putting the product `sku` (200 expected)."""
    answer = httpx.put(f"{url}/api/admin/products/{sku}", json=product, headers=AUTH, timeout=15)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


class Catalog:
    """Products of one test, put through the admin API; each remembers what it was put as,
    so that a change is one field."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.products: dict[str, dict[str, Any]] = {}

    def add(self, name: str, price: float, *, in_stock: bool = True) -> str:
        sku = f"T-{uuid.uuid4().hex[:12]}"
        fields = {
            "product_name": name,
            "description": "A product of the product watch tests.",
            "price": price,
            "category": "e-readers",
            "brand": "Testbrand",
            "in_stock": in_stock,
        }
        self.products[sku] = fields
        put(self.url, sku, **fields)
        return sku

    def change(self, sku: str, **changes: Any) -> dict[str, Any]:
        self.products[sku] = {**self.products[sku], **changes}
        return put(self.url, sku, **self.products[sku])


@pytest.fixture
def catalog(server: str) -> Catalog:
    return Catalog(server)


def store_of(client: AsyncElasticsearch, settings: Settings) -> WatchStore:
    """The deployment's watches, as its server's services make them."""
    return WatchStore(
        client,
        indices.alias_for(settings, "watches"),
        TextNormalizer(),
        max_per_user=settings.max_watches_per_user,
        product_name=partial(
            products.product_name, client, indices.alias_for(settings, "products")
        ),
    )


async def ignore(found: list[tuple[SearchEvent, list[Match]]]) -> None:
    pass


async def watch_product(shopper: Shopper, sku: str, **spec: Any) -> dict[str, Any]:
    response = await shopper.http.post("/api/watches", json={"sku": sku, **spec})
    assert response.status_code == 201, response.text
    watch: dict[str, Any] = response.json()
    return watch


async def product_alerts_before_marker(
    shopper: Shopper, socket: Socket, catalog: Catalog
) -> list[dict[str, Any]]:
    """The product alerts `socket` (the shopper's) receives before a marker: a price drop of
    a product of its own the shopper watches, put now. Product alerts reach a socket in the
    order they were written, so whatever an earlier change alerted arrives first: "nothing
    arrived", without a wait."""
    sku = catalog.add(word(), 100.0)
    marker = await watch_product(shopper, sku, on=["price_drop"])
    try:
        assert catalog.change(sku, price=50.0)["alerts"] == 1
        before: list[dict[str, Any]] = []
        while (message := await socket.receive(timeout=10)) is not None:
            if message["type"] != "product_alert":
                continue
            if message["watch"]["id"] == marker["id"]:
                return before
            before.append(message)
        raise AssertionError(f"the marker's product alert never came; got {before}")
    finally:
        await shopper.unwatch(marker["id"])


def changes(alerts: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(alert["watch"]["id"], alert["change"], alert["product"]["sku"]) for alert in alerts]


# --- making a product watch -------------------------------------------------------------


async def test_a_product_watch_reads_well_and_notifies_of_products(server: str) -> None:
    async with Shopper(server) as a:
        tab = await a.connect()
        watch = await watch_product(a, "ER-0001")
        assert watch == {
            "id": watch["id"],
            "terms": "Kindle Paperwhite (16 GB)",  # the product's name, for lists
            "phrase": False,
            "category": None,
            "max_price": None,
            "is_default": False,
            "created_at": watch["created_at"],
            "notify": "products",
            "sku": "ER-0001",
            "on": BOTH,
            "frequency": None,  # the account's choice of e-mail, when it is one
        }
        changed = await tab.receive()
        assert changed is not None
        assert changed["type"] == "watches_changed"
        assert changed["watches"] == [watch]
        listed = (await a.http.get("/api/watches")).json()["watches"]
        assert listed == [watch]
        # A watch of words is unchanged on the wire, and no duplicate of the product's.
        words = await a.watch("kindle paperwhite 16 gb")
        assert (words["sku"], words["on"], words["notify"]) == (None, None, "both")
        for made in (watch, words):
            await a.unwatch(made["id"])


async def test_on_is_kept_in_one_order_and_a_sold_out_product_may_be_watched(
    server: str,
) -> None:
    async with Shopper(server) as a:
        sold_out = await watch_product(
            a, "PH-0002", on=["price_drop", "back_in_stock", "price_drop"], max_price=900
        )
        assert (sold_out["sku"], sold_out["on"], sold_out["max_price"]) == ("PH-0002", BOTH, 900)
        assert sold_out["terms"] == "iPhone 16 Pro 128 GB"
        # `notify` of a product watch is "products", whatever else than "searches" it says.
        drops = await watch_product(a, "ER-0004", on=["price_drop"], notify="products")
        assert (drops["on"], drops["notify"]) == (["price_drop"], "products")
        for made in (sold_out, drops):
            await a.unwatch(made["id"])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "needs `terms`"),
        ({"phrase": True}, "needs `terms`"),
        ({"sku": "ER-0001", "terms": "kindle"}, "not both"),
        ({"sku": "ER-0001", "phrase": True}, "`phrase` and `category`"),
        ({"sku": "ER-0001", "category": "e-readers"}, "`phrase` and `category`"),
        ({"sku": "ER-0001", "notify": "searches"}, "never of searches"),
        ({"terms": "kindle", "on": ["price_drop"]}, "`on` applies to a product watch"),
        ({"sku": "ER-0001", "on": []}, "`$.on`"),
        ({"sku": "ER-0001", "on": ["new"]}, "never new"),
        ({"sku": "ER-0001", "on": ["sold_out"]}, "back_in_stock and/or price_drop"),
        ({"sku": "ER-0001", "on": "price_drop"}, "`$.on`"),
        ({"sku": "ER-0001", "max_price": 0}, "`$.max_price`"),
        ({"sku": ".."}, "`$.sku`"),
        ({"sku": "ER/0001"}, "`$.sku`"),
        ({"sku": "x" * 65}, "`$.sku`"),
        ({"sku": ""}, "`$.sku`"),
        ({"sku": 1}, "`$.sku`"),
        ({"sku": "ER-0001", "owner": "someone"}, "owner"),
    ],
)
async def test_a_spec_neither_of_words_nor_of_a_product_is_400(
    server: str, body: dict[str, Any], says: str
) -> None:
    async with Shopper(server) as a:
        refused = await a.http.post("/api/watches", json=body)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_watch"
        assert says in error["message"], error["message"]
        assert (await a.http.get("/api/watches")).json()["watches"] == []


async def test_a_product_the_catalog_lacks_is_404_naming_it(server: str) -> None:
    async with Shopper(server) as a:
        refused = await a.http.post("/api/watches", json={"sku": "NO-SUCH-SKU"})
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"] == {
            "code": "unknown_product",
            "message": "the catalog has no product with sku 'NO-SUCH-SKU'",
        }
        assert (await a.http.get("/api/watches")).json()["watches"] == []


async def test_one_product_is_one_watch_and_counts_against_the_limit(
    server: str, watch_settings: Settings
) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await watch_product(a, "ER-0003", on=["price_drop"])
        for again in ({"sku": "ER-0003"}, {"sku": "ER-0003", "on": BOTH, "max_price": 80}):
            refused = await a.http.post("/api/watches", json=again)
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "duplicate_watch"
            assert "ER-0003" in refused.json()["error"]["message"]
        # Another shopper's watch of the same product is theirs.
        theirs = await watch_product(b, "ER-0003")
        assert theirs["id"] != watch["id"]
        skus = ["ER-0004", "ER-0005", "ER-0006", "ER-0007", "ER-0008", "ER-0001"]
        limit = watch_settings.max_watches_per_user
        assert len(skus) == limit
        made = [await watch_product(a, sku) for sku in skus[: limit - 1]]
        over = await a.http.post("/api/watches", json={"sku": skus[-1]})
        assert over.status_code == 409, over.text
        assert over.json()["error"]["code"] == "too_many_watches"
        for each in [watch, *made]:
            await a.unwatch(each["id"])
        await b.unwatch(theirs["id"])


async def test_patch_cannot_make_a_product_watch_hear_of_searches(server: str) -> None:
    async with Shopper(server) as a:
        watch = await watch_product(a, "ER-0002")
        url = f"/api/watches/{watch['id']}"
        refused = await a.http.patch(url, json={"notify": "searches"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_watch"
        for notify in ("both", "products"):
            kept = await a.http.patch(url, json={"notify": notify})
            assert kept.status_code == 200, kept.text
            assert kept.json() == watch
        assert (await a.http.get("/api/watches")).json()["watches"] == [watch]
        await a.unwatch(watch["id"])


# --- what alerts a product watch, and what does not -----------------------------------------


async def test_a_search_naming_the_product_never_alerts_its_watcher(server: str) -> None:
    async with Shopper(server) as watcher, Shopper(server) as searcher:
        watch = await watch_product(watcher, "ER-0005")
        socket = await watcher.connect()
        for text in ("Kindle Scribe", "ER-0005", "kindle scribe amazon e-readers"):
            await searcher.search(text)
        assert await watcher.alerts_before_marker(socket, searcher) == []
        await watcher.unwatch(watch["id"])


async def test_a_price_drop_and_back_in_stock_alert_the_watcher_once(
    server: str, catalog: Catalog
) -> None:
    name = f"{word()} reader"
    async with Shopper(server) as watcher, Shopper(server) as other:
        cheaper = catalog.add(name, 200.0)
        returning = catalog.add(f"{name} plus", 300.0, in_stock=False)
        watches = {sku: await watch_product(watcher, sku) for sku in (cheaper, returning)}
        bystander = await watch_product(other, "ER-0006")
        tab, elsewhere = await watcher.connect(), await other.connect()

        assert catalog.change(cheaper, price=150.0) == {
            "sku": cheaper,
            "events": ["price_drop"],
            "alerts": 1,
        }
        assert catalog.change(cheaper, price=150.0)["events"] == []  # the same again: no news
        # Another drop within PERCOLERT_PRODUCT_ALERT_MIN_INTERVAL: told already.
        assert catalog.change(cheaper, price=140.0) == {
            "sku": cheaper,
            "events": ["price_drop"],
            "alerts": 0,
        }
        assert catalog.change(returning, in_stock=True)["alerts"] == 1

        alerts = await product_alerts_before_marker(watcher, tab, catalog)
        assert changes(alerts) == [
            (watches[cheaper]["id"], "price_drop", cheaper),
            (watches[returning]["id"], "back_in_stock", returning),
        ]
        drop, back = alerts
        assert drop["watch"] == {"id": watches[cheaper]["id"], "terms": name, "sku": cheaper}
        assert (drop["product"]["previous_price"], drop["product"]["price"]) == (200.0, 150.0)
        assert (drop["total"], drop["more"]) == (1, [])
        assert back["watch"]["sku"] == returning
        assert (back["product"]["previous_price"], back["product"]["price"]) == (None, 300.0)
        # Nobody else heard of either.
        assert await product_alerts_before_marker(other, elsewhere, catalog) == []
        for sku in (cheaper, returning):
            await watcher.unwatch(watches[sku]["id"])
        await other.unwatch(bystander["id"])


async def test_another_product_with_the_same_words_alerts_no_product_watcher(
    server: str, catalog: Catalog
) -> None:
    name = f"{word()} lamp"
    async with Shopper(server) as watcher, Shopper(server) as words:
        watched = catalog.add(name, 100.0)
        twin = catalog.add(name, 100.0)
        sold_out_twin = catalog.add(name, 100.0, in_stock=False)
        watch = await watch_product(watcher, watched)
        # A watch of the words hears of the twins: their changes were percolated.
        control = await words.watch(name, notify="products")
        tab = await watcher.connect()
        assert catalog.change(twin, price=50.0)["alerts"] == 1
        assert catalog.change(sold_out_twin, in_stock=True)["alerts"] == 1
        assert await product_alerts_before_marker(watcher, tab, catalog) == []
        await watcher.unwatch(watch["id"])
        await words.unwatch(control["id"])


async def test_on_chooses_the_changes_that_alert(server: str, catalog: Catalog) -> None:
    async with Shopper(server) as a:
        stock_only, drop_only = catalog.add(word(), 100.0), catalog.add(word(), 100.0)
        back = await watch_product(a, stock_only, on=["back_in_stock"])
        drops = await watch_product(a, drop_only, on=["price_drop"])
        tab = await a.connect()
        assert catalog.change(stock_only, price=50.0)["alerts"] == 0  # a drop: not watched
        catalog.change(stock_only, in_stock=False)
        assert catalog.change(stock_only, in_stock=True)["alerts"] == 1
        catalog.change(drop_only, in_stock=False)
        assert catalog.change(drop_only, in_stock=True)["alerts"] == 0  # back: not watched
        alerts = await product_alerts_before_marker(a, tab, catalog)
        assert changes(alerts) == [(back["id"], "back_in_stock", stock_only)]
        for made in (back, drops):
            await a.unwatch(made["id"])


async def test_max_price_holds_for_drops_and_returns(server: str, catalog: Catalog) -> None:
    async with Shopper(server) as a:
        dropping, returning = catalog.add(word(), 200.0), catalog.add(word(), 200.0)
        catalog.change(returning, in_stock=False)
        watches = [await watch_product(a, sku, max_price=100) for sku in (dropping, returning)]
        tab = await a.connect()
        assert catalog.change(dropping, price=150.0)["alerts"] == 0  # still over 100
        assert catalog.change(returning, in_stock=True, price=180.0)["alerts"] == 0
        assert catalog.change(dropping, price=99.99)["alerts"] == 1  # at last under it
        alerts = await product_alerts_before_marker(a, tab, catalog)
        assert changes(alerts) == [(watches[0]["id"], "price_drop", dropping)]
        assert alerts[0]["product"]["price"] == 99.99
        for made in watches:
            await a.unwatch(made["id"])


async def test_a_watcher_away_hears_of_it_on_return(server: str, catalog: Catalog) -> None:
    async with Shopper(server) as a:
        sku = catalog.add(word(), 80.0, in_stock=False)
        watch = await watch_product(a, sku)
        assert catalog.change(sku, in_stock=True)["alerts"] == 1
        away = (await a.connect()).hello["away"]
        assert away is not None
        assert changes(away["alerts"]) == [(watch["id"], "back_in_stock", sku)]
        await a.unwatch(watch["id"])


# --- the shop counts a product's watchers -----------------------------------------------------


def watchers(url: str, sku: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(
        f"{url}/api/admin/products/{sku}/watchers",
        headers=AUTH if headers is None else headers,
        timeout=10,
    )


async def test_the_shop_counts_a_products_watchers(
    server: str, watch_settings: Settings, catalog: Catalog
) -> None:
    counted, other = catalog.add(word(), 100.0), catalog.add(word(), 100.0)
    assert watchers(server, counted).json() == {"sku": counted, "watchers": 0}
    async with (
        Shopper(server) as a,
        Shopper(server) as b,
        Shopper(server) as c,
        default_watch(watch_settings, catalog.products[counted]["product_name"]),
    ):
        made = [
            await watch_product(a, counted, on=["price_drop"]),
            await watch_product(b, counted, max_price=90),
            await watch_product(c, other),
        ]
        # Watches of the product's words are not watchers of the product.
        words = await c.watch(catalog.products[counted]["product_name"])
        answer = watchers(server, counted)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"sku": counted, "watchers": 2}
        assert watchers(server, other).json() == {"sku": other, "watchers": 1}
        await a.unwatch(made[0]["id"])
        assert watchers(server, counted).json() == {"sku": counted, "watchers": 1}
        # A sold-out product, or one the catalog no longer has, keeps its watchers.
        catalog.change(other, in_stock=False)
        assert watchers(server, other).json()["watchers"] == 1
        deleted = httpx.delete(f"{server}/api/admin/products/{other}", headers=AUTH)
        assert deleted.status_code == 200, deleted.text
        assert watchers(server, other).json()["watchers"] == 1
        for who, watch in ((b, made[1]), (c, made[2]), (c, words)):
            await who.unwatch(watch["id"])
    assert watchers(server, "NEVER-SOLD").json() == {"sku": "NEVER-SOLD", "watchers": 0}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-wrong-token-wrong"}, {"Authorization": TOKEN}],
    ids=["none", "wrong", "not-bearer"],
)
def test_counting_watchers_needs_the_admin_token(server: str, headers: dict[str, str]) -> None:
    answer = watchers(server, "ER-0001", headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("sku", ["%2E%2E", "a%20b", "x" * 65])
def test_a_path_no_sku_can_have_is_400(server: str, sku: str) -> None:
    answer = watchers(server, sku)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_sku"


# --- default watches, bulk loads, the index lifecycle ---------------------------------------


def test_a_seed_file_may_not_name_a_product() -> None:
    data = b'[\n  {"terms": "kindle"},\n  {"sku": "ER-0001", "on": ["price_drop"]}\n]'
    with pytest.raises(SeedFileError) as refused:
        parse_seed_file(data, TextNormalizer())
    [(line, reason)] = refused.value.problems
    assert line == 3
    assert "a default watch cannot name a product" in reason


async def test_neither_a_default_nor_a_bulk_load_makes_a_product_watch(
    watch_settings: Settings,
) -> None:
    client = client_for(watch_settings)
    try:
        store = store_of(client, watch_settings)
        with pytest.raises(InvalidWatch, match="a default watch cannot name a product"):
            await store.add(None, WatchSpec(sku="ER-0001"))
        report = await store.load([(1, "alice", WatchSpec(sku="ER-0001"))])
        assert (report.loaded, report.refused) == (0, 1)
        assert "cannot be loaded in bulk" in report.errors[0].reason
    finally:
        await client.close()


async def test_a_search_document_never_matches_a_product_watch_whatever_its_audience(
    watch_settings: Settings,
) -> None:
    """What keeps searches from product watches is their query, not only `notify`: the
    document of a search (no sku, no change) percolated among the watches of products
    matches the watch of the product's words, never the product watch."""
    client = client_for(watch_settings)
    try:
        store = store_of(client, watch_settings)
        product = await store.add("alice", WatchSpec(sku="ER-0005"))
        words = await store.add("alice", WatchSpec(terms="kindle scribe", notify="products"))
        percolator = Percolator(
            client, indices.alias_for(watch_settings, "watches"), TextNormalizer(), ignore
        )
        search = SearchEvent(text="Kindle Scribe", searcher="bob", found=(("e-readers", 339.99),))
        as_change = msgspec.structs.replace(search, sku="ER-0005", change="price_drop")
        found = await percolator.percolate([search, as_change], audience="products")
        assert [sorted(match.watch_id for match in matches) for matches in found] == [
            [words.id],
            sorted([words.id, product.id]),
        ]
        assert {match.sku for match in found[1]} == {None, "ER-0005"}
        for made in (product, words):
            await store.remove("alice", made.id)
    finally:
        await client.close()


def test_a_migration_builds_a_product_watchs_query_again_from_its_spec() -> None:
    """A later mapping version's copy keeps a product watch a product watch: its query is
    built from its spec, never cut to search-text filters (of which it has none)."""
    source = {
        "query": {"bool": {"filter": []}},
        "owner": "alice",
        "is_default": False,
        "spec": {"terms": "Kindle Oasis", "sku": "ER-0004", "on": ["price_drop"], "max_price": 200},
        "terms": "Kindle Oasis",
        "watch_id": "w-0",
        "notify": "products",
        "max_price": 200,
        "sku": "ER-0004",
    }
    upgraded = upgrade_watch("w-0", dict(source), lease_seconds=60)
    assert upgraded["query"] == {
        "bool": {
            "filter": [
                {"term": {"product_sku": "ER-0004"}},
                {"terms": {"product_change": ["price_drop"]}},
                {"range": {"min_price": {"lte": 200}}},
            ]
        }
    }
    assert upgraded["notify"] == "products"
