"""A redis-py asyncio client for the shared Redis, whichever form it takes: one server, a
Redis Cluster (commands routed by their keys' slot, `MOVED` followed, the slot map refreshed
after a failover), or the primary Sentinel names (asked again on every new connection, so a
failover is followed on reconnect).

Commands are never retried by the client: a script whose reply was lost may have run, and
running it again would alert twice or lose a claimed follow-up. The broker's own loop
reconnects instead."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from percolert.core.redis_address import RedisAddress, parse_redis_url

RedisClient = aioredis.Redis | RedisCluster


def connect(
    url: str,
    *,
    max_connections: int,
    socket_timeout: float,
    connect_timeout: float,
    wait_seconds: float | None = None,
) -> RedisClient:
    """A client of the Redis `url` names (redis_address.py). `wait_seconds`: a call waits
    that long for a free connection instead of failing at once. A Cluster's pools cannot
    wait: each node's holds twice `max_connections`, and the caller bounds its calls."""
    address = parse_redis_url(url)
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if address.mode == "cluster":
        return _cluster(address, max_connections, options)
    if address.mode == "sentinel":
        return _sentinel(address, max_connections, wait_seconds, options)
    if wait_seconds is None:
        pool = aioredis.ConnectionPool.from_url(url, max_connections=max_connections, **options)
    else:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=wait_seconds, **options
        )
    return aioredis.Redis.from_pool(pool)


def _credentials(address: RedisAddress) -> dict[str, Any]:
    return {"username": address.username, "password": address.password, "ssl": address.tls}


def _cluster(address: RedisAddress, max_connections: int, options: dict[str, Any]) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        # Per node; every key of the broker is in one slot, so one node takes them all.
        max_connections=2 * max_connections,
        # The broker needs its own slot served, not every slot.
        require_full_coverage=False,
        **_credentials(address),
        **options,
    )


class _WaitingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (the primary asked of the Sentinels on every new connection) that
    waits for a free connection as BlockingConnectionPool does."""


def _sentinel(
    address: RedisAddress,
    max_connections: int,
    wait_seconds: float | None,
    options: dict[str, Any],
) -> aioredis.Redis:
    assert address.master is not None  # parse_redis_url requires it
    sentinels = Sentinel(
        list(address.nodes),
        sentinel_kwargs={
            "username": address.sentinel_username,
            "password": address.sentinel_password,
            "ssl": address.tls,
            "socket_timeout": options["socket_connect_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
        },
    )
    waiting: dict[str, Any] = (
        {}
        if wait_seconds is None
        else {"connection_pool_class": _WaitingSentinelPool, "timeout": wait_seconds}
    )
    client: aioredis.Redis = sentinels.master_for(
        address.master,
        max_connections=max_connections,
        **waiting,
        db=address.db,
        **_credentials(address),
        **options,
    )
    return client


async def disconnect(client: RedisClient) -> None:
    """Close the client's connections, and those to the Sentinels it asks."""
    await client.aclose()
    pool = client.connection_pool if isinstance(client, aioredis.Redis) else None
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()
