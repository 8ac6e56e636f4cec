"""Rate limits per session and per client address: sliding windows counted by the `limits`
library, and a token bucket for new sessions.

The counters live in the `limits` storage its URI names (`rate_limit_storage`); unset, in
the Redis the instances share (`redis_url`), so that a limit holds across them, or else in
process memory. Sliding-window counters cost two numbers per key, and an attempt refused
costs nothing, so a client hammering past its limit does not push its own reset further away.

New sessions per address are a token bucket instead (`new_sessions_burst` at once, one more
every `new_sessions_refill_seconds`): many first visits come from one shared address (a NAT),
and a window of an hour, once one client there spent it, shut every other one out for the
rest of the hour; a bucket makes them wait one refill. It is kept in the same Redis when the
store is one (a script, one number per address), else in process memory.

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
from redis.exceptions import RedisError

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
    MONITORING_REFUSED = "monitoring_refusals"


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
        (Action.SOCKET, Per.SESSION): settings.limit_sockets_per_session,
        (Action.SOCKET, Per.ADDRESS): settings.limit_sockets_per_address,
        (Action.ADMIN, Per.ADDRESS): settings.limit_admin_requests_per_address,
        (Action.MONITORING_REFUSED, Per.ADDRESS): settings.limit_monitoring_refusals_per_address,
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


# A token bucket kept as one number: the moment (ms) it would be full again, the generic cell
# rate algorithm. An attempt takes a token if at most `burst` would then be owed; a refused
# one changes nothing. Redis's clock, so that instances agree on it.
_BUCKET_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local full_at = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + interval
local wait = full_at - now - burst * interval
if wait > 0 then
    return wait
end
redis.call('SET', KEYS[1], full_at, 'PX', full_at - now)
return 0
"""
# Buckets kept in memory are swept of full ones when their number has doubled since.
_MIN_SWEEP = 1024


class _MemoryBuckets:
    """The same buckets in this process's memory (its own clock, in ms)."""

    def __init__(self) -> None:
        self._full_at: dict[str, float] = {}
        self._sweep_at = _MIN_SWEEP

    async def take(self, key: str, interval_ms: int, burst: int) -> float:
        now = time.monotonic() * 1000
        full_at = max(self._full_at.get(key, 0.0), now) + interval_ms
        wait = full_at - now - burst * interval_ms
        if wait > 0:
            return wait
        self._full_at[key] = full_at
        if len(self._full_at) >= self._sweep_at:
            self._full_at = {k: at for k, at in self._full_at.items() if at > now}
            self._sweep_at = max(_MIN_SWEEP, 2 * len(self._full_at))
        return 0.0


class _RedisBuckets:
    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._script = aioredis.Redis(connection_pool=pool).register_script(_BUCKET_SCRIPT)

    async def take(self, key: str, interval_ms: int, burst: int) -> float:
        try:
            return float(await self._script(keys=[key], args=[interval_ms, burst]))
        except RedisError as error:
            raise StorageError(error) from error


class _Bucket:
    """New sessions per address: `burst` at once, then one per refill interval."""

    def __init__(self, settings: Settings, pool: aioredis.ConnectionPool | None) -> None:
        self._interval_ms = max(1, round(settings.new_sessions_refill_seconds * 1000))
        self._burst = settings.new_sessions_burst
        self._buckets = _MemoryBuckets() if pool is None else _RedisBuckets(pool)

    async def take(self, key: str) -> float | None:
        """None if a token was taken; else the seconds until one is there."""
        wait_ms = await self._buckets.take(key, self._interval_ms, self._burst)
        return wait_ms / 1000 if wait_ms > 0 else None


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
        bucketed = settings.rate_limits_enabled and settings.new_sessions_burst > 0
        self._pool = _redis_pool(uri) if self._rules or bucketed else None
        # Any other store than a plain Redis (memcached, say): the bucket is this process's.
        self._bucket = _Bucket(settings, self._pool) if bucketed else None
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
        limiter, pool = self._limiter, self._pool
        if limiter is None and pool is None:
            await anyio.sleep_forever()
            return

        async def probe() -> None:
            if limiter is not None:
                answers = await limiter.storage.check()
            else:
                try:
                    answers = bool(await aioredis.Redis(connection_pool=pool).ping())
                except RedisError:
                    answers = False
            if not answers:
                raise StorageError(ConnectionError("the rate limits' store does not answer"))

        await self._store.run(probe)

    async def close(self) -> None:
        """Close the connections to a shared store (they belong to the app's event loop)."""
        if self._pool is not None:
            await self._pool.disconnect()

    async def _admit(
        self, action: Action, *, session: str | None, address: str | None
    ) -> float | None:
        if action is Action.NEW_SESSION:
            if self._bucket is None or address is None:
                return None
            wait = await self._bucket.take(f"percolert-bucket/{self._namespace}/{action}/{address}")
            return None if wait is None else max(1.0, wait)
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
