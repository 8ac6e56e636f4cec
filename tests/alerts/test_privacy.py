"""What shoppers learn of each other's searches, end to end: nothing from before their
session began (by replay, the hello's `recent`, or a follow-up), and never a word another
shopper typed — only what matched: their watch, how many searches, and the products those
searches found that fit it. Not in the alert, not in the alert log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.core.settings import Settings
from percolert.engine import indices
from tests.servers import run_server
from tests.shoppers import Shopper, default_watch
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

WINDOW = 2.0  # coalescing window of this module's server, seconds


@pytest.fixture(scope="module")
def settings(catalog_settings: Settings) -> Settings:
    return msgspec.structs.replace(catalog_settings, coalesce_seconds=WINDOW)


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[str]:
    with run_server(settings) as url:
        yield url


def position_now() -> int:
    """A position below every sending made from now on (positions are microsecond times)."""
    return int(time.time() * 1_000_000)


async def logged_alerts(
    client: AsyncElasticsearch, settings: Settings, after: int
) -> list[dict[str, Any]]:
    """Every sending in the alert log after position `after`, as stored."""
    alias = indices.alias_for(settings, "alerts")
    await client.indices.refresh(index=alias)
    response = await client.search(index=alias, size=1000, query={"range": {"seq": {"gt": after}}})
    return [hit["_source"] for hit in response["hits"]["hits"]]


async def wait_until_logged(
    client: AsyncElasticsearch, settings: Settings, after: int, count: int = 1
) -> list[dict[str, Any]]:
    logged: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal logged
        logged = await logged_alerts(client, settings, after)
        return len(logged) >= count

    await wait_until(enough, what=f"{count} sendings in the alert log")
    return logged


def skus(alert: dict[str, Any]) -> list[str]:
    return [product["sku"] for product in alert["found"]]


# Machine-made values: an id or a moment holds digits (positions, times) that may happen to
# spell what a stranger typed ("4111"), without carrying it.
_MADE_HERE = frozenset({"id", "at", "seq", "created_at"})


def words_in(document: object) -> str:
    """Everything a document says in text, as one lower-cased text to look for words in
    (keys and text values; not the ids and moments made here, nor numbers)."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                found.append(str(key))
                if key not in _MADE_HERE:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.append(value)

    walk(document)
    return " ".join(found).lower()


async def test_a_new_session_is_never_told_of_searches_made_before_it(
    server: str, settings: Settings
) -> None:
    async with (
        default_watch(settings, "iphone") as (_, client),
        Shopper(server) as earlier,  # a session that existed at the search, not connected
        Shopper(server) as searcher,
    ):
        before = position_now()
        await searcher.search("iphone 16 pro max")  # nobody is connected
        await wait_until_logged(client, settings, before)

        async with Shopper(server) as newcomer:
            socket = await newcomer.connect(after=0)
            assert socket.hello["recent"] == []
            assert await socket.messages_before_pong() == []  # the replay comes before it

        # The same log does replay it to a session that existed when the search was made.
        greeted = await earlier.connect(after=0)
        replayed = await greeted.messages_before_pong()
        assert ["PH-0001"] in [skus(alert)[:1] for alert in replayed]
        assert greeted.hello["recent"] == []  # replayed, so not listed as well
        listed = await earlier.connect()  # a fresh page: listed, nothing replayed
        assert [alert["id"] for alert in listed.hello["recent"]] == [
            alert["id"] for alert in replayed
        ]


async def test_a_follow_up_does_not_reach_a_session_begun_during_its_window(
    server: str, settings: Settings
) -> None:
    async with (
        default_watch(settings, "roomba"),
        Shopper(server) as listener,
        Shopper(server) as searcher,
    ):
        listening = await listener.connect()
        await searcher.search("roomba j7")  # at once to everyone connected; opens the window
        first = await listening.next_alert()
        assert first is not None
        await searcher.search("roomba combo")  # folded
        async with Shopper(server) as newcomer:
            arriving = await newcomer.connect(after=first["seq"] - 1)
            await searcher.search("roomba s8")  # folded too, after the newcomer arrived
            follow_up = await listening.next_alert(timeout=WINDOW + 3)
            assert follow_up is not None
            assert follow_up["count"] == 2
            # It counts a search from before the newcomer's session: not theirs to hear of.
            again = await newcomer.connect(after=0)
            assert again.hello["recent"] == []
            assert await again.messages_before_pong() == []
            assert await newcomer.alerts_before_marker(arriving, searcher) == []


