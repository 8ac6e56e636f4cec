"""The server process's garbage-collector policy: full collections rare, and cheap.

CPython's cyclic collector walks every tracked object in a full collection, with the event
loop stopped. An open alert socket keeps ~150 objects alive (uvicorn's protocol, Starlette's
WebSocket, the ASGI stack's coroutines, the hub's connection; ~195 before issue 14,
docs/benchmarks/socket-memory.md): at 5,000 sockets a full collection took 0.5-1 s, and
under load one came every ~10 s — the whole p99 of alert latency (docs/benchmarks/README.md).
So:

- the young generation is collected every 10,000 net allocations instead of 700, so that
  objects living as long as a request die young instead of piling up as long-lived;
- what has lived a while is frozen (`gc.freeze`) every `freeze_seconds`: frozen objects are
  still freed by reference counting, but full collections no longer walk them, so they
  stay cheap whatever the number of sockets;
- cyclic garbage among frozen objects is only found by a compaction (unfreeze, collect,
  freeze), which pauses like a full collection did. It runs when the frozen set has grown
  by `compact_growth` since the last one (garbage is then at most a share of what is
  alive), and at most once per `compact_seconds` (so that such pauses stay rare even while
  sockets keep arriving, which also grows the frozen set); the growth is only looked at
  then, as counting the frozen set walks it. At 10,000 sockets a compaction walks ~1.5M
  objects: 4.5-6 s on a busy 2-core machine, once as the sockets arrive. Closed alert
  sockets leave no cyclic garbage (`wsprotocol` unties their cycles); a closed HTTP
  connection leaves ~30 objects.

A process-wide setting, so only for a process that is the server (`percolert serve`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from percolert.web.logs import event

logger = logging.getLogger("percolert.gc")

YOUNG_THRESHOLD = 10_000  # CPython's default is 700


class GcPolicy:
    def __init__(
        self,
        *,
        freeze_seconds: float = 10.0,
        compact_growth: float = 1.0,
        compact_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._freeze_seconds = freeze_seconds
        self._compact_growth = compact_growth
        self._compact_seconds = compact_seconds
        self._clock = clock
        self._next_freeze = 0.0
        self._next_compaction = 0.0
        self._compacted_size = 0
        self.compactions = 0

    def start(self) -> None:
        """After startup: tune the young generation and freeze what exists (modules, app,
        clients)."""
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
        gc.freeze()
        self._compacted_size = gc.get_freeze_count()
        self._next_freeze = self._clock() + self._freeze_seconds
        self._next_compaction = self._clock() + self._compact_seconds

    def tick(self) -> None:
        """Called often (the server's 0.1 s tick); acts every `freeze_seconds`."""
        now = self._clock()
        if now < self._next_freeze:
            return
        self._next_freeze = now + self._freeze_seconds
        if now >= self._next_compaction:
            # Counting the frozen set walks all of it: ~0.12 s with the loop stopped at 5,000
            # sockets, seen as a stall every 10 s when it was counted on every freeze. So it
            # is counted only when a compaction may run, and then not again for as long.
            self._next_compaction = now + self._compact_seconds
            if gc.get_freeze_count() > (1 + self._compact_growth) * self._compacted_size:
                self.compact()
                return
        gc.freeze()

    def compact(self) -> None:
        frozen = gc.get_freeze_count()
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self._compacted_size = gc.get_freeze_count()
        self._next_compaction = self._clock() + self._compact_seconds
        self.compactions += 1
        event(
            logger,
            "gc_compaction",
            frozen_before=frozen,
            collected=collected,
            frozen_after=self._compacted_size,
            pause_ms=round(1000 * (time.perf_counter() - started), 1),
        )
