"""Waiting on a condition, never for a fixed time: a test that needs something to have
happened polls for it, with a deadline that only matters when it never happens."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    *,
    timeout: float = 10.0,
    what: str = "the condition",
) -> None:
    """Return as soon as `predicate()` (awaited, if it is a coroutine) is true; fail naming
    `what` after `timeout` seconds."""
    with anyio.move_on_after(timeout):
        while True:
            holds = predicate()
            if inspect.isawaitable(holds):
                holds = await holds
            if holds:
                return
            await anyio.sleep(0.005)
    raise AssertionError(f"gave up after {timeout} s waiting for {what}")


def wait_until_sync(
    predicate: Callable[[], object], *, timeout: float = 10.0, what: str = "the condition"
) -> None:
    """`wait_until` for synchronous tests (the browser tests)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.01)


async def eventually(
    read: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 10.0,
    interval: float = 0.2,
    what: str = "the condition",
) -> T:
    """The first value `read()` gives that is not None, read every `interval` seconds (for
    reads that cost the server a query each); fails naming `what` after `timeout`."""
    with anyio.move_on_after(timeout):
        while True:
            value = await read()
            if value is not None:
                return value
            await anyio.sleep(interval)
    raise AssertionError(f"gave up after {timeout} s waiting for {what}")
