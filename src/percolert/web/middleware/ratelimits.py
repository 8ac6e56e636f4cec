"""Rate limits per session and per client address, counted by the `limits` library.

The counters live in the `limits` storage its URI names (`rate_limit_storage`); unset, in
the Redis the instances share (`redis_url`), so that a limit holds across them, or else in
process memory. Sliding-window counters cost two numbers per key, and an attempt refused
costs nothing, so a client hammering past its limit does not push its own reset further away.

A shared store that does not answer admits the attempt: a Redis outage must not take search
down with it, and limits are there against abuse, not for correctness. After one failure the
store is known to be down (a breaker): attempts are admitted at once, without waiting for it,
while `watch_store` probes it in the background until it answers again.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
import time
from typing import Any

import anyio
import redis.asyncio as aioredis
from limits import RateLimitItem, parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from percolert.core.breaker import Breaker
from percolert.core.settings import Settings

logger = logging.getLogger(__name__)

# An IPv6 client typically owns a whole /64: its addresses count as one.
_IPV6_CLIENT_PREFIX = 64
# A shared store gets this long to answer before the attempt is admitted without it.
_STORE_TIMEOUT_SECONDS = 0.5
# `limits`' URIs of a plain Redis, and redis-py's for the same.
_REDIS_SCHEMES = {"async+redis": "redis", "async+rediss": "rediss", "async+redis+unix": "unix"}


class Action(enum.StrEnum):
    SEARCH = "searches"
    READ = "reads"
    WATCH_CHANGE = "watch_changes"
    NEW_SESSION = "new_sessions"
    SOCKET = "sockets"
    ADMIN = "admin_requests"


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
        (Action.ADMIN, Per.ADDRESS): settings.limit_admin_requests_per_address,
    }
    return {key: parse_many(notation) for key, notation in configured.items() if notation}


def storage_uri(settings: Settings) -> str:
    """Where the counters live: as configured, else the instances' shared Redis, else memory."""
    if settings.rate_limit_storage is not None:
        return settings.rate_limit_storage
    if settings.redis_url is None:
        return "async+memory://"
    scheme, rest = settings.redis_url.split("://", 1)
    # `limits` names a Redis on a unix socket async+redis+unix://, over TLS async+rediss://.
    return f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"


def _redis_pool(uri: str) -> aioredis.ConnectionPool | None:
    """Connections of our own to a plain Redis store, so that they close with the app."""
    scheme, rest = uri.split("://", 1)
    plain = _REDIS_SCHEMES.get(scheme)
    if plain is None:
        return None
    return aioredis.ConnectionPool.from_url(
        f"{plain}://{rest}",
        socket_timeout=_STORE_TIMEOUT_SECONDS,
        socket_connect_timeout=_STORE_TIMEOUT_SECONDS,
    )


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
        uri = storage_uri(settings)
        self._pool = _redis_pool(uri) if self._rules else None
        options: dict[str, Any] = {}
        if self._pool is not None:
            # redis-py, which the broker uses already, rather than `limits`' default (coredis).
            options = {"implementation": "redispy", "connection_pool": self._pool}
        self._limiter = (
            SlidingWindowCounterRateLimiter(
                storage_from_string(uri, wrap_exceptions=True, **options)
            )
            if self._rules
            else None
        )
        self._store = Breaker("rate limits: their store")

    async def admit(
        self, action: Action, *, session: str | None, address: str | None
    ) -> float | None:
        """None if the attempt is within every limit (it is counted); otherwise the seconds
        until it would be (it is not counted). Admitted when the store does not answer."""
        if self._store.open:
            return None
        try:
            return await self._admit(action, session=session, address=address)
        except StorageError as error:
            self._store.trip(f"rate limits not enforced: {error.storage_error!r}")
            return None

    async def watch_store(self) -> None:
        """Until cancelled: while the store is known to be down, probe it (in the background
        of requests) until it answers; then limits are enforced again."""
        if self._limiter is None:
            await anyio.sleep_forever()
            return
        limiter = self._limiter

        async def probe() -> None:
            if not await limiter.storage.check():
                raise StorageError(ConnectionError("the rate limits' store does not answer"))

        await self._store.run(probe)

    async def close(self) -> None:
        """Close the connections to a shared store (they belong to the app's event loop)."""
        if self._pool is not None:
            await self._pool.disconnect()

    async def _admit(
        self, action: Action, *, session: str | None, address: str | None
    ) -> float | None:
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
