"""The breaker on its own: open from the first trip until a background probe answers."""

from __future__ import annotations

import anyio
import pytest

from percolert.core.breaker import Breaker
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


async def test_open_from_a_trip_until_a_probe_answers_then_ready_to_trip_again() -> None:
    breaker = Breaker("a dependency", probe_interval=0.01)
    answers = [False, False, True, False, True]
    probes: list[bool] = []

    async def probe() -> None:
        answering = answers[len(probes)]
        probes.append(answering)
        if not answering:
            raise ConnectionError("no answer")

    async with anyio.create_task_group() as group:
        group.start_soon(breaker.run, probe)
        await anyio.wait_all_tasks_blocked()
        assert not breaker.open
        assert probes == []  # nothing is probed while it is closed
        breaker.trip("a request timed out")
        assert breaker.open
        await wait_until(lambda: not breaker.open, what="the probe to close the breaker")
        assert probes == [False, False, True]
        breaker.trip("timed out again")
        breaker.trip("and again")  # a second trip while open changes nothing
        await wait_until(lambda: not breaker.open, what="the breaker to close again")
        assert probes == [False, False, True, False, True]
        group.cancel_scope.cancel()
