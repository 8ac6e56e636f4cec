"""The retry schedule: each delay jittered within ±20%, never sooner than Retry-After asks
(bounded to a day), and none once the schedule is spent."""

from __future__ import annotations

import random

from percolert.offsite.schedule import JITTER, MAX_RETRY_AFTER, next_delay

STANDARD = (0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000)


def test_delays_follow_the_schedule_within_the_jitter() -> None:
    rng = random.Random(7)
    for made, planned in enumerate(STANDARD[1:], start=1):
        for _ in range(50):
            delay = next_delay(STANDARD, made, rng=rng)
            assert delay is not None
            assert planned * (1 - JITTER) <= delay <= planned * (1 + JITTER)


def test_the_schedule_spent_is_the_end() -> None:
    assert next_delay(STANDARD, len(STANDARD)) is None


def test_retry_after_is_honoured_when_later_and_bounded() -> None:
    delay = next_delay(STANDARD, 1, retry_after=120)
    assert delay is not None
    assert delay >= 120
    delay = next_delay(STANDARD, 3, retry_after=1)
    assert delay is not None
    assert delay >= 1800 * (1 - JITTER)
    assert next_delay(STANDARD, 1, retry_after=10**9) == MAX_RETRY_AFTER
