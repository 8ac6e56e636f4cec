"""Change detection: which catalog changes are news (the classifier, a pure function), and
ingest against a real node telling exactly those, once, even with two writers racing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anyio
import msgspec
import pytest
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch

from percolert.cli import admin
from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.products import catalog
from percolert.products.alerts import CatalogChange
from percolert.products.catalog import Product
from percolert.products.changes import ChangeDetection, Stored, classify
from percolert.watches.store import WatchStore
from tests.conftest import SAMPLE_CATALOG, run_cli
from tests.netproxy import DroppableProxy

pytestmark = pytest.mark.anyio


def product(
    sku: str = "K-1", price: float = 100.0, in_stock: bool = True, **changes: str
) -> Product:
    fields = {
        "product_name": "Kindle Test Edition",
        "description": "an e-reader",
        "category": "e-readers",
        "brand": "Amazon",
        **changes,
    }
    return Product(sku=sku, price=price, in_stock=in_stock, **fields)


def stored(price: float = 100.0, in_stock: bool = True) -> Stored:
    return Stored(price=price, in_stock=in_stock, seq_no=0, primary_term=1)


# --- the classifier ----------------------------------------------------------------------


def test_a_product_never_seen_in_stock_is_new() -> None:
    assert classify(product(), None) == CatalogChange(change="new", product=product())


def test_a_new_sold_out_product_alerts_nobody() -> None:
    assert classify(product(in_stock=False), None) is None


def test_a_lower_price_is_a_drop_with_the_previous_price() -> None:
    cheaper = product(price=79.0)
    assert classify(cheaper, stored(price=100.0)) == CatalogChange(
        change="price_drop", product=cheaper, previous_price=100.0
    )


def test_back_in_stock_at_the_same_price() -> None:
    assert classify(product(), stored(in_stock=False)) == CatalogChange(
        change="back_in_stock", product=product()
    )


def test_back_in_stock_wins_over_a_simultaneous_drop_and_keeps_its_previous_price() -> None:
    cheaper = product(price=79.0)
    assert classify(cheaper, stored(price=100.0, in_stock=False)) == CatalogChange(
        change="back_in_stock", product=cheaper, previous_price=100.0
    )


@pytest.mark.parametrize(
    ("incoming", "before"),
    [
        (product(), stored()),  # the same again
        (product(price=120.0), stored(price=100.0)),  # a price rise
        (product(description="now with more words"), stored()),  # a text edit
        (product(in_stock=False), stored()),  # sold out
        (product(price=79.0, in_stock=False), stored(price=100.0, in_stock=False)),
    ],
    ids=["same", "price-rise", "text-edit", "sold-out", "cheaper-but-still-sold-out"],
)
def test_anything_else_is_no_news(incoming: Product, before: Stored) -> None:
    assert classify(incoming, before) is None


# --- ingest on a real node ---------------------------------------------------------------


class Recording:
    """A change sink that keeps what it is handed, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[list[CatalogChange]] = []

    async def changed(self, changes: list[CatalogChange]) -> None:
        self.batches.append(changes)

    def found(self) -> list[tuple[str, str, float | None]]:
        return [
            (change.change, change.product.sku, change.previous_price)
            for batch in self.batches
            for change in batch
        ]


def write_lines(path: Path, products: list[Product]) -> Path:
    path.write_text("".join(json.dumps(_fields(p)) + "\n" for p in products))
    return path


def _fields(p: Product) -> dict[str, object]:
    return {name: getattr(p, name) for name in p.__struct_fields__}


async def test_reingesting_the_sample_finds_no_changes(fresh_settings: Settings) -> None:
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    try:
        await indices.setup(client, fresh_settings)
        first = Recording()
        report = await catalog.ingest(
            client,
            alias,
            SAMPLE_CATALOG,
            chunk_size=64,
            writer=ChangeDetection(client, alias, first),
        )
        in_stock = [
            line for line in SAMPLE_CATALOG.read_text().splitlines() if json.loads(line)["in_stock"]
        ]
        assert report.failed == 0
        assert report.changes is not None
        assert report.changes.new == len(first.found()) == len(in_stock)
        again = Recording()
        report = await catalog.ingest(
            client, alias, SAMPLE_CATALOG, writer=ChangeDetection(client, alias, again)
        )
        assert report.loaded > 0
        assert report.changes is not None
        assert report.changes.total == 0
        assert again.batches == []
    finally:
        await client.close()


