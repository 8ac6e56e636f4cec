"""When an event that was not delivered is tried again: the configured schedule (by default
the Standard Webhooks one: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), each delay
jittered so that a receiver coming back is not hit by every retry at once, and never
sooner than the receiver asked (`Retry-After`)."""

from __future__ import annotations

import random
from collections.abc import Sequence

# Each delay is spread over ±20% of itself.
JITTER = 0.2
# A Retry-After further off than this is taken as this: a day is a misconfiguration, not a
# plan (a receiver's typo must not park an event for a year).
MAX_RETRY_AFTER = 86_400.0


def next_delay(
    schedule: Sequence[float],
    attempts_made: int,
    retry_after: float | None = None,
    *,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after `attempts_made` attempts, or None when the
    schedule is spent (the event has failed)."""
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made]
    delay *= 1 + (rng or random).uniform(-JITTER, JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return max(0.0, delay)
