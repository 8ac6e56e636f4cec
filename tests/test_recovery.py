"""Alerts missed while offline come back on reconnect, in order, once; a reloaded page lists
its recent alerts; default-watch alerts are stored once."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from percolert import indices
from percolert.settings import Settings
from tests.servers import run_server
from tests.shoppers import Shopper, default_watch

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

        await b.search("pixel 9 pro")  # sent at once, to nobody connected
        await b.search("pixel tablet")  # folded into the follow-up
        await b.search("pixel buds")
        follow_up_due = WINDOW + 0.6
        assert await (await b.connect()).alerts_during(follow_up_due) == []  # B: own searches

        back = await a.connect(after=position)
        missed = await back.alerts_during(1.0)
        assert [(alert["query"], alert["count"]) for alert in missed] == [
            ("pixel 9 pro", 1),
            ("pixel buds", 2),
        ]
        seqs = [alert["seq"] for alert in missed]
        assert seqs == sorted(seqs)
        assert all(seq > position for seq in seqs)
        assert all(alert["watch"]["id"] == watch["id"] for alert in missed)

        await b.search("pixel watch")  # live now, after the window has closed
        live = await back.next_alert()
        assert live is not None
        assert live["query"] == "pixel watch"
        assert live["seq"] > seqs[-1]
        assert await back.alerts_during(0.5) == []  # nothing replayed twice

        # Reconnecting from the newest position brings nothing old back.
        again = await a.connect(after=live["seq"])
        assert await again.alerts_during(0.5) == []
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
        assert await reloaded.alerts_during(0.3) == []  # listed, not replayed as new alerts
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
        recovered = await c_back.alerts_during(1.0)
        assert [alert["id"] for alert in recovered] == [live["id"]]
        b_socket = await b.connect(after=c_position)
        assert await b_socket.alerts_during(0.5) == []  # the searcher never gets it

        await client.indices.refresh(index=alerts_alias)
        by_seq = await client.count(index=alerts_alias, query={"term": {"seq": live["seq"]}})
        assert by_seq["count"] == 1  # one document for everyone
