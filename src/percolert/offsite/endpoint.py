"""The shop's webhook endpoint as delivery found it (mappings/webhook_endpoints.json):
disabled after a 410 Gone or after failing for `disable_after` without one success, with
the reason and the moment, until an admin enables it again. Delivery reads it before each
round (one read by id) and writes it only when it changes."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.core.times import iso_from_seconds, seconds_from_iso
from percolert.offsite.attempts import Attempt

logger = logging.getLogger(__name__)


class EndpointState(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    disabled: bool = False
    reason: str | None = None
    disabled_at: str | None = None
    failing_since: str | None = None
    last_success_at: str | None = None
    last_error: str | None = None


class Endpoint:
    def __init__(
        self, client: AsyncElasticsearch, alias: str, url: str, *, disable_after_seconds: float
    ) -> None:
        self._client = client
        self._alias = alias
        self._url = url
        self._id = hashlib.sha256(url.encode()).hexdigest()[:32]
        self._disable_after = disable_after_seconds
        self.state = EndpointState(url=url)

    async def read(self) -> EndpointState:
        found = (await self._client.mget(index=self._alias, ids=[self._id]))["docs"][0]
        source: dict[str, Any] = found.get("_source") or {} if found.get("found") else {}
        self.state = msgspec.convert({**source, "url": self._url}, EndpointState)
        return self.state

    async def observe(self, attempts: list[Attempt]) -> None:
        """What a round of attempts says of the endpoint: a success clears its failing
        spell, a 410 disables it, and so does failing for longer than allowed."""
        state = self.state
        for attempt in attempts:
            if attempt.outcome == "delivered":
                state = msgspec.structs.replace(
                    state, failing_since=None, last_success_at=attempt.at, last_error=None
                )
            elif attempt.outcome == "gone":
                state = _disabled(state, f"the endpoint answered 410 Gone at {attempt.at}", attempt)
            else:
                error = attempt.error or f"status {attempt.status}"
                failing_since = state.failing_since or attempt.at
                state = msgspec.structs.replace(
                    state, failing_since=failing_since, last_error=error
                )
                spell = seconds_from_iso(attempt.at) - seconds_from_iso(failing_since)
                if not state.disabled and spell >= self._disable_after:
                    state = _disabled(
                        state,
                        f"failing since {failing_since} without one success (last: {error})",
                        attempt,
                    )
        if _worth_writing(self.state, state):
            if state.disabled and not self.state.disabled:
                logger.warning("webhook endpoint disabled: %s", state.reason)
            await self._write(state)
        else:
            self.state = state

    async def enable(self) -> EndpointState:
        """An admin's word: the endpoint is taken again, its failing spell forgotten."""
        await self._write(
            msgspec.structs.replace(
                self.state, disabled=False, reason=None, disabled_at=None, failing_since=None
            )
        )
        return self.state

    async def _write(self, state: EndpointState) -> None:
        await self._client.index(
            index=self._alias, id=self._id, document=msgspec.to_builtins(state), refresh=True
        )
        self.state = state


# A success moves `last_success_at` on; that alone is written at most this often.
_SUCCESS_WRITTEN_EVERY_SECONDS = 60.0


def _worth_writing(old: EndpointState, new: EndpointState) -> bool:
    """A change of standing (failing, disabled, an error), or a success long after the last
    one written: not every batch's success."""
    if msgspec.structs.replace(new, last_success_at=old.last_success_at) != old:
        return True
    if new.last_success_at is None or old.last_success_at is None:
        return new.last_success_at != old.last_success_at
    elapsed = seconds_from_iso(new.last_success_at) - seconds_from_iso(old.last_success_at)
    return elapsed >= _SUCCESS_WRITTEN_EVERY_SECONDS


def _disabled(state: EndpointState, reason: str, attempt: Attempt) -> EndpointState:
    if state.disabled:
        return state
    return msgspec.structs.replace(
        state, disabled=True, reason=reason, disabled_at=attempt.at or iso_from_seconds(time.time())
    )
