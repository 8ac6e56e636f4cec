"""One try at delivering an outbox event, as every channel reports it and the delivery log
keeps it."""

from __future__ import annotations

from typing import Literal

import msgspec

# delivered: done. retry: try again later, on the schedule (a timeout, any answer of the
# shop's but 2xx and 410, an SMTP 4xx, a refused target). failed: never again (an SMTP 5xx
# about the message or the address). gone: the webhook endpoint answered 410 and is disabled.
Outcome = Literal["delivered", "retry", "failed", "gone"]


class Attempt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    outcome: Outcome
    at: str  # when the attempt started (ISO 8601, UTC)
    duration_ms: float
    status: int | None = None  # the HTTP status or SMTP reply code, when there was one
    error: str | None = None  # why it did not succeed, short and free of secrets
    retry_after: float | None = None  # seconds the receiver asked to wait (Retry-After)
    suppress: bool = False  # e-mail: the address was refused for good (never mail it again)
