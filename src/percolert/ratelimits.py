"""Rate limits per session and per client address, counted by the `limits` library.

The counters live in the `limits` storage its URI names (`rate_limit_storage`): process
memory by default; a shared store (`async+redis://`) makes them hold across instances.
Sliding-window counters cost two numbers per key, and an attempt refused costs nothing, so
a client hammering past its limit does not push its own reset further away.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from percolert.settings import Settings

# An IPv6 client typically owns a whole /64: its addresses count as one.
_IPV6_CLIENT_PREFIX = 64


class Action(enum.StrEnum):
    SEARCH = "searches"
    READ = "reads"
    WATCH_CHANGE = "watch_changes"
    NEW_SESSION = "new_sessions"
    SOCKET = "sockets"


class Per(enum.StrEnum):
    SESSION = "session"
    ADDRESS = "address"


def _rules(settings: Settings) -> dict[tuple[Action, Per], list[RateLimitItem]]:
    if not settings.rate_limits_enabled:
        return {}
    configured = {
        (Action.SEARCH, Per.SESSION): settings.limit_searches_per_session,
        (Action.SEARCH, Per.ADDRESS): settings.limit_searches_per_address,
        (Action.READ, Per.SESSION): settings.limit_reads_per_session,
        (Action.READ, Per.ADDRESS): settings.limit_reads_per_address,
        (Action.WATCH_CHANGE, Per.SESSION): settings.limit_watch_changes_per_session,
        (Action.WATCH_CHANGE, Per.ADDRESS): settings.limit_watch_changes_per_address,
        (Action.NEW_SESSION, Per.ADDRESS): settings.limit_new_sessions_per_address,
        (Action.SOCKET, Per.SESSION): settings.limit_sockets_per_session,
        (Action.SOCKET, Per.ADDRESS): settings.limit_sockets_per_address,
    }
    return {key: parse_many(notation) for key, notation in configured.items() if notation}


def client_address(host: str | None) -> str | None:
    """The key an address is counted under: the address itself, or for IPv6 its /64."""
    if host is None:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a test client's name, a unix socket): counted as given
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{_IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)


class RateLimits:
    """Admits or refuses one attempt at an action, counting it against every configured limit
    of the session and of the address."""

    def __init__(self, settings: Settings) -> None:
        self._rules = _rules(settings)
        # Deployments sharing a store (or a test server beside another) count separately.
        self._namespace = settings.index_prefix
        self._limiter = (
            SlidingWindowCounterRateLimiter(storage_from_string(settings.rate_limit_storage))
            if self._rules
            else None
        )

    async def admit(
        self, action: Action, *, session: str | None, address: str | None
    ) -> float | None:
        """None if the attempt is within every limit (it is counted); otherwise the seconds
        until it would be (it is not counted)."""
        if self._limiter is None:
            return None
        checks: list[tuple[RateLimitItem, tuple[str, ...]]] = []
        for per, key in ((Per.SESSION, session), (Per.ADDRESS, address)):
            if key is None:
                continue
            for item in self._rules.get((action, per), ()):
                checks.append((item, (self._namespace, action, per, key)))
        if not checks:
            return None
        # Test all before counting any, so that an attempt the address limit refuses does
        # not use up the session's allowance (and the other way round).
        refused = [check for check in checks if not await self._limiter.test(check[0], *check[1])]
        if not refused:
            for item, identifiers in checks:
                if not await self._limiter.hit(item, *identifiers):  # a concurrent attempt won
                    refused.append((item, identifiers))
        if not refused:
            return None
        now = time.time()
        resets = [
            (await self._limiter.get_window_stats(item, *identifiers)).reset_time
            for item, identifiers in refused
        ]
        return max(1.0, max(resets) - now)


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, rounded up."""
    return str(math.ceil(seconds))
