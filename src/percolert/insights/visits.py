"""Which click-throughs were counted already: a shopper's visit counts once per alert (or per
watch, when the SDK names no alert) a day, however often they click or post it, so that
nobody can raise a watch's visits by posting again. Kept in memory per instance, by a hash
of the shopper and the alert (no shopper id is kept), bounded in size.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

# How long a visit is remembered, and how many at most (the oldest go first).
REMEMBER_SECONDS = 86_400.0
MAX_REMEMBERED = 200_000


class VisitsSeen:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def first(self, user: str, about: str) -> bool:
        """Whether this is `user`'s first visit of `about` (an alert or watch id) lately; it
        is remembered from now on."""
        now = self._clock()
        while self._seen and (
            len(self._seen) >= MAX_REMEMBERED
            or next(iter(self._seen.values())) <= now - REMEMBER_SECONDS
        ):
            self._seen.popitem(last=False)
        key = hashlib.blake2b(f"{user}\n{about}".encode(), digest_size=16).digest()
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
