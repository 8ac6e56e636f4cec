"""`percolert ingest`: the sample catalog, re-ingest, and a file with bad lines — from the
library and from the command line, against the real node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from percolert.core.settings import Settings
from percolert.engine import es, indices
from percolert.products.catalog import (
    BadProduct,
    Product,
    StoredTextReport,
    category_names,
    ingest,
    stored_text_problems,
)
from tests.conftest import SAMPLE_CATALOG, run_cli

pytestmark = pytest.mark.anyio

GOOD = {
    "sku": "T-1",
    "product_name": "Kindle Test Edition",
    "description": "an e-reader",
    "price": 99.5,
    "category": "e-readers",
    "brand": "Amazon",
    "in_stock": True,
}


def line(**changes: object) -> str:
    return json.dumps({**GOOD, **changes})


BAD_FILE_LINES = [
    line(sku="T-1"),  # 1 good
    '{"sku": "T-2", "product_name": ',  # 2 truncated JSON
    line(sku="T-3", price=-5),  # 3 negative price
    "",  # 4 blank: skipped, not an error
    line(sku="T-5", colour="red"),  # 5 unknown field
    json.dumps({k: v for k, v in GOOD.items() if k != "category"} | {"sku": "T-6"}),  # 6 missing
    line(sku="T-7", price="cheap"),  # 7 wrong type
    line(sku="T-8"),  # 8 good
    line(sku="bad sku with spaces"),  # 9 bad id
    line(sku="T-10", product_name='Kindle <b>Bold</b> & "quoted"'),  # 10 good, odd text
]


def sample_line_count() -> int:
    return sum(1 for raw in SAMPLE_CATALOG.read_text().splitlines() if raw.strip())


async def test_sample_catalog_loads_completely_and_reingest_updates(
    fresh_settings: Settings,
) -> None:
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    try:
        await indices.setup(client, fresh_settings)
        first = await ingest(client, alias, SAMPLE_CATALOG, chunk_size=64)
        expected = sample_line_count()
        assert (first.loaded, first.failed) == (expected, 0)
        assert (await client.count(index=alias))["count"] == expected
        second = await ingest(client, alias, SAMPLE_CATALOG)
        assert second.loaded == expected
        assert (await client.count(index=alias))["count"] == expected  # updated, not duplicated
    finally:
        await client.close()


def test_sample_catalog_is_realistic() -> None:
    products = [json.loads(raw) for raw in SAMPLE_CATALOG.read_text().splitlines() if raw]
    assert len(products) >= 200
    assert len({product["category"] for product in products}) >= 8
    assert len({product["sku"] for product in products}) == len(products)
    names = " ".join(product["product_name"] for product in products).lower()
    for classic in ("kindle", "iphone", "headphones", "macbook", "charger"):
        assert classic in names


async def test_bad_lines_are_reported_by_number_and_good_lines_load(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join(BAD_FILE_LINES) + "\n")
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    seen_progress: list[int] = []
    try:
        await indices.setup(client, fresh_settings)
        report = await ingest(client, alias, path, on_progress=seen_progress.append)
        assert report.loaded == 3
        assert [error.line for error in report.errors] == [2, 3, 5, 6, 7, 9]
        reasons = {error.line: error.reason for error in report.errors}
        assert "not valid JSON" in reasons[2]
        assert "$.price" in reasons[3]
        assert "colour" in reasons[5]
        assert "category" in reasons[6]
        assert "$.price" in reasons[7]
        assert "$.sku" in reasons[9]
        assert sum(seen_progress) == path.stat().st_size
        stored = await client.get(index=alias, id="T-10")
        assert stored["_source"]["product_name"] == 'Kindle <b>Bold</b> & "quoted"'
        assert (await client.count(index=alias))["count"] == 3
    finally:
        await client.close()


def test_cli_setup_and_ingest(fresh_settings: Settings, tmp_path: Path) -> None:
    before_setup = run_cli(fresh_settings, "ingest", str(SAMPLE_CATALOG))
    assert before_setup.returncode == 1
    assert "run `percolert setup` first" in before_setup.stderr

    setup = run_cli(fresh_settings, "setup")
    assert setup.returncode == 0, setup.stderr
    assert "created" in setup.stdout
    assert "up to date" in run_cli(fresh_settings, "setup").stdout

    good = run_cli(fresh_settings, "ingest", str(SAMPLE_CATALOG))
    assert good.returncode == 0, good.stderr
    assert f"loaded {sample_line_count()}, failed 0" in good.stdout

    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join(BAD_FILE_LINES) + "\n")
    mixed = run_cli(fresh_settings, "ingest", str(path))
    assert mixed.returncode == 1
    assert "loaded 3, failed 6" in mixed.stdout
    for number in (2, 3, 5, 6, 7, 9):
        assert f"{path}:{number}: " in mixed.stderr
    assert f"{path}:1:" not in mixed.stderr

    missing = run_cli(fresh_settings, "ingest", str(tmp_path / "nope.ndjson"))
    assert missing.returncode == 1
    assert "no such file" in missing.stderr


def test_cli_reports_an_unreachable_cluster_in_one_line(fresh_settings: Settings) -> None:
    from tests.servers import free_port

    down = Settings(elasticsearch_url=f"http://127.0.0.1:{free_port()}", index_prefix="x")
    result = run_cli(down, "setup")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("percolert: error: cannot reach Elasticsearch at")
    )
    assert "Traceback" not in result.stderr


# Text a product may not hold (`core.fields`): a separator Percolert builds keywords with, a
# control character, a bidi override, a line break in a one-line field.
TEXT_FILE_LINES = [
    line(sku="U-1", category=" Audio "),  # 1 good: stored trimmed and lower-cased
    line(sku="U-2", category="audio\u001f0000000001"),  # 2 forges a price range
    line(sku="U-3", brand="Amazon\u202e"),  # 3 bidi override
    line(sku="U-4", product_name="Kindle\nTest"),  # 4 line break in a name
    line(sku="U-5", description="line one\n\tline two"),  # 5 good: running text
    line(sku="U-6", description="forged\u001efield"),  # 6 separator in a description
    line(sku="U-7", category="\u001f "),  # 7 trimming must not hide it
    line(sku="U-8", category="   "),  # 8 blank once trimmed
]


async def test_text_with_control_or_separator_characters_is_a_bad_line(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "text.ndjson"
    path.write_text("\n".join(TEXT_FILE_LINES) + "\n")
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    try:
        await indices.setup(client, fresh_settings)
        report = await ingest(client, alias, path)
        reasons = {error.line: error.reason for error in report.errors}
        assert sorted(reasons) == [2, 3, 4, 6, 7, 8]
        assert report.loaded == 2
        assert reasons[2] == (
            "invalid product: category may not contain U+001F, a control character Percolert "
            "uses as a separator (character 6)"
        )
        assert reasons[3].startswith("invalid product: brand may not contain U+202E")
        assert reasons[4].startswith("invalid product: product_name may not contain U+000A")
        assert reasons[6].startswith("invalid product: description may not contain U+001E")
        assert reasons[7].startswith("invalid product: category may not contain U+001F")
        assert reasons[8] == "invalid product: category may not be blank"
        normalised = await client.get(index=alias, id="U-1")
        assert normalised["_source"]["category"] == "audio"
        multiline = await client.get(index=alias, id="U-5")
        assert multiline["_source"]["description"] == "line one\n\tline two"
        assert await category_names(client, alias) == ["audio", "e-readers"]
    finally:
        await client.close()


def test_a_product_built_in_code_is_checked_too() -> None:
    fields = {**GOOD, "category": "audio\x1f0000000001"}
    with pytest.raises(ValueError, match="category may not contain U\\+001F"):
        Product(**fields)  # type: ignore[arg-type]
    assert Product(**{**GOOD, "category": "E-Readers "}).category == "e-readers"  # type: ignore[arg-type]


async def test_stored_products_with_bad_text_are_found(fresh_settings: Settings) -> None:
    """What was stored before the catalog checked its text: found by a search over the
    keyword fields, written here straight to the index as an older Percolert could."""
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "products")
    try:
        await indices.setup(client, fresh_settings)
        assert await stored_text_problems(client, alias) == StoredTextReport()
        documents = {
            "OK-1": GOOD,
            "BAD-1": {**GOOD, "category": "audio\x1f0000000001"},
            "BAD-2": {**GOOD, "product_name": "Kindle\u202e", "brand": "Ama\x00zon"},
            "BAD\x1f3": GOOD,
            "OK-2": {**GOOD, "category": "Audio"},
        }
        for sku, source in documents.items():
            await client.index(index=alias, id=sku, document={**source, "sku": sku})
        await client.indices.refresh(index=alias)
        found = await stored_text_problems(client, alias)
        assert found.products == 3
        assert sorted(found.examples, key=lambda bad: bad.sku) == [
            BadProduct(sku="BAD\x1f3", fields=["sku"]),
            BadProduct(sku="BAD-1", fields=["category"]),
            BadProduct(sku="BAD-2", fields=["product_name", "brand"]),
        ]
        assert found.uncased_categories == ["Audio"]
        assert len((await stored_text_problems(client, alias, examples=1)).examples) == 1
    finally:
        await client.close()
