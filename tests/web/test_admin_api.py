"""The admin API on a real server over a real node: a bearer token, not a session, lets the
shop's back office put and delete single products; what it puts is change-detected and
percolated like a line of `percolert ingest`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import httpx
import msgspec
import pytest

from percolert.core.settings import Settings
from percolert.engine import es, indices
from percolert.products.catalog import parse_line
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices
from tests.servers import run_server
from tests.shoppers import Shopper

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-the-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KINDLE = {
    "product_name": "Kindle Paperwhite (16 GB)",
    "description": "6.8-inch glare-free display, adjustable warm light, waterproof.",
    "price": 159.99,
    "category": "e-readers",
    "brand": "Amazon",
    "in_stock": True,
}


@pytest.fixture(scope="module")
def admin_settings(elasticsearch_url: str) -> Iterator[Settings]:
    """A deployment of its own (these tests change its catalog) with an admin token."""
    settings = make_settings(elasticsearch_url, admin_token=TOKEN)
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture(scope="module")
def admin_server(admin_settings: Settings) -> Iterator[str]:
    with run_server(admin_settings) as url:
        yield url


async def stored(settings: Settings, sku: str) -> dict[str, Any] | None:
    client = es.create_client(settings)
    try:
        found = await client.options(ignore_status=404).get(
            index=indices.alias_for(settings, "products"), id=sku
        )
        return found["_source"] if found.get("found") else None
    finally:
        await client.close()


def put(url: str, sku: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.put(
        f"{url}/api/admin/products/{sku}",
        content=json.dumps(body),
        headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)},
        timeout=10,
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-wrong-token-wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "longer", "not-bearer", "empty"],
)
async def test_without_the_right_token_401_and_nothing_changes(
    admin_server: str, admin_settings: Settings, headers: dict[str, str]
) -> None:
    before = await stored(admin_settings, "ER-0002")
    answer = put(admin_server, "ER-0002", {**KINDLE, "price": 1.0}, headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"]["code"] == "unauthorized"
    assert "set-cookie" not in answer.headers  # no session for the admin API
    deleted = httpx.delete(f"{admin_server}/api/admin/products/ER-0002", headers=headers)
    assert deleted.status_code == 401
    assert await stored(admin_settings, "ER-0002") == before


async def test_a_cheaper_product_is_a_price_drop_that_alerts_and_shows_in_search(
    admin_server: str, admin_settings: Settings
) -> None:
    async with Shopper(admin_server) as alice:
        await alice.watch("kindle paperwhite", max_price=150)
        answer = put(admin_server, "ER-0001", {**KINDLE, "price": 129.99})
        assert answer.status_code == 200, answer.text
        assert "set-cookie" not in answer.headers
        assert answer.json() == {"sku": "ER-0001", "events": ["price_drop"], "alerts": 1}
        found = (await alice.search("paperwhite 16 GB")).json()["results"]
        assert {hit["id"]: hit["price"] for hit in found}["ER-0001"] == 129.99
        # The same product again: no news, no alert.
        again = put(admin_server, "ER-0001", {**KINDLE, "price": 129.99, "sku": "ER-0001"})
        assert again.json() == {"sku": "ER-0001", "events": [], "alerts": 0}


async def test_delete_then_put_again_is_new(admin_server: str, admin_settings: Settings) -> None:
    url = f"{admin_server}/api/admin/products/ER-0003"
    deleted = httpx.delete(url, headers=AUTH)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"sku": "ER-0003", "events": [], "alerts": 0}
    assert await stored(admin_settings, "ER-0003") is None
    gone = httpx.delete(url, headers=AUTH)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "product_not_found"
    back = put(admin_server, "ER-0003", {**KINDLE, "product_name": "Kindle Basic (2024)"})
    assert back.status_code == 200, back.text
    assert back.json()["events"] == ["new"]
    source = await stored(admin_settings, "ER-0003")
    assert source is not None
    assert source["product_name"] == "Kindle Basic (2024)"


async def test_a_bad_product_is_400_with_the_message_ingest_gives(
    admin_server: str, admin_settings: Settings
) -> None:
    before = await stored(admin_settings, "ER-0002")
    bad = {**KINDLE, "price": "cheap"}
    answer = put(admin_server, "ER-0002", bad)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_product"
    with pytest.raises(msgspec.ValidationError) as ingest_says:
        parse_line(json.dumps({**bad, "sku": "ER-0002"}).encode())
    assert answer.json()["error"]["message"] == f"invalid product: {ingest_says.value}"
    assert "$.price" in answer.json()["error"]["message"]
    unknown = put(admin_server, "ER-0002", {**KINDLE, "colour": "red"})
    assert unknown.status_code == 400
    assert "colour" in unknown.json()["error"]["message"]
    mismatch = put(admin_server, "ER-0002", {**KINDLE, "sku": "ER-0009"})
    assert mismatch.status_code == 400
    assert mismatch.json()["error"]["code"] == "sku_mismatch"
    bad_sku = put(admin_server, "not%20a%20sku", KINDLE)
    assert bad_sku.status_code == 400
    assert "$.sku" in bad_sku.json()["error"]["message"]
    not_json = httpx.put(
        f"{admin_server}/api/admin/products/ER-0002",
        content=b"{",
        headers={"Content-Type": "application/json", **AUTH},
    )
    assert not_json.status_code == 400
    assert not_json.json()["error"]["code"] == "invalid_json"
    assert await stored(admin_settings, "ER-0002") == before


async def test_a_product_larger_than_other_bodies_is_taken(
    admin_server: str, admin_settings: Settings
) -> None:
    long = {**KINDLE, "description": "paper-like " * 900}  # ~10 KB, past the 4 KiB of others
    answer = put(admin_server, "ER-0004", long)
    assert answer.status_code == 200, answer.text
    source = await stored(admin_settings, "ER-0004")
    assert source is not None
    assert source["description"] == long["description"]


async def test_admin_requests_are_rate_limited_per_address(admin_settings: Settings) -> None:
    limited = msgspec.structs.replace(
        admin_settings,
        rate_limits_enabled=True,
        rate_limit_storage="async+memory://",
        limit_admin_requests_per_address="2/10 years",
    )
    with run_server(limited) as url:
        answers = [put(url, "ER-0002", {"price": "cheap"}, {}) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [401, 401, 429]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    assert "retry-after" in answers[2].headers


def _admin_answer(url: str, method: str, path: str, headers: dict[str, str]) -> tuple[Any, ...]:
    """What a client learns of one admin request: status, the headers that matter, body."""
    answer = httpx.request(
        method,
        f"{url}/api/admin/{path}",
        content=json.dumps(KINDLE) if method in ("POST", "PUT", "PATCH") else None,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )
    return (
        answer.status_code,
        answer.headers.get("www-authenticate"),
        answer.headers.get("allow"),
        "set-cookie" in answer.headers,
        answer.content,
    )


@pytest.mark.parametrize(
    ("headers", "on_too"),
    [({}, True), ({"Authorization": "Bearer wrong-token-wrong-token-wrong"}, True), (AUTH, False)],
    ids=["none", "wrong", "another-deployments-token"],
)
def test_without_the_token_every_admin_request_gets_one_answer_enabled_or_not(
    server: str, admin_server: str, headers: dict[str, str], on_too: bool
) -> None:
    """Whatever the method, the path below /api/admin/ (a route or none) and whether the API
    is on (`admin_server`) or off (`server`, no token configured, so none is right): one 401,
    so nothing shows which routes there are or whether there is an admin API at all."""
    urls = [server, admin_server] if on_too else [server]
    answers = {
        (url, method, path): _admin_answer(url, method, path, headers)
        for url in urls
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        for path in ("products/ER-0001", "products", "products/ER-0001/more", "nothing", "")
    }
    body = {"error": {"code": "unauthorized", "message": ANY}}
    for key, (status, authenticate, allow, cookie, content) in answers.items():
        assert status == 401, key
        assert authenticate == "Bearer", key
        assert allow is None, key
        assert not cookie, key
        if key[1] != "HEAD":
            assert json.loads(content) == body, key
    assert len({answer for (_, method, _), answer in answers.items() if method != "HEAD"}) == 1


def test_with_the_token_the_admin_routes_say_what_they_take(admin_server: str) -> None:
    assert _admin_answer(admin_server, "GET", "products/ER-0001", AUTH)[0] == 405
    assert _admin_answer(admin_server, "PUT", "nothing", AUTH)[0] == 404


@pytest.mark.parametrize("sku", ["%2E", "%2E%2E"], ids=["dot", "dots"])
async def test_a_sku_of_dots_is_refused_before_it_names_an_elasticsearch_endpoint(
    admin_server: str, admin_settings: Settings, sku: str
) -> None:
    # `..` in Elasticsearch's URL would leave the document path (DELETE /<index>/).
    deleted = httpx.delete(f"{admin_server}/api/admin/products/{sku}", headers=AUTH)
    assert deleted.status_code == 400, deleted.text
    assert deleted.json()["error"]["code"] == "invalid_sku"
    answer = put(admin_server, sku, KINDLE)
    assert answer.status_code == 400, answer.text
    assert "$.sku" in answer.json()["error"]["message"]
    client = es.create_client(admin_settings)
    try:
        found = await client.mget(
            index=indices.alias_for(admin_settings, "products"), ids=[".", ".."]
        )
    finally:
        await client.close()
    assert not any(doc.get("found") for doc in found["docs"])


async def test_product_alerts_elasticsearch_refuses_are_a_clean_error(
    admin_server: str, admin_settings: Settings
) -> None:
    """Elasticsearch refusing the alert documents themselves (here a write block) answers
    with the one error shape, not an unhandled bulk error."""
    alerts = indices.alias_for(admin_settings, "product_alerts")
    client = es.create_client(admin_settings)
    try:
        async with Shopper(admin_server) as alice:
            await alice.watch("kindle oasis", max_price=400)
            await client.indices.put_settings(index=alerts, settings={"index.blocks.write": True})
            try:
                answer = put(
                    admin_server,
                    "ER-9105",
                    {**KINDLE, "product_name": "Kindle Oasis", "price": 199.0},
                )
            finally:
                await client.indices.put_settings(
                    index=alerts, settings={"index.blocks.write": None}
                )
    finally:
        await client.close()
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "elasticsearch_unavailable"


async def test_a_category_forging_a_price_range_is_400_and_never_stored(
    admin_server: str, admin_settings: Settings
) -> None:
    """Issue 22, row 7: a category `audio U+001F 0000000001` sorted among audio's prices
    under $0.02 (a watch's category and price are one range over `category U+001F cents`),
    so a $500 product fired watches on audio under $5 and was listed as a category."""
    async with Shopper(admin_server) as alice:
        await alice.watch("speaker", category="audio", max_price=5)
        forged = {
            **KINDLE,
            "product_name": "Forged Speaker",
            "category": "audio\u001f0000000001",
            "price": 500.0,
        }
        answer = put(admin_server, "AU-FORGED", forged)
        assert answer.status_code == 400, answer.text
        assert answer.json() == {
            "error": {
                "code": "invalid_product",
                "message": "invalid product: category may not contain U+001F, a control "
                "character Percolert uses as a separator (character 6)",
            }
        }
        assert await stored(admin_settings, "AU-FORGED") is None
        listed = (await alice.http.get("/api/categories")).json()["categories"]
        assert "audio" in listed
        assert all(category.isprintable() for category in listed)
        # Nor may a watch name such a category (every decoder of a watch refuses it).
        refused = await alice.http.post(
            "/api/watches",
            json={"terms": "speaker", "category": "audio\u001f0000000001", "max_price": 5},
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_watch"
        assert "$.category" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value", "refused"),
    [
        ("brand", "Amazon\u202e", "U+202E"),
        ("product_name", "Kindle\nPaperwhite", "U+000A"),
        ("category", "e-readers\u001e", "U+001E"),
        ("description", "glare-free\u001edisplay", "U+001E"),
        ("description", "glare-free\x00display", "U+0000"),
    ],
)
async def test_a_product_with_a_control_character_is_400_naming_the_field(
    admin_server: str, admin_settings: Settings, field: str, value: str, refused: str
) -> None:
    before = await stored(admin_settings, "ER-0002")
    answer = put(admin_server, "ER-0002", {**KINDLE, field: value})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_product"
    assert error["message"].startswith(f"invalid product: {field} may not contain {refused}")
    assert await stored(admin_settings, "ER-0002") == before


async def test_a_put_category_is_stored_trimmed_and_lower_cased_and_text_keeps_lines(
    admin_server: str, admin_settings: Settings
) -> None:
    description = "Glare-free display.\n\tWaterproof."
    answer = put(
        admin_server, "ER-9722", {**KINDLE, "category": " E-Readers ", "description": description}
    )
    assert answer.status_code == 200, answer.text
    source = await stored(admin_settings, "ER-9722")
    assert source is not None
    assert (source["category"], source["description"]) == ("e-readers", description)
