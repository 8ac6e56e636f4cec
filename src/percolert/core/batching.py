"""Requests sent together: those asked while others are on their way go out as one.

A reconnect storm greets hundreds of sockets at once, and each greeting asks Elasticsearch
and the broker the same few things for its own user. One request each, queued behind a
handful of connections, made the last greeting wait for every read of the others in turn.
Here at most `width` batches are in flight; a caller that finds room sends its own request
with whatever else is waiting (up to `most`), and the others wait for a batch to end, then
either have their answer or send the next batch themselves. At low load a batch is one
request and goes out at once; under load batches grow by themselves while requests are in
flight, as the percolator's do. No task of its own: the callers do the sending. For reads:
a batch whose sender is cancelled is sent again by the next.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio

Request = TypeVar("Request")
Result = TypeVar("Result")

# Sends a batch: a result (or the exception that is its caller's) for each request, in order.
Send = Callable[[list[Request]], Awaitable[Sequence[Result | Exception]]]


class _Asked(Generic[Request, Result]):
    """One caller's request, and its answer once the batch it went in is back."""

    __slots__ = ("answered", "error", "request", "result", "sent")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.sent = False  # in a batch on its way
        self.answered = False
        self.result: Result | None = None
        self.error: Exception | None = None

    def answer(self, outcome: Result | Exception) -> None:
        if isinstance(outcome, Exception):
            self.error = outcome
        else:
            self.result = outcome
        self.answered = True


class Batches(Generic[Request, Result]):
    """`ask` one request; answered when the batch it went in is (see the module)."""

    def __init__(self, send: Send[Request, Result], *, width: int, most: int) -> None:
        if width < 1 or most < 1:
            raise ValueError("a batch needs room for one request, and one to be in flight")
        self._send = send
        self._width = width
        self._most = most
        # Bounded by the callers: each one waits for its own answer.
        self._waiting: deque[_Asked[Request, Result]] = deque()
        self._in_flight = 0
        self._ended = anyio.Event()  # set (and replaced) each time a batch ends
        self.batches = 0  # sent so far, and the requests in them: their mean size
        self.requests = 0

    async def ask(self, request: Request) -> Result:
        asked: _Asked[Request, Result] = _Asked(request)
        self._waiting.append(asked)
        try:
            while not asked.answered:
                if not asked.sent and self._in_flight < self._width:
                    await self._send_batch(asked)
                else:
                    await self._ended.wait()
        except BaseException:
            # Cancelled while waiting: not to be sent (a sender's batch was put back).
            with contextlib.suppress(ValueError):
                self._waiting.remove(asked)
            raise
        if asked.error is not None:
            raise asked.error
        return asked.result  # type: ignore[return-value]  # set with `answered`

    async def _send_batch(self, mine: _Asked[Request, Result]) -> None:
        """Send `mine` and the oldest others waiting."""
        self._waiting.remove(mine)
        batch = [mine]
        while self._waiting and len(batch) < self._most:
            batch.append(self._waiting.popleft())
        for asked in batch:
            asked.sent = True
        self._in_flight += 1
        self.batches += 1
        self.requests += len(batch)
        try:
            try:
                outcomes = await self._send([asked.request for asked in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"{len(outcomes)} answers to {len(batch)} requests")
            except Exception as error:  # every caller in the batch hears of it
                outcomes = [error] * len(batch)
            except BaseException:
                # This caller was cancelled: the others' requests go first in the next batch.
                for asked in batch[1:]:
                    asked.sent = False
                self._waiting.extendleft(reversed(batch[1:]))
                raise
            for asked, outcome in zip(batch, outcomes, strict=True):
                asked.answer(outcome)
        finally:
            self._in_flight -= 1
            ended, self._ended = self._ended, anyio.Event()
            ended.set()
