"""The alert socket at its edges, with real WebSocket clients: resume positions that are not
positions, a client's own pings, and a client that stops reading until it is dropped."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from percolert.core.settings import Settings
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.servers import logged_errors, metric, run_server
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

QUEUE = 4  # this module's socket queue: a socket this far behind is dropped


@pytest.fixture(scope="module")
def settings(catalog_settings: Settings) -> Settings:
    return msgspec.structs.replace(catalog_settings, coalesce_seconds=0.0, socket_queue_size=QUEUE)


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[str]:
    with run_server(settings) as url:
        yield url


async def open_socket(
    server: str, cookie: str, query: str = "", **options: object
) -> ClientConnection:
    return await connect(
        server.replace("http://", "ws://") + "/ws" + query,
        origin=Origin(server),
        additional_headers={"Cookie": f"{COOKIE_NAME}={cookie}"},
        open_timeout=10,
        ping_interval=None,  # only what the test sends
        **options,  # type: ignore[arg-type]
    )


def narrow_socket(server: str) -> socket.socket:
    """A connected TCP socket with small buffers on both ends: a small receive buffer here,
    and a small segment size, which keeps the server's send buffer small too (on loopback
    it would otherwise grow to megabytes)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    host, port = httpx.URL(server).host, httpx.URL(server).port
    raw.connect((host, port))
    return raw


def slow_socket_drops(server: str) -> float:
    return metric(server, "percolert_alerts_dropped_slow_socket_total")


async def search_until_dropped(server: str, searcher: Shopper, dropped: float) -> None:
    """Search (each search alerts the stalled watcher) until the server has dropped this
    many sockets for being slow since it started."""
    with anyio.fail_after(90):
        while slow_socket_drops(server) < dropped:
            async with anyio.create_task_group() as tasks:
                for _ in range(16):
                    # A search that finds several products: each alert shows three of them,
                    # a few hundred bytes that fill the stalled socket's buffers.
                    tasks.start_soon(searcher.search, "bose")


# --- item: `after` must be a position --------------------------------------------------------


@pytest.mark.parametrize(
    "after",
    [
        "%C2%B2",  # "²": str.isdigit says yes, int() says no
        "%D9%A3",  # Arabic-Indic three
        "9999999999999999999",  # past the alert log's long
        "99999999999999999999999",
        "-1",
        "+5",
        "%205",
        "",
        "12a",
    ],
)
async def test_a_bad_resume_position_is_a_clear_policy_close(server: str, after: str) -> None:
    async with Shopper(server) as a:
        connection = await open_socket(server, a.cookie, f"?after={after}")
        with pytest.raises(ConnectionClosed) as closed:
            await connection.recv()
        assert closed.value.rcvd is not None, "closed without a close frame"
        assert closed.value.rcvd.code == 1008
        assert "after" in closed.value.rcvd.reason


async def test_a_message_nested_too_deep_is_a_policy_close_not_a_crash(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Shopper(server) as a:
        socket = await a.connect()
        await socket.connection.send("[" * 16_000)  # under the frame bound, past the decoder

        async def read_until_closed() -> None:
            while True:
                await socket.connection.recv()

        with pytest.raises(ConnectionClosed) as closed:
            await read_until_closed()
        assert closed.value.rcvd is not None, "closed without a close frame"
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "malformed message")
        assert "RecursionError" not in caplog.text


async def test_the_largest_position_is_accepted(server: str) -> None:
    async with Shopper(server) as a:
        connection = await open_socket(server, a.cookie, f"?after={2**63 - 1}")
        hello = json.loads(await connection.recv())
        assert hello["type"] == "hello"
        assert hello["watches"] is not None  # not mistaken for an Elasticsearch outage
        await connection.close()


# --- item: pings do not count against the client ---------------------------------------------


async def test_pings_sent_back_to_back_all_get_pongs(server: str) -> None:
    pings = 300
    async with Shopper(server) as a:
        socket_a = await a.connect()

        async def ping() -> None:
            for _ in range(pings):
                await socket_a.connection.send('{"type": "ping"}')

        pongs = 0
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ping)
            with anyio.fail_after(30):
                while pongs < pings:
                    assert json.loads(await socket_a.connection.recv()) == {"type": "pong"}
                    pongs += 1
        # Still open and answering: not dropped as too slow.
        await socket_a.connection.send('{"type": "ping"}')
        assert await socket_a.receive() == {"type": "pong"}


# --- item: a client dropped for being slow is told so ----------------------------------------


