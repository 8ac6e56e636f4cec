"""Search as a shopper uses it: real HTTP against a real server over the sample catalog."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from percolert.core.settings import Settings
from percolert.engine import es, indices
from percolert.engine.search import ALERT_TOP_HITS, build_query, search_products
from tests.conftest import SAMPLE_CATALOG


def search(server: str, q: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server}/api/search", params={"q": q, **params}, timeout=10)


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["product_name"] for hit in response.json()["results"]]


def test_kindle_finds_a_kindle_first(server: str) -> None:
    found = names(search(server, "kindle"))
    assert found[0].startswith("Kindle")
    # Every Kindle in the sample outranks the Fire tablets and chargers.
    assert all(name.startswith("Kindle") for name in found[:8])


def test_response_shape(server: str) -> None:
    body = search(server, "kindle paperwhite", size=2).json()
    assert body["query"] == "kindle paperwhite"
    assert body["total"] >= 2
    assert body["took_ms"] >= 0
    assert len(body["results"]) == 2
    assert set(body["results"][0]) == {
        "id",
        "product_name",
        "description",
        "price",
        "category",
        "brand",
        "in_stock",
        "score",
    }
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("typo", "expected"),
    [
        ("kindel", "Kindle"),  # transposition
        ("paperwhtie", "Kindle Paperwhite"),
        ("macbok air", "MacBook Air"),  # a dropped letter
        ("headphnes", "Headphones"),
    ],
)
def test_one_typo_in_a_longer_word_still_finds_it(server: str, typo: str, expected: str) -> None:
    found = names(search(server, typo))
    assert found, f"nothing found for {typo!r}"
    assert expected.lower() in found[0].lower()


def test_short_words_are_not_fuzzy(server: str) -> None:
    # "ipad" must not also find products that merely differ by one letter.
    response = search(server, "ipad", size=50)
    hits = response.json()["results"]
    assert hits
    assert all("ipad" in f"{hit['product_name']} {hit['description']}".lower() for hit in hits), (
        names(response)
    )


def test_name_match_ranks_above_description_match(server: str) -> None:
    # "waterproof" is in the name of nothing but the description of many speakers and
    # e-readers; "speaker" in the name must win over "speaker" in a description.
    found = names(search(server, "speaker"))
    assert "speaker" in found[0].lower()


def test_phrase_in_name_is_boosted(server: str) -> None:
    found = names(search(server, "noise cancelling headphones", size=5))
    assert all("noise cancelling headphones" in name.lower() for name in found[:3]), found


def test_all_words_must_match_for_short_queries(server: str) -> None:
    body = search(server, "kindle scribe", size=50).json()
    assert [hit["product_name"] for hit in body["results"]] == ["Kindle Scribe"]


def test_brand_and_category_words_help(server: str) -> None:
    found = names(search(server, "sony headphones"))
    assert found
    assert all(name.startswith("Sony") for name in found)
    categories = {hit["category"] for hit in search(server, "e-readers", size=50).json()["results"]}
    assert categories == {"e-readers"}


def test_nothing_found_is_an_empty_list(server: str) -> None:
    body = search(server, "zzzqqq").json()
    assert body["total"] == 0
    assert body["results"] == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"q": ""}, "invalid_query"),
        ({"q": "   "}, "invalid_query"),
        ({"q": "x" * 201}, "invalid_query"),
        ({"q": "kindle", "size": "0"}, "invalid_size"),
        ({"q": "kindle", "size": "51"}, "invalid_size"),
        ({"q": "kindle", "size": "ten"}, "invalid_size"),
        ({"q": "kindle", "size": "-3"}, "invalid_size"),
        # Only ASCII digits: int() alone would take each of these.
        ({"q": "kindle", "size": "1_0"}, "invalid_size"),
        ({"q": "kindle", "size": " 5 "}, "invalid_size"),
        ({"q": "kindle", "size": "+5"}, "invalid_size"),
        ({"q": "kindle", "size": "\u0665"}, "invalid_size"),  # ARABIC-INDIC DIGIT FIVE
        ({"q": "kindle", "size": "\uff15"}, "invalid_size"),  # FULLWIDTH DIGIT FIVE
        ({"q": "kindle", "size": "9" * 5000}, "invalid_size"),
    ],
)
def test_bad_parameters_are_400_with_the_error_shape(
    server: str, params: dict[str, str], code: str
) -> None:
    response = httpx.get(f"{server}/api/search", params=params, timeout=10)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_missing_q_is_400(server: str) -> None:
    response = httpx.get(f"{server}/api/search", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_query"


def test_200_characters_is_allowed(server: str) -> None:
    assert search(server, "kindle " + "a" * 193).status_code == 200


def test_query_syntax_is_just_text(server: str) -> None:
    # Shoppers never send DSL: operators and JSON are searched as plain words.
    for text in [
        'kindle AND "',
        '{"match_all": {}}',
        "title:* OR 1=1",
        "<script>alert(1)</script>",
    ]:
        response = search(server, text)
        assert response.status_code == 200, response.text
        assert response.json()["query"] == text


def test_unknown_route_uses_the_error_shape(server: str) -> None:
    response = httpx.get(f"{server}/api/nope", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_health_and_readiness(server: str) -> None:
    assert httpx.get(f"{server}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["broker"] in ("memory", "up")  # up: PERCOLERT_TEST_BROKER=redis


def test_page_is_served(server: str) -> None:
    page = httpx.get(f"{server}/", timeout=10)
    assert page.status_code == 200
    assert "<title>Percolert</title>" in page.text
    assert httpx.get(f"{server}/static/app.js", timeout=10).status_code == 200


def test_built_query_keeps_the_text_as_text() -> None:
    query = build_query('{"match_all": {}}')
    assert query["bool"]["must"]["match"]["all_text"]["query"] == '{"match_all": {}}'


@pytest.mark.anyio
async def test_an_alert_may_show_the_best_hits_then_each_categorys_cheapest(
    catalog_settings: Settings,
) -> None:
    """Besides the shopper's answer, a search gives what an alert about it may show: catalog
    data of its best few hits, then of the cheapest product in each category it found (the
    one a watch on that category under a price matched through), each product once."""
    catalog = {
        product["sku"]: product
        for product in map(json.loads, SAMPLE_CATALOG.read_text().splitlines())
    }
    client = es.create_client(catalog_settings)
    try:
        answer, found, products = await search_products(
            client, indices.alias_for(catalog_settings, "products"), "pixel", 10
        )
    finally:
        await client.close()
    skus = [product.sku for product in products]
    assert len(skus) == len(set(skus))
    assert skus[:ALERT_TOP_HITS] == [hit.id for hit in answer.results[:ALERT_TOP_HITS]]
    assert len(found) > 1  # phones, audio, tablets...
    for category, cheapest in found:
        assert any(
            product.category == category and product.price == cheapest for product in products
        ), (category, cheapest)
    for product in products:
        entry = catalog[product.sku]
        assert (product.product_name, product.price, product.category, product.brand) == (
            entry["product_name"],
            entry["price"],
            entry["category"],
            entry["brand"],
        )
        assert product.previous_price is None
