"""A value read again once it is older than its time to live, for values that many callers
ask for often and that may be a little old (a catalog's categories, a cluster's readiness)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Cached(Generic[T]):
    def __init__(
        self,
        read: Callable[[], Awaitable[T]],
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self._value: T | None = None
        self._read_at = -math.inf
        self._lock = anyio.Lock()

    def _fresh(self) -> bool:
        return self._clock() - self._read_at < self._ttl_seconds

    async def get(self) -> T:
        """The value as of at most `ttl_seconds` ago. Callers who find it stale together
        share one read; a read that raises leaves the old value stale, to be read again."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    self._value = await self._read()
                    self._read_at = self._clock()
        assert self._value is not None  # read at least once by now
        return self._value