def server_side_state(server: str, client: socket.socket) -> str | None:
    """The TCP state (hex, as in /proc/net/tcp; "01" is established) of the server's end of
    `client`'s connection, or None once the server holds no socket for it."""
    server_port = httpx.URL(server).port
    client_port = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == server_port and (
            int(remote.split(":")[1], 16) == client_port
        ):
            return state
    return None


def slow_client_settings(catalog_settings: Settings, close_seconds: float) -> Settings:
    # Every search alerts the same watch, which is what a too broad watch does: the bound on
    # breadth is off (a share of 1), or it would pause the watch before the socket fell behind.
    return msgspec.structs.replace(
        catalog_settings,
        coalesce_seconds=0.0,
        socket_queue_size=QUEUE,
        socket_close_seconds=close_seconds,
        broad_watch_share=1.0,
    )


async def test_a_dropped_client_is_told_1013_when_it_reads_again(
    catalog_settings: Settings,
) -> None:
    # The reader must drain within `socket_close_seconds` of being dropped: room for a loaded
    # machine. It drains as soon as it reads, so nothing waits that long.
    settings = slow_client_settings(catalog_settings, close_seconds=15)
    with run_server(settings) as server:
        async with Shopper(server) as a, Shopper(server) as b:
            await a.watch("bose")
            # A socket of the watcher that reads nothing until asked to, and takes at most
            # two messages off the wire on its own.
            reader = await open_socket(server, a.cookie, sock=narrow_socket(server), max_queue=2)
            await search_until_dropped(server, b, slow_socket_drops(server) + 1)

            # It reads again: what was written before it was dropped, then the close.
            received: list[dict[str, object]] = []
            with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012
                with anyio.fail_after(settings.socket_close_seconds):
                    while True:
                        received.append(json.loads(await reader.recv()))
            assert closed.value.rcvd is not None, "dropped without a close frame"
            assert closed.value.rcvd.code == 1013
            assert "too slow" in closed.value.rcvd.reason
            assert received[0]["type"] == "hello"
            assert len([message for message in received if message["type"] == "alert"]) > QUEUE


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
async def test_a_dropped_client_that_never_reads_again_is_cut_off(
    catalog_settings: Settings,
) -> None:
    # Its own server, with a short `socket_close_seconds`: the cut-off is what is waited for,
    # and a reader (above) needs the long one.
    settings = slow_client_settings(catalog_settings, close_seconds=0.5)
    with run_server(settings) as server:
        async with Shopper(server) as a, Shopper(server) as b:
            await a.watch("bose")
            never = narrow_socket(server)
            never_connection = await open_socket(server, a.cookie, sock=never, max_queue=2)
            await search_until_dropped(server, b, slow_socket_drops(server) + 1)

            # Once `socket_close_seconds` are up, the server stops waiting for its closing
            # handshake and lets the connection go.
            await wait_until(
                lambda: server_side_state(server, never) != "01",
                timeout=settings.socket_close_seconds + 15,
                what="the server to cut off the socket that never reads",
            )
            never_connection.transport.abort()


# --- a client that leaves while alerts flow is no error ----------------------------------------


async def test_clients_leaving_while_alerts_flow_leave_no_error_in_the_log(
    catalog_settings: Settings,
) -> None:
    """Each page is greeted with a long replay and leaves at once, while searches go on
    alerting it: its writer's send fails, and that is the client's leaving, not a server
    error (uvicorn logs what escapes the app as "Exception in ASGI application")."""
    # Every search alerts the one watch: with the bound on breadth on, it would pause it.
    settings = msgspec.structs.replace(
        catalog_settings, coalesce_seconds=0.0, broad_watch_share=1.0
    )
    with run_server(settings) as server, logged_errors() as errors:
        async with Shopper(server) as a, Shopper(server) as b:
            await a.watch("bose")
            start = (await a.connect()).hello["last_seq"]
            for number in range(100):
                await b.search(f"bose {number}")

            async def more_searches(searcher: Shopper) -> None:
                for number in range(200):
                    await searcher.search(f"bose again {number}")

            async with (
                Shopper(server) as c,
                Shopper(server) as d,
                anyio.create_task_group() as tasks,
            ):
                for searcher in (b, c, d):
                    tasks.start_soon(more_searches, searcher)
                for _ in range(40):
                    leaving = await open_socket(server, a.cookie, f"?after={start}")
                    assert json.loads(await leaving.recv())["type"] == "hello"
                    leaving.transport.abort()
                    await anyio.sleep(0.05)  # pacing: alerts queue up for the next one
    assert errors == []
