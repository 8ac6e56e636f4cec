"""Alerts missed while offline come back on reconnect, in order, once; a reloaded page lists
its recent alerts; default-watch alerts are stored once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from percolert.core.settings import Settings
from percolert.engine import indices
from tests.servers import metric, run_server
from tests.shoppers import Shopper, default_watch
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

WINDOW = 0.5


@pytest.fixture(scope="module")
def settings(catalog_settings: Settings) -> Settings:
    return msgspec.structs.replace(catalog_settings, coalesce_seconds=WINDOW)


async def best_hit(searcher: Shopper, text: str) -> str:
    """Search as `searcher`; the sku of the best product found (the first an alert about
    the search shows a watch without filters)."""
    results = (await searcher.search(text)).json()["results"]
    assert results, f"the catalog has nothing for {text!r}"
    sku: str = results[0]["id"]
    return sku


def first_found(alert: dict[str, Any] | None) -> str:
    assert alert is not None
    assert "query" not in alert  # what matched, never what was typed
    sku: str = alert["found"][0]["sku"]
    return sku


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[str]:
    with run_server(settings) as url:
        yield url


async def test_missed_alerts_are_replayed_in_order_then_live_ones_follow(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("pixel")
        first = await a.connect()
        # A's own position, before any alert of theirs: never anyone else's.
        position = first.hello["last_seq"]
        assert position == 0
        assert first.hello["recovered"] is None  # not resuming
        await first.close()

        created = metric(server, "percolert_alerts_created_total")
        pro = await best_hit(b, "pixel 9 pro")  # sent at once, to nobody connected
        await b.search("pixel tablet")  # folded into the follow-up
        buds = await best_hit(b, "pixel buds")
        await wait_until(
            lambda: metric(server, "percolert_alerts_created_total") >= created + 2,
            what="the alert and its follow-up, made while A is away",
        )

        back = await a.connect(after=position)
        missed = [await back.next_alert(), await back.next_alert()]
        # The follow-up shows what the latest of its searches found first.
        assert [(first_found(alert), alert["count"]) for alert in missed if alert] == [
            (pro, 1),
            (buds, 2),
        ]
        seqs = [alert["seq"] for alert in missed if alert]
        assert seqs == sorted(seqs)
        assert all(seq > position for seq in seqs)
        assert all(alert and alert["watch"]["id"] == watch["id"] for alert in missed)
        assert back.hello["recovered"] is True  # all it missed follows
        # Replayed, so not listed as well; the position covers the replay.
        assert back.hello["recent"] == []
        assert back.hello["last_seq"] == seqs[-1]

        watch_sku = await best_hit(b, "pixel watch")  # live now (at once, or a follow-up)
        live = await back.next_alert()
        assert live is not None
        assert first_found(live) == watch_sku  # the replay was those two, nothing more
        assert live["seq"] > seqs[-1]

        # Reconnecting from the newest position brings nothing old back, and nothing is
        # replayed twice: the next alert on either socket is the next search's.
        again = await a.connect(after=live["seq"])
        assert again.hello["last_seq"] == live["seq"]
        fold = await best_hit(b, "pixel fold")
        for socket in (back, again):
            following = await socket.next_alert()
            assert following is not None
            assert (first_found(following), following["count"]) == (fold, 1)
            assert following["seq"] > live["seq"]
        await a.unwatch(watch["id"])


async def test_a_reloaded_page_gets_its_recent_alerts_in_hello(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("oura ring")
        socket = await a.connect()
        await b.search("oura ring 4")
        alert = await socket.next_alert()
        assert alert is not None
        reloaded = await a.connect()  # a fresh page: no position to resume from
        assert reloaded.hello["recent"] == [alert]
        assert reloaded.hello["last_seq"] == alert["seq"]  # the newest alert it lists
        gen3 = await best_hit(b, "oura ring for sleep")
        following = await reloaded.next_alert()
        assert following is not None
        # Listed, not replayed as a new alert: the next one is the next search's.
        assert following["id"] != alert["id"]
        assert following["seq"] > alert["seq"]
        assert first_found(following) == gen3
        newcomer = Shopper(server)
        async with newcomer:
            greeted = (await newcomer.connect()).hello
            assert greeted["recent"] == []  # never someone else's
            assert greeted["last_seq"] == 0  # nor anyone else's position
        await a.unwatch(watch["id"])


async def test_default_watch_alerts_are_stored_once_and_recovered_by_everyone(
    server: str, settings: Settings
) -> None:
    alerts_alias = indices.alias_for(settings, "alerts")
    async with (
        default_watch(settings, "roomba") as (_, client),
        Shopper(server) as a,
        Shopper(server) as b,
        Shopper(server) as c,
    ):
        a_socket, c_socket = await a.connect(), await c.connect()
        c_position = c_socket.hello["last_seq"]
        await c_socket.close()  # c goes offline
        await b.search("iRobot Roomba j7")
        live = await a_socket.next_alert()
        assert live is not None

        c_back = await c.connect(after=c_position)
        recovered = await c_back.next_alert()
        assert recovered is not None
        assert recovered["id"] == live["id"]
        b_socket = await b.connect(after=c_position)
        # The next search's alert is the next each gets: c's replay was that one alert, and
        # the searcher b never gets their own.
        combo = await best_hit(a, "Roomba robot vacuum")
        for socket in (c_back, b_socket):
            following = await socket.next_alert()
            assert following is not None
            assert following["seq"] > live["seq"]
            assert first_found(following) == combo

        async def stored() -> int:
            await client.indices.refresh(index=alerts_alias)
            by_seq = await client.count(index=alerts_alias, query={"term": {"seq": live["seq"]}})
            return int(by_seq["count"])

        await wait_until(stored, what="the alert log to write the alert")
        assert await stored() == 1  # one document for everyone
