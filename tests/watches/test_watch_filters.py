"""A watch's category and price are judged on everything the search found, not on the page
returned to the searcher, and together: "something in this category at or under this
price". Real server, real node, the sample catalog."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from percolert.core.settings import Settings
from tests.servers import run_server
from tests.shoppers import Shopper

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(catalog_settings: Settings) -> Iterator[str]:
    with run_server(msgspec.structs.replace(catalog_settings, coalesce_seconds=0.0)) as url:
        yield url


async def test_a_price_filter_sees_past_the_searchers_page(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("headphones", max_price=100)
        socket = await a.connect()
        # The sample catalog's best "headphones" hit costs more than $100; a $79.99 pair is
        # further down.
        everything = (await b.search("headphones", size=50)).json()["results"]
        assert min(hit["price"] for hit in everything) <= 100
        assert await socket.next_alert() is not None  # that search alerts, of course

        page = (await b.search("headphones", size=1)).json()
        # Nothing more shown of what it found (`at`: when it was made).
        assert set(page) == {"query", "total", "took_ms", "results", "at"}
        assert [hit["price"] > 100 for hit in page["results"]] == [True]
        alert = await socket.next_alert()
        assert alert is not None, "the page's top hit decided, not what the search found"
        assert alert["watch"]["id"] == watch["id"]
        # The alert shows what fits the watch: the cheaper pair past the searcher's page.
        assert alert["found"]
        assert all(product["price"] <= 100 for product in alert["found"])
        await a.unwatch(watch["id"])


async def test_category_and_price_are_judged_together(server: str) -> None:
    """ "sony" finds audio from $59.99 and TVs from $699.99: a TV under $100 was not found,
    though a TV and something under $100 both were."""
    specs: dict[str, dict[str, object]] = {
        "tv under 100": {"category": "tv", "max_price": 100},
        "audio under 100": {"category": "audio", "max_price": 100},
        "any tv": {"category": "tv"},
        "anything under 50": {"max_price": 50},
    }
    shoppers = {name: Shopper(server) for name in specs}
    async with Shopper(server) as searcher:
        try:
            for shopper in shoppers.values():
                await shopper.__aenter__()
            watches = {name: await shoppers[name].watch("sony", **specs[name]) for name in specs}
            sockets = {name: await shopper.connect() for name, shopper in shoppers.items()}
            await searcher.search("sony", size=50)  # the whole result on the page, even
            alerted = {
                name: [
                    alert["watch"]["id"]
                    for alert in await shoppers[name].alerts_before_marker(socket, searcher)
                ]
                for name, socket in sockets.items()
            }
            assert alerted == {
                "tv under 100": [],
                "audio under 100": [watches["audio under 100"]["id"]],
                "any tv": [watches["any tv"]["id"]],
                "anything under 50": [],
            }
            for name, watch in watches.items():
                await shoppers[name].unwatch(watch["id"])
        finally:
            for shopper in shoppers.values():
                await shopper.__aexit__(None, None, None)