async def test_an_ingest_tells_exactly_the_news_in_input_order(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    try:
        await indices.setup(client, fresh_settings)
        before = [
            product("cheaper", 100.0),
            product("restocked", 50.0, in_stock=False),
            product("dearer", 100.0),
            product("edited", 100.0),
        ]
        await catalog.ingest(client, alias, write_lines(tmp_path / "before.ndjson", before))
        after = [
            product("arrival", 129.0),
            product("cheaper", 80.0),
            product("restocked", 50.0),
            product("dearer", 120.0),
            product("edited", 100.0, description="a new description"),
            product("sold-out-arrival", 10.0, in_stock=False),
        ]
        recorded = Recording()
        report = await catalog.ingest(
            client,
            alias,
            write_lines(tmp_path / "after.ndjson", after),
            writer=ChangeDetection(client, alias, recorded),
        )
        assert recorded.found() == [
            ("new", "arrival", None),
            ("price_drop", "cheaper", 100.0),
            ("back_in_stock", "restocked", None),
        ]
        assert (report.loaded, report.failed) == (6, 0)
        assert report.changes == catalog.ChangeCounts(new=1, price_drop=1, back_in_stock=1)
        # Every product was stored as given, news or not.
        edited = await client.get(index=alias, id="edited")
        assert edited["_source"]["description"] == "a new description"
        assert (await client.get(index=alias, id="dearer"))["_source"]["price"] == 120.0
    finally:
        await client.close()


async def test_a_sku_repeated_in_one_chunk_is_compared_line_after_line(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    try:
        await indices.setup(client, fresh_settings)
        lines = [product("twice", 100.0), product("other", 5.0), product("twice", 90.0)]
        recorded = Recording()
        report = await catalog.ingest(
            client,
            alias,
            write_lines(tmp_path / "twice.ndjson", lines),
            writer=ChangeDetection(client, alias, recorded),
        )
        assert recorded.found() == [
            ("new", "twice", None),
            ("new", "other", None),
            ("price_drop", "twice", 100.0),
        ]
        assert report.loaded == 3
        assert (await client.get(index=alias, id="twice"))["_source"]["price"] == 90.0
    finally:
        await client.close()


async def _put_when(start: anyio.Event, detection: ChangeDetection, price: float) -> None:
    await start.wait()
    await detection.put(product("raced", price))


async def test_writers_racing_on_one_sku_make_one_drop(fresh_settings: Settings) -> None:
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    try:
        await indices.setup(client, fresh_settings)
        await ChangeDetection(client, alias, Recording()).put(product("raced", 100.0))
        previous = 100.0
        for price in (90.0, 80.0, 70.0):
            # Writers of one price at once: all read the old one, one of them stores first.
            recorded = Recording()
            start = anyio.Event()
            async with anyio.create_task_group() as writers:
                for _ in range(4):
                    writers.start_soon(
                        _put_when, start, ChangeDetection(client, alias, recorded), price
                    )
                await anyio.sleep(0)
                start.set()
            assert recorded.found() == [("price_drop", "raced", previous)]
            previous = price
    finally:
        await client.close()


async def test_products_elasticsearch_rejects_are_errors_by_line_and_tell_nothing(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    try:
        await indices.setup(client, fresh_settings)
        # A read-only index refuses every write, item by item.
        await client.indices.put_settings(index=alias, settings={"index.blocks.write": True})
        recorded = Recording()
        try:
            report = await catalog.ingest(
                client,
                alias,
                write_lines(tmp_path / "one.ndjson", [product("blocked")]),
                writer=ChangeDetection(client, alias, recorded),
            )
        finally:
            await client.indices.put_settings(index=alias, settings={"index.blocks.write": False})
        assert recorded.batches == []
        assert [error.line for error in report.errors] == [1]
        assert "rejected by Elasticsearch" in report.errors[0].reason
    finally:
        await client.close()


def test_cli_ingest_counts_changes_and_alerts_and_plain_does_not(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    assert run_cli(fresh_settings, "setup").returncode == 0
    plain = run_cli(fresh_settings, "ingest", "--plain", str(SAMPLE_CATALOG))
    assert plain.returncode == 0, plain.stderr
    assert "changes" not in plain.stdout
    again = run_cli(fresh_settings, "ingest", str(SAMPLE_CATALOG))
    assert again.returncode == 0, again.stderr
    assert "; 0 changes (0 new, 0 price drops, 0 back in stock), 0 alerts" in again.stdout
    asyncio.run(watch(fresh_settings, "alice", WatchSpec(terms="kindle", max_price=150)))
    news = write_lines(
        tmp_path / "news.ndjson",
        [product("ER-NEW-1", 99.0), product("ER-NEW-2", 49.0), product("ER-NEW-3", 199.0)],
    )
    found = run_cli(fresh_settings, "ingest", str(news))
    assert found.returncode == 0, found.stderr
    # Two kindles under 150 for alice's watch: one digest alert.
    assert "; 3 changes (3 new, 0 price drops, 0 back in stock), 1 alert" in found.stdout


async def watch(settings: Settings, user: str, spec: WatchSpec) -> None:
    client = es.create_client(settings)
    try:
        store = WatchStore(
            client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=50
        )
        await store.add(user, spec)
    finally:
        await client.close()


@pytest.mark.parametrize("back_for_the_end", [True, False], ids=["back", "still-down"])
async def test_elasticsearch_failing_midway_still_writes_the_alerts_found_before(
    fresh_settings: Settings, capsys: pytest.CaptureFixture[str], back_for_the_end: bool
) -> None:
    """`percolert ingest` when the cluster goes away after a chunk: the failure is raised
    (the CLI reports it as any other), the alerts of the indexed chunk are written when the
    cluster is back for the end of the run, or their changes are counted as not written."""
    alias = indices.alias_for(fresh_settings, "products")
    await watch_after_setup(fresh_settings, "alice", WatchSpec(terms="kindle"))
    proxy = DroppableProxy(int(fresh_settings.elasticsearch_url.rsplit(":", 1)[1]))
    through_proxy = msgspec.structs.replace(fresh_settings, elasticsearch_url=proxy.url)
    client = es.create_client(through_proxy)

    async def load(client: AsyncElasticsearch, writer: catalog.ChunkWriter) -> catalog.IngestReport:
        await writer.write([(1, product("K-1", 99.0)), (2, product("K-2", 89.0))])
        proxy.drop()
        try:
            await writer.write([(3, product("K-3", 79.0))])
        finally:
            if back_for_the_end:
                proxy.restore()
        raise AssertionError("the second chunk cannot have been written")

    try:
        with pytest.raises(TransportError):
            await admin._ingest_with_alerts(client, through_proxy, alias, load)
    finally:
        await client.close()
        proxy.close()
    said = capsys.readouterr().err
    written = await product_alerts_of(fresh_settings)
    if back_for_the_end:
        assert "wrote 1 product alerts of the products indexed before the failure" in said
        assert written == 1  # one digest of K-1 and K-2 for alice's watch
    else:
        assert "the product alerts of 2 changes could not be written" in said
        assert written == 0


async def watch_after_setup(settings: Settings, user: str, spec: WatchSpec) -> None:
    client = es.create_client(settings)
    try:
        await indices.setup(client, settings)
    finally:
        await client.close()
    await watch(settings, user, spec)


async def product_alerts_of(settings: Settings) -> int:
    client = es.create_client(settings)
    try:
        alias = indices.alias_for(settings, "product_alerts")
        await client.indices.refresh(index=alias)
        return int((await client.count(index=alias))["count"])
    finally:
        await client.close()


def test_stored_products_elasticsearch_cannot_read_end_the_ingest_with_a_message(
    fresh_settings: Settings,
) -> None:
    """The read before the writes failing per document (here: the alias names two indices)
    ends `percolert ingest` with a one-line message, not a traceback."""
    assert run_cli(fresh_settings, "setup").returncode == 0
    alias = indices.alias_for(fresh_settings, "products")

    async def second_index_behind_the_alias() -> None:
        client = es.create_client(fresh_settings)
        try:
            extra = f"{fresh_settings.index_prefix}-products-extra"
            await client.indices.create(index=extra)
            await client.indices.put_alias(index=extra, name=alias)
        finally:
            await client.close()

    asyncio.run(second_index_behind_the_alias())
    failed = run_cli(fresh_settings, "ingest", str(SAMPLE_CATALOG))
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert failed.stderr.startswith("percolert: "), failed.stderr


def test_a_category_forging_a_price_range_is_a_bad_line_and_alerts_nobody(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    """Issue 22: a watch's category and price are one range over keywords `category U+001F
    cents`, so a category ending in U+001F and digits made a $500 product look like one
    under $5. Such a line is refused with its number; the good lines still load."""
    assert run_cli(fresh_settings, "setup").returncode == 0
    asyncio.run(
        watch(fresh_settings, "alice", WatchSpec(terms="kindle", category="e-readers", max_price=5))
    )
    forged = {**_fields(product("FORGED", 500.0)), "category": "e-readers\x1f0000000001"}
    path = tmp_path / "forged.ndjson"
    path.write_text(
        json.dumps(_fields(product("HONEST", 500.0))) + "\n" + json.dumps(forged) + "\n"
    )
    result = run_cli(fresh_settings, "ingest", str(path))
    assert result.returncode == 1
    assert "loaded 1, failed 1" in result.stdout
    assert "; 1 change (1 new, 0 price drops, 0 back in stock), 0 alerts" in result.stdout
    assert f"{path}:2: invalid product: category may not contain U+001F" in result.stderr
