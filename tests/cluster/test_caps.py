"""The caps of one user hold across instances: a user's watches and open sockets are counted
on all instances together, not per process."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from percolert.core.settings import Settings
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.servers import run_server
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

MAX_WATCHES = 3
MAX_SOCKETS = 2


@pytest.fixture(scope="module")
def capped(catalog_settings: Settings, redis_url: str) -> Iterator[tuple[str, str]]:
    settings = msgspec.structs.replace(
        catalog_settings,
        redis_url=redis_url,
        max_watches_per_user=MAX_WATCHES,
        max_sockets_per_user=MAX_SOCKETS,
    )
    with run_server(settings) as one, run_server(settings) as two:
        yield one, two


async def test_parallel_creates_on_two_instances_stop_at_the_watch_cap(
    capped: tuple[str, str],
) -> None:
    one, two = capped
    async with Shopper(one) as shopper:
        on_two = Shopper(two)
        on_two.http.cookies.set(COOKIE_NAME, shopper.cookie)
        statuses: list[int] = []

        async def create(client: Shopper, terms: str) -> None:
            response = await client.http.post("/api/watches", json={"terms": terms})
            statuses.append(response.status_code)
            if response.status_code != 201:
                assert response.json()["error"]["code"] == "too_many_watches", response.text

        words = ["kindle", "headphones", "charger", "keyboard", "monitor", "speaker"]
        async with on_two.http, anyio.create_task_group() as group:
            for number, word in enumerate(words * 2):
                client = shopper if number % 2 == 0 else on_two
                group.start_soon(create, client, f"{word} {number}")
        listed = (await shopper.http.get("/api/watches")).json()["watches"]
    assert sorted(statuses).count(201) == MAX_WATCHES, statuses
    assert len(listed) == MAX_WATCHES


async def test_the_socket_cap_counts_the_sockets_on_every_instance(
    capped: tuple[str, str],
) -> None:
    one, two = capped
    async with Shopper(one) as shopper:
        await shopper.connect()
        await shopper.connect(base_url=two)
        # Each instance alone holds fewer than the cap, so the handshake is let in; the
        # user's sockets together are at the cap, so the socket is closed at once, saying why.
        async with connect(
            one.replace("http://", "ws://") + "/ws",
            origin=Origin(one),
            additional_headers=Headers({"Cookie": f"{COOKIE_NAME}={shopper.cookie}"}),
            open_timeout=10,
        ) as third:
            with pytest.raises(ConnectionClosed) as closed:
                await third.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
        assert f"at most {MAX_SOCKETS}" in closed.value.rcvd.reason
        # One closes: another may open, on either instance.
        await shopper.sockets[0].close()
        shopper.sockets.pop(0)

        async def reopened() -> bool:
            try:
                await shopper.connect()
            except (AssertionError, ConnectionClosed):
                return False
            return True

        await wait_until(reopened, what="a socket to open once another closed")
