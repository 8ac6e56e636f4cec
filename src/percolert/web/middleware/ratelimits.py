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
from typing import Any, cast

import anyio
import redis.asyncio as aioredis
from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from percolert.broker.connection import RedisClient, connect, disconnect
from percolert.core.breaker import Breaker
from percolert.core.settings import Settings

logger = logging.getLogger(__name__)

# An IPv6 client typically owns a whole /64: its addresses count as one.
_IPV6_CLIENT_PREFIX = 64
# A shared store gets this long to answer before the attempt is admitted without it.
_STORE_TIMEOUT_SECONDS = 0.5
# `limits`' URIs of a plain Redis, and redis-py's for the same.
_REDIS_SCHEMES = {"async+redis": "redis", "async+rediss": "rediss", "async+redis+unix": "unix"}
_STORE_CONNECTIONS = 100  # redis-py's default
# What a Redis store fails with: a Cluster's own errors are no RedisError.
_STORE_ERRORS = (RedisError, RedisClusterException)


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


def _redis_url(settings: Settings) -> str | None:
    """The Redis the counters live in, as redis-py or connection.py names it: the configured
    store if it is a plain Redis, else the instances' shared Redis (any form), else none."""
    if settings.rate_limit_storage is not None:
        scheme, rest = settings.rate_limit_storage.split("://", 1)
        plain = _REDIS_SCHEMES.get(scheme)
        return None if plain is None else f"{plain}://{rest}"
    return settings.redis_url


def _storage(settings: Settings, client: RedisClient | None) -> Storage:
    """The `limits` storage: on a Redis of ours (one server, Sentinel's primary, a Cluster),
    over our client's connections (redis-py, which the broker uses, rather than `limits`'
    default, coredis), so that they close with the app; any other configured store as its
    URI says."""
    if client is None:
        uri = settings.rate_limit_storage or "async+memory://"
        storage = storage_from_string(uri, wrap_exceptions=True)
        assert isinstance(storage, Storage)  # settings.py takes async URIs only
        return storage
    if isinstance(client, aioredis.Redis):  # one server, or Sentinel's primary
        return RedisStorage(
            "async+redis://",
            wrap_exceptions=True,
            implementation="redispy",
            connection_pool=client.connection_pool,  # type: ignore[arg-type] # passed on
        )
    return _ClusterStorage(client)


class _ClusterStorage(RedisClusterStorage):
    """`limits`' Cluster storage (which keeps each key's two windows in one slot) over our
    client, so that its connections close with the app: the bridge's client is ours instead
    of one built from a URI (as `RedispyBridge.use_cluster` sets it, limits 5)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        super().__init__("async+redis+cluster://", wrap_exceptions=True, implementation="redispy")

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        # Wrapped as StorageError, so that an unreachable Cluster admits, as any store does.
        return _STORE_ERRORS

    def configure_bridge(self) -> None:
        bridge = cast(Any, self.bridge)
        bridge.storage = self._client
        bridge.connection_getter = lambda _readonly: self._client


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
    def __init__(self, client: RedisClient) -> None:
        self._script = client.register_script(_BUCKET_SCRIPT)

    async def take(self, key: str, interval_ms: int, burst: int) -> float:
        try:
            return float(await self._script(keys=[key], args=[interval_ms, burst]))
        except _STORE_ERRORS as error:
            raise StorageError(error) from error


class _Bucket:
    """New sessions per address: `burst` at once, then one per refill interval."""

    def __init__(self, settings: Settings, client: RedisClient | None) -> None:
        self._interval_ms = max(1, round(settings.new_sessions_refill_seconds * 1000))
        self._burst = settings.new_sessions_burst
        self._buckets = _MemoryBuckets() if client is None else _RedisBuckets(client)

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
        bucketed = settings.rate_limits_enabled and settings.new_sessions_burst > 0
        url = _redis_url(settings) if self._rules or bucketed else None
        self._client = (
            None
            if url is None
            else connect(
                url,
                max_connections=_STORE_CONNECTIONS,
                socket_timeout=_STORE_TIMEOUT_SECONDS,
                connect_timeout=_STORE_TIMEOUT_SECONDS,
            )
        )
        # Any other store than a Redis (memcached, say): the bucket is this process's.
        self._bucket = _Bucket(settings, self._client) if bucketed else None
        self._limiter = (
            SlidingWindowCounterRateLimiter(_storage(settings, self._client))
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
        limiter, client = self._limiter, self._client
        if limiter is None and client is None:
            await anyio.sleep_forever()
            return

        async def probe() -> None:
            if limiter is not None:
                answers = await limiter.storage.check()
            else:
                try:
                    assert client is not None
                    answers = bool(await client.ping())
                except _STORE_ERRORS:
                    answers = False
            if not answers:
                raise StorageError(ConnectionError("the rate limits' store does not answer"))

        await self._store.run(probe)

    async def close(self) -> None:
        """Close the connections to a shared store (they belong to the app's event loop)."""
        if self._client is not None:
            await disconnect(self._client)

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
