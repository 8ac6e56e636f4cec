"""Alerts missed while offline come back on reconnect, in order, once; a reloaded page lists
its recent alerts; default-watch alerts are stored once."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[str]:
    with run_server(settings) as url:
        yield url


async def test_missed_alerts_are_replayed_in_order_then_live_ones_follow(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("pixel")
        first = await a.connect()
        position = first.hello["last_seq"]
        await first.close()

        created = metric(server, "percolert_alerts_created_total")
        await b.search("pixel 9 pro")  # sent at once, to nobody connected
        await b.search("pixel tablet")  # folded into the follow-up
        await b.search("pixel buds")
        await wait_until(
            lambda: metric(server, "percolert_alerts_created_total") >= created + 2,
            what="the alert and its follow-up, made while A is away",
        )

        back = await a.connect(after=position)
        missed = [await back.next_alert(), await back.next_alert()]
        assert [(alert["query"], alert["count"]) for alert in missed if alert] == [
            ("pixel 9 pro", 1),
            ("pixel buds", 2),
        ]
        seqs = [alert["seq"] for alert in missed if alert]
        assert seqs == sorted(seqs)
        assert all(seq > position for seq in seqs)
        assert all(alert and alert["watch"]["id"] == watch["id"] for alert in missed)

        await b.search("pixel watch")  # live now (at once, or as the next follow-up)
        live = await back.next_alert()
        assert live is not None
        assert live["query"] == "pixel watch"  # the replay was those two, nothing more
        assert live["seq"] > seqs[-1]

        # Reconnecting from the newest position brings nothing old back, and nothing is
        # replayed twice: the next alert on either socket is the next search's.
        again = await a.connect(after=live["seq"])
        await b.search("pixel fold")
        for socket in (back, again):
            following = await socket.next_alert()
            assert following is not None
            assert (following["query"], following["count"]) == ("pixel fold", 1)
        await a.unwatch(watch["id"])


async def test_a_reloaded_page_gets_its_recent_alerts_in_hello(server: str) -> None:
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("oura ring")
        socket = await a.connect()
        await b.search("oura ring 4")
        alert = await socket.next_alert()
        assert alert is not None
        reloaded = await a.connect()  # a fresh page: no position to resume from
        assert [item["id"] for item in reloaded.hello["recent"]] == [alert["id"]]
        assert reloaded.hello["last_seq"] >= alert["seq"]
        await b.search("oura ring gen3")
        following = await reloaded.next_alert()
        assert following is not None
        assert following["query"] == "oura ring gen3"  # listed, not replayed as a new alert
        newcomer = Shopper(server)
        async with newcomer:
            assert (await newcomer.connect()).hello["recent"] == []  # never someone else's
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
        await a.search("Roomba combo")
        for socket in (c_back, b_socket):
            following = await socket.next_alert()
            assert following is not None
            assert following["query"] == "Roomba combo"

        async def stored() -> int:
            await client.indices.refresh(index=alerts_alias)
            by_seq = await client.count(index=alerts_alias, query={"term": {"seq": live["seq"]}})
            return int(by_seq["count"])

        await wait_until(stored, what="the alert log to write the alert")
        assert await stored() == 1  # one document for everyone
