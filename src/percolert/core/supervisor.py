"""Background loops that outlive their own failures: each runs under a supervisor that logs a
crash with its traceback, counts it and restarts the loop after a growing pause.

Without one, a loop's unexpected exception ends the task group every loop runs in: one bug in
percolation would stop dispatch and the alert log with it, for the rest of the process's life.
The supervisor also knows which loops are down (between a crash and their restart), which
readiness reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

logger = logging.getLogger(__name__)

Loop = Callable[[], Awaitable[None]]


class Supervisor:
    def __init__(
        self,
        *,
        on_restart: Callable[[str], None] = lambda name: None,
        first_pause: float = 0.1,
        longest_pause: float = 5.0,
    ) -> None:
        """`on_restart(name)` hears of every restart. A loop that crashes again soon after a
        restart waits twice as long as the last time before the next, up to `longest_pause`;
        one that ran at least that long starts over at `first_pause`."""
        self._on_restart = on_restart
        self._first_pause = first_pause
        self._longest_pause = longest_pause
        self._down: set[str] = set()

    def start(self, group: TaskGroup, name: str, loop: Loop) -> None:
        """Run `loop` in `group` until the group is cancelled, restarting it when it ends."""
        group.start_soon(self._supervise, name, loop, name=f"supervised {name}")

    def down(self) -> list[str]:
        """The loops waiting to be restarted after a crash."""
        return sorted(self._down)

    async def _supervise(self, name: str, loop: Loop) -> None:
        pause = self._first_pause
        while True:
            started = time.monotonic()
            try:
                await loop()
            except Exception:  # cancellation is not an Exception: it ends the supervision too
                logger.exception("background loop %s crashed; restarting it", name)
            else:
                # Loops run until cancelled; one that returns has stopped doing its work.
                logger.error("background loop %s stopped; restarting it", name)
            if time.monotonic() - started >= self._longest_pause:
                pause = self._first_pause
            self._down.add(name)
            self._on_restart(name)
            try:
                await anyio.sleep(pause)
            finally:
                self._down.discard(name)
            pause = min(pause * 2, self._longest_pause)
