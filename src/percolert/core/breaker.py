"""A circuit breaker for a dependency that hangs rather than refuses.

A cluster that stops answering (a long pause, a network black hole) makes every caller wait
its whole timeout, so requests pile up in the server while nothing can succeed. Once a call
has timed out the breaker is open: callers learn at once that the dependency is down and
answer (or go without it) immediately. Meanwhile `run` probes it in the background, one
probe at a time, and closes the breaker as soon as a probe answers, so recovery costs
callers nothing: the first call after it goes straight through.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

logger = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]


class Breaker:
    def __init__(self, name: str, *, probe_interval: float = 1.0) -> None:
        """`name` is the dependency's, for the log; a failed probe is tried again after
        `probe_interval` seconds."""
        self._name = name
        self._probe_interval = probe_interval
        self._open = False
        # Made by `run`, inside the event loop (the breaker itself may be made outside one).
        self._tripped: anyio.Event | None = None

    @property
    def open(self) -> bool:
        """Whether the dependency is known to be down now."""
        return self._open

    def trip(self, reason: str) -> None:
        """A call timed out: callers skip the dependency until a probe answers."""
        if self._open:
            return
        logger.warning("%s is down (%s): skipped until it answers again", self._name, reason)
        self._open = True
        if self._tripped is not None:
            self._tripped.set()

    async def run(self, probe: Probe) -> None:
        """Until cancelled: whenever the breaker is open, `probe()` every `probe_interval`
        (the first after one interval) until it returns (any exception is a failed probe);
        then close it."""
        while True:
            if not self._open:
                self._tripped = anyio.Event()
                await self._tripped.wait()
            while True:
                # Open for at least an interval: a dependency that answers the probe but not
                # the calls that tripped it (a busy search pool, a read-only Redis) is asked
                # at most once an interval, not by every caller.
                await anyio.sleep(self._probe_interval)
                try:
                    await probe()
                except Exception as error:  # any failure: still down
                    logger.debug("%s probe failed: %r", self._name, error)
                    continue
                break
            self._open = False
            logger.warning("%s answers again", self._name)
