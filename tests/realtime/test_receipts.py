"""A message offered with `on_sent` is reported sent once the socket was written to, not
when it was only queued, and never when the socket closed first (the product feed marks
alerts shown by it: products/shown.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from percolert.realtime.hub import Connection
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def writing(connection: Connection) -> AsyncIterator[None]:
    """The connection's writer running (and waiting for work) for the block; then finished."""
    async with anyio.create_task_group() as group:
        scope = anyio.CancelScope()

        async def write() -> None:
            with scope:
                await connection.write(scope)

        group.start_soon(write)
        await anyio.wait_all_tasks_blocked()
        yield
        connection.finish()


async def test_on_sent_comes_after_the_write_not_at_the_queueing() -> None:
    written: list[str] = []
    let_through = anyio.Event()

    async def send_text(text: str) -> None:
        await let_through.wait()
        written.append(text)

    told: list[str] = []
    connection = Connection("user", send_text, queue_size=10)
    assert connection.offer("plain")
    assert connection.offer("alert", on_sent=lambda: told.append("alert"))
    async with writing(connection):
        assert told == []  # queued, the writer waits on the socket
        let_through.set()
        await wait_until(lambda: told == ["alert"], what="the receipt")
        assert written == ["plain", "alert"]


async def test_a_frame_written_at_once_is_reported_at_once() -> None:
    frames: list[bytes] = []

    def write_frame(frame: bytes) -> bool:
        frames.append(frame)
        return True

    async def send_text(text: str) -> None:
        raise AssertionError("the frame path was expected")

    told: list[str] = []
    connection = Connection("user", send_text, queue_size=10, write_frame=write_frame)
    async with writing(connection):
        assert connection.offer("alert", b"frame", on_sent=lambda: told.append("alert"))
        assert told == ["alert"]
        assert frames == [b"frame"]


async def test_a_socket_closed_before_the_write_reports_nothing() -> None:
    async def send_text(text: str) -> None:
        raise AssertionError("nothing is written to a closed socket")

    told: list[str] = []
    connection = Connection("user", send_text, queue_size=10)
    assert connection.offer("alert", on_sent=lambda: told.append("alert"))
    connection.close()
    await connection.write(anyio.CancelScope())
    assert told == []