PERSONAL = ["john", "smith", "221b", "baker", "street", "london", "wife", "4111"]


async def test_an_alert_carries_no_word_a_stranger_typed(server: str, settings: Settings) -> None:
    """Names and addresses cannot be told by pattern: nothing typed is carried at all."""
    async with (
        default_watch(settings, "iphone") as (_, client),
        Shopper(server) as recipient,
        Shopper(server) as searcher,
    ):
        socket = await recipient.connect()
        before = position_now()
        await searcher.search(
            "iphone case for the wife of John Smith at 221B Baker Street London 4111 1111"
        )
        alert = await socket.next_alert()
        assert alert is not None
        assert (alert["watch"]["terms"], alert["count"]) == ("iphone", 1)
        assert "query" not in alert
        assert [word for word in PERSONAL if word in words_in(alert)] == []

        again = await recipient.connect(after=0)
        assert again.hello["recent"] == []  # replayed, so not listed as well
        [replayed] = await again.messages_before_pong()
        assert replayed["id"] == alert["id"]
        [listed] = (await recipient.connect()).hello["recent"]
        assert [word for word in PERSONAL if word in words_in([replayed, listed])] == []
        logged = await wait_until_logged(client, settings, before)
        assert [word for word in PERSONAL if word in words_in(logged)] == []


async def test_phishing_text_reaches_nobody(server: str, settings: Settings) -> None:
    async with (
        default_watch(settings, "pixel"),
        Shopper(server) as recipient,
        Shopper(server) as searcher,
    ):
        socket = await recipient.connect()
        for text in (
            "pixel FREE giveaway claim at apple-gift.shop now",
            "pixel login evil\u3002com/verify",
            "pixel evil[.]com/reset jane(at)example(dot)com",
        ):
            await searcher.search(text)
        alerts = await socket.alerts_during(WINDOW + 2)  # the first, then a follow-up
        assert [alert["count"] for alert in alerts] == [1, 2]
        said = words_in(alerts)
        for word in ("giveaway", "apple-gift", "evil", "verify", "reset", "jane", "example"):
            assert word not in said


async def test_an_alert_shows_what_the_searches_found_that_fits_the_watch(
    server: str, settings: Settings
) -> None:
    async with Shopper(server) as owner, Shopper(server) as searcher:
        await owner.watch("iphone", max_price=900)
        await owner.watch("kindle", category="e-readers")
        socket = await owner.connect()

        await searcher.search("iphone 16")
        alert = await socket.next_alert()
        assert alert is not None
        assert alert["watch"]["max_price"] == 900
        # It found $799, $999, $899 and $1199 iPhones: those under the watch's price show.
        assert skus(alert) == ["PH-0004", "PH-0003"]

        await searcher.search("kindle paperwhite")
        alert = await socket.next_alert()
        assert alert is not None
        assert alert["watch"]["category"] == "e-readers"
        assert {"ER-0001", "ER-0002"} & set(skus(alert))  # the Paperwhites it found
        assert {product["category"] for product in alert["found"]} == {"e-readers"}
        assert len(alert["found"]) <= 3


async def test_a_brand_new_session_hears_only_what_matched(server: str, settings: Settings) -> None:
    """A session with no watches of its own, reached through a default watch."""
    async with (
        default_watch(settings, "kindle"),
        Shopper(server) as newcomer,
        Shopper(server) as searcher,
    ):
        socket = await newcomer.connect()
        assert socket.hello["protocol"] == 2
        await searcher.search("kindle for jane@example.com at 5 Elm Street")
        alert = await socket.next_alert()
        assert alert is not None
        assert sorted(alert) == ["at", "count", "found", "id", "seq", "type", "watch"]
        assert [word for word in ("jane", "example", "elm") if word in words_in(alert)] == []


async def test_positions_tell_nothing_of_other_shoppers_alerts(
    server: str, settings: Settings
) -> None:
    """The hello's `last_seq` is the newest of the user's own alerts, not the service's."""
    async with (
        Shopper(server) as idle,
        Shopper(server) as busy,
        Shopper(server) as searcher,
    ):
        first = await idle.connect()
        assert first.hello["last_seq"] == 0
        await busy.watch("roomba")
        listening = await busy.connect()
        await searcher.search("roomba j7")
        assert await listening.next_alert() is not None
        again = await idle.connect(after=first.hello["last_seq"])
        assert again.hello["last_seq"] == 0
