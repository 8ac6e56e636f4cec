"""Batches: requests asked while a batch is on its way go out together, and each caller gets
its own answer (or its own error)."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from percolert.core.batching import Batches

pytestmark = pytest.mark.anyio


class Refused(Exception):
    pass


class Sender:
    """Sends a batch when the test lets it (`release`), answering each number doubled, and
    a negative number with an error of its own."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = anyio.Event()
        self.fail_with: Exception | None = None
        self.answers_short = False

    async def __call__(self, batch: list[int]) -> Sequence[int | Exception]:
        self.sent.append(batch)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        if self.fail_with is not None:
            raise self.fail_with
        answers: list[int | Exception] = [
            Refused(number) if number < 0 else 2 * number for number in batch
        ]
        return answers[:-1] if self.answers_short else answers


def batches(sender: Sender, *, width: int = 1, most: int = 100) -> Batches[int, int]:
    return Batches(sender, width=width, most=most)


async def ask_all(
    asking: Batches[int, int], numbers: list[int], sender: Sender
) -> dict[int, int | Exception]:
    """Ask each number at once, and release the sender once all are asked (waiting or
    being sent); each one's outcome."""
    outcomes: dict[int, int | Exception] = {}

    async def ask(number: int) -> None:
        try:
            outcomes[number] = await asking.ask(number)
        except Exception as error:
            outcomes[number] = error

    async with anyio.create_task_group() as callers:
        for number in numbers:
            callers.start_soon(ask, number)
        await anyio.wait_all_tasks_blocked()
        sender.release.set()
    return outcomes


async def test_requests_asked_while_one_is_sent_go_in_the_next_batch() -> None:
    sender = Sender()
    asking = batches(sender)
    outcomes = await ask_all(asking, list(range(1, 11)), sender)
    assert outcomes == {number: 2 * number for number in range(1, 11)}
    # The first went alone (nothing else was waiting), the other nine together behind it.
    assert sender.sent == [[1], list(range(2, 11))]
    assert (asking.batches, asking.requests) == (2, 10)


async def test_a_batch_holds_at_most_most_and_width_bounds_those_in_flight() -> None:
    sender = Sender()
    asking = batches(sender, width=2, most=4)
    outcomes = await ask_all(asking, list(range(1, 21)), sender)
    assert outcomes == {number: 2 * number for number in range(1, 21)}
    assert sender.sent[:2] == [[1], [2]]
    assert max(map(len, sender.sent)) == 4
    assert sender.most_in_flight == 2
    assert sorted(number for batch in sender.sent for number in batch) == list(range(1, 21))


async def test_an_error_of_one_request_reaches_its_caller_alone() -> None:
    sender = Sender()
    outcomes = await ask_all(batches(sender), [1, -2, 3, 4], sender)
    assert sender.sent == [[1], [-2, 3, 4]]
    assert (outcomes[1], outcomes[3], outcomes[4]) == (2, 6, 8)
    refused = outcomes[-2]
    assert isinstance(refused, Refused)
    assert refused.args == (-2,)


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_goes_on() -> None:
    sender = Sender()
    sender.fail_with = ConnectionError("down")
    asking = batches(sender)
    outcomes = await ask_all(asking, [1, 2, 3], sender)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes.values())
    sender.fail_with = None
    assert await asking.ask(5) == 10


async def test_answers_that_do_not_match_the_batch_are_an_error_to_each_caller() -> None:
    sender = Sender()
    sender.answers_short = True
    outcomes = await ask_all(batches(sender), [1, 2], sender)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes.values())


def open_gate(sender: Sender) -> None:
    """Let the batch on its way through, and hold the next one."""
    gate, sender.release = sender.release, anyio.Event()
    gate.set()


class Callers:
    """Callers asking one at a time (0 first, the sender of the first batch), and what each
    was answered."""

    def __init__(self, sender: Sender) -> None:
        self.asking = batches(sender)
        self.outcomes: dict[int, int] = {}

    async def ask(self, number: int) -> None:
        self.outcomes[number] = await self.asking.ask(number)


async def test_a_cancelled_sender_leaves_the_rest_of_its_batch_to_the_next() -> None:
    sender = Sender()
    ask = Callers(sender)
    async with anyio.create_task_group() as callers:
        callers.start_soon(ask.ask, 0)
        await anyio.wait_all_tasks_blocked()
        async with anyio.create_task_group() as cancelled:
            cancelled.start_soon(ask.ask, 1)
            callers.start_soon(ask.ask, 2)
            callers.start_soon(ask.ask, 3)
            await anyio.wait_all_tasks_blocked()
            open_gate(sender)
            await anyio.wait_all_tasks_blocked()
            assert sender.sent == [[0], [1, 2, 3]]  # 1 sends its batch
            cancelled.cancel_scope.cancel()  # and is cancelled while it is on its way
        await anyio.wait_all_tasks_blocked()
        assert sender.sent == [[0], [1, 2, 3], [2, 3]]
        sender.release.set()
    assert ask.outcomes == {0: 0, 2: 4, 3: 6}


async def test_a_caller_cancelled_while_waiting_is_not_sent() -> None:
    sender = Sender()
    ask = Callers(sender)
    async with anyio.create_task_group() as callers:
        callers.start_soon(ask.ask, 0)
        await anyio.wait_all_tasks_blocked()
        async with anyio.create_task_group() as cancelled:
            cancelled.start_soon(ask.ask, 1)
            await anyio.wait_all_tasks_blocked()
            cancelled.cancel_scope.cancel()
        callers.start_soon(ask.ask, 2)
        await anyio.wait_all_tasks_blocked()
        sender.release.set()
    assert sender.sent == [[0], [2]]
    assert ask.outcomes == {0: 0, 2: 4}


def test_a_batch_needs_room_and_one_in_flight() -> None:
    with pytest.raises(ValueError, match="one to be in flight"):
        batches(Sender(), width=0)
    with pytest.raises(ValueError, match="one to be in flight"):
        batches(Sender(), most=0)
