"""Which click-throughs were counted already. A shopper's visit counts once per alert a day,
however often they click or post it, and at most MAX_PER_WATCH times a day for one watch:
the alert's id comes from the page, which may make up new ones, so a shopper can raise a
watch's visits by no more than as many alerts followed. Kept in memory per instance, by a
hash of the shopper and the watch (no shopper id is kept), bounded in size.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

# How long visits are remembered, and for how many shoppers' watches at most (the oldest go
# first).
REMEMBER_SECONDS = 86_400.0
MAX_REMEMBERED = 200_000
# Alerts of one watch a shopper's visits count for, a day.
MAX_PER_WATCH = 5


def _hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class VisitsSeen:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (shopper, watch) → when first seen, and the alerts counted for it since.
        self._seen: OrderedDict[bytes, tuple[float, set[bytes]]] = OrderedDict()

    def first(self, user: str, watch_id: str, alert_id: str | None) -> bool:
        """Whether `user`'s visit of `alert_id` (an alert of `watch_id`; None: the watch's
        alerts as one) counts: the first lately, within the watch's MAX_PER_WATCH. It is
        remembered from now on."""
        now = self._clock()
        while self._seen and (
            len(self._seen) >= MAX_REMEMBERED
            or next(iter(self._seen.values()))[0] <= now - REMEMBER_SECONDS
        ):
            self._seen.popitem(last=False)
        key = _hash(f"{user}\n{watch_id}")
        about = _hash(alert_id or "")
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = (now, {about})
            return True
        counted = seen[1]
        if about in counted or len(counted) >= MAX_PER_WATCH:
            return False
        counted.add(about)
        return True
