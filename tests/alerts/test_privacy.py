"""What shoppers learn of each other's searches, end to end: nothing from before their
session began (by replay, the hello's `recent`, or a follow-up), and no personal details in
what they do learn — not even in the alert log."""

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


async def logged_queries(client: AsyncElasticsearch, settings: Settings, after: int) -> list[str]:
    """The search text of every sending in the alert log after position `after`, as stored."""
    alias = indices.alias_for(settings, "alerts")
    await client.indices.refresh(index=alias)
    response = await client.search(index=alias, size=1000, query={"range": {"seq": {"gt": after}}})
    return [hit["_source"]["alert"]["query"] for hit in response["hits"]["hits"]]


async def wait_until_logged(
    client: AsyncElasticsearch, settings: Settings, after: int, text: str
) -> None:
    async def logged() -> bool:
        return text in await logged_queries(client, settings, after)

    await wait_until(logged, what=f"{text!r} in the alert log")


async def test_a_new_session_is_never_told_of_searches_made_before_it(
    server: str, settings: Settings
) -> None:
    async with (
        default_watch(settings, "iphone") as (_, client),
        Shopper(server) as earlier,  # a session that existed at the search, not connected
        Shopper(server) as searcher,
    ):
        before = position_now()
        await searcher.search("iphone for my divorce lawyer")  # nobody is connected
        await wait_until_logged(client, settings, before, "iphone for my divorce lawyer")

        async with Shopper(server) as newcomer:
            socket = await newcomer.connect(after=0)
            assert socket.hello["recent"] == []
            assert await socket.messages_before_pong() == []  # the replay comes before it

        # The same log does replay it to a session that existed when the search was made.
        replayed = await (await earlier.connect(after=0)).messages_before_pong()
        assert "iphone for my divorce lawyer" in [alert["query"] for alert in replayed]


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
        await searcher.search("roomba for the flat on 5 Elm Street")  # folded
        async with Shopper(server) as newcomer:
            arriving = await newcomer.connect(after=first["seq"] - 1)
            await searcher.search("roomba s8")  # folded too, after the newcomer arrived
            follow_up = await listening.next_alert(timeout=WINDOW + 3)
            assert follow_up is not None
            assert (follow_up["count"], follow_up["query"]) == (2, "roomba s8")
            # It counts a search from before the newcomer's session: not theirs to hear of.
            again = await newcomer.connect(after=0)
            assert again.hello["recent"] == []
            assert await again.messages_before_pong() == []
            assert await newcomer.alerts_before_marker(arriving, searcher) == []


async def test_personal_details_never_leave_the_server(server: str, settings: Settings) -> None:
    async with (
        default_watch(settings, "kindle") as (_, client),
        Shopper(server) as recipient,
        Shopper(server) as searcher,
    ):
        socket = await recipient.connect()
        position = socket.hello["last_seq"]
        await searcher.search("kindle for jane@example.com")
        alert = await socket.next_alert()
        assert alert is not None
        assert alert["query"] == "kindle for [email]"

        replayed: list[dict[str, Any]] = await (
            await recipient.connect(after=position)
        ).messages_before_pong()
        assert [item["query"] for item in replayed] == ["kindle for [email]"]
        await wait_until_logged(client, settings, position, "kindle for [email]")
        logged = await logged_queries(client, settings, position)
        assert [text for text in logged if "jane" in text] == []
