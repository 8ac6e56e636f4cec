"""What an open alert socket keeps in the server: one task, and no per-socket asyncio queue
or event (docs/benchmarks/socket-memory.md: at 10,000 sockets every object an idle socket
holds is paid ten thousand times, in memory and in each compaction's pause)."""

from __future__ import annotations

import asyncio
import gc
import json
from types import MappingProxyType
from typing import Any

import anyio
import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

from percolert.core.settings import Settings
from percolert.server.wsprotocol import FrameWritingProtocol, _Flag, _Inbox
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.servers import run_server
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """The coroutines `task` is suspended in, outermost first: "file:qualified name", the
    file's path from site-packages if it is a library's."""
    names: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        if code is not None:
            names.append(f"{code.co_filename.rsplit('/site-packages/', 1)[-1]}:{code.co_qualname}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return names


def _in_alert_socket(task: asyncio.Task[Any]) -> bool:
    """Whether `task` is suspended inside a coroutine of percolert.web.alert_socket."""
    return any(
        name.partition(":")[0].endswith("percolert/web/alert_socket.py")
        for name in _await_chain(task)
    )


def socket_tasks() -> int:
    """Tasks of any event loop in this process (the test server's thread) serving a socket."""
    return sum(
        1
        for obj in gc.get_objects()
        # type(), not isinstance(): a dead weak proxy raises on the latter
        if issubclass(type(obj), asyncio.Task) and _in_alert_socket(obj)
    )


async def test_an_open_socket_is_served_by_one_task(catalog_settings: Settings) -> None:
    """The writer also reads what the client sends: no reader task waits beside it."""
    with run_server(catalog_settings) as server:
        async with Shopper(server) as a:
            sockets = [await a.connect() for _ in range(3)]
            for socket in sockets:  # each still answers its pings
                assert await socket.messages_before_pong() == []
            await wait_until(lambda: socket_tasks() >= 3, what="the sockets' tasks")
            assert socket_tasks() == 3
            await sockets[0].close()
            await wait_until(lambda: socket_tasks() == 2, what="the closed socket's task to end")


async def test_an_open_socket_keeps_no_frame_of_the_asgi_stack(catalog_settings: Settings) -> None:
    """The endpoint detaches its live part (frames.detacher): the socket's task starts at
    the protocol, not at uvicorn's `run_asgi` twenty coroutines above the endpoint (the
    middlewares, Starlette's routing), and the user's socket count still ends with it."""
    settings = msgspec.structs.replace(catalog_settings, max_sockets_per_user=1)
    with run_server(settings) as server:
        async with Shopper(server) as a:
            socket = await a.connect()
            await wait_until(lambda: socket_tasks() == 1, what="the socket's task")
            (task,) = [
                obj
                for obj in gc.get_objects()
                if issubclass(type(obj), asyncio.Task) and _in_alert_socket(obj)
            ]
            chain = _await_chain(task)
            assert chain[0].endswith("FrameWritingProtocol._run_rest"), chain
            assert not [name for name in chain if "starlette" in name or "middleware" in name]
            assert any(name.endswith("Connection.write") for name in chain)
            await socket.close()
            # The session's cap (one socket) was held until the detached part ended, and
            # is let go then: a new socket opens.
            await wait_until(lambda: socket_tasks() == 0, what="the closed socket's task to end")
            again = await a.connect()
            assert await again.messages_before_pong() == []


async def test_a_ping_sent_during_the_greeting_is_answered_after_the_hello(
    catalog_settings: Settings,
) -> None:
    """What the client sends before its writer runs is read once it does."""
    with run_server(catalog_settings) as server:
        async with (
            Shopper(server) as a,
            connect(
                server.replace("http://", "ws://") + "/ws",
                origin=Origin(server),
                additional_headers={"Cookie": f"{COOKIE_NAME}={a.cookie}"},
            ) as client,
        ):
            await client.send('{"type": "ping"}')  # before the hello has been read
            with anyio.fail_after(10):
                assert json.loads(await client.recv())["type"] == "hello"
                assert json.loads(await client.recv()) == {"type": "pong"}


async def test_an_idle_socket_holds_no_asyncio_queue_or_event(catalog_settings: Settings) -> None:
    """uvicorn's protocol makes an asyncio queue (three deques of 760 bytes, empty) and an
    event per socket, and copies the lifespan's state into each socket's scope; and the
    handshake's request and response are let go once accepted."""
    with run_server(catalog_settings) as server:
        async with Shopper(server) as a:
            await a.connect()
            protocols = [
                obj
                for obj in gc.get_objects()
                if type(obj) is FrameWritingProtocol  # not isinstance(): dead weak proxies
                and obj.server is not None
                and obj.server[1] == int(server.rsplit(":", 1)[1])  # this test's server
                and obj.handshake_complete
                and not obj.disconnected  # an earlier server's, on the same port
            ]
            assert len(protocols) == 1
            protocol = protocols[0]
            assert not isinstance(protocol.queue, asyncio.Queue)
            assert not isinstance(protocol.writable, asyncio.Event)
            assert not hasattr(protocol, "request")
            assert not hasattr(protocol, "response")
            # websockets' parser holds the request it parsed for the connection's life:
            # its headers, the session cookie among them, are gone.
            parsed = protocol.conn.parser.gi_frame.f_locals["request"]
            assert list(parsed.headers.raw_items()) == []
            # The lifespan's state is read, not copied for each socket.
            assert isinstance(protocol.scope["state"], MappingProxyType)
            assert protocol.scope["state"]["hub"].socket_count() == 1


# --- the stand-ins for asyncio's queue and event ------------------------------------------------


async def test_the_inbox_hands_out_events_in_order_and_wakes_a_waiting_getter() -> None:
    inbox = _Inbox()
    assert inbox.empty()
    got: list[Any] = []

    async def get() -> None:
        got.append(await inbox.get())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(get)
        await wait_until(lambda: inbox._getters, what="the getter to wait")
        inbox.put_nowait({"type": "websocket.receive", "text": "1"})
    inbox.put_nowait({"type": "websocket.receive", "text": "2"})
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert not inbox.empty()
    assert [got[0], await inbox.get(), await inbox.get()] == [
        {"type": "websocket.receive", "text": "1"},
        {"type": "websocket.receive", "text": "2"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    assert inbox.empty()


async def test_an_event_for_a_getter_cancelled_once_woken_goes_to_the_next_one() -> None:
    inbox = _Inbox()
    got: list[Any] = []

    async def get() -> None:
        got.append(await inbox.get())

    async with anyio.create_task_group() as tasks:
        first = asyncio.ensure_future(inbox.get())
        tasks.start_soon(get)
        await wait_until(lambda: len(inbox._getters) == 2, what="both getters to wait")
        inbox.put_nowait({"type": "websocket.connect"})  # wakes the first
        first.cancel()
    assert got == [{"type": "websocket.connect"}]
    assert inbox.empty()


async def test_the_inbox_tells_its_listener_of_each_event() -> None:
    inbox = _Inbox()
    told: list[int] = []
    inbox.listener = lambda: told.append(inbox.qsize())
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert told == [1, 2]


async def test_the_flag_holds_waiters_until_set() -> None:
    flag = _Flag()
    assert flag.is_set()
    assert await flag.wait()
    flag.clear()
    woken: list[bool] = []

    async def wait() -> None:
        woken.append(await flag.wait())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait)
        tasks.start_soon(wait)
        await wait_until(lambda: len(flag._waiters) == 2, what="both to wait")
        assert woken == []
        flag.set()
    assert woken == [True, True]
    assert flag._waiters == []
