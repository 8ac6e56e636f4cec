"""The Redis broker under a storm of concurrent calls (a real redis-server): more calls in
flight than it keeps connections wait for one, instead of failing."""

from __future__ import annotations

import uuid

import anyio
import pytest

from percolert.broker.redis import RedisBroker
from percolert.core.settings import Settings
from percolert.realtime.hub import Hub
from tests.broker.test_broker_redis import Log

pytestmark = pytest.mark.anyio


async def test_a_storm_of_socket_opens_waits_for_connections_instead_of_failing(
    redis_url: str,
) -> None:
    # Seen in the benchmark: 2,500 sockets opening on one instance put over 100 presence
    # calls in flight; redis-py's default pool failed the 101st (MaxConnectionsError) and
    # the socket was dropped before its greeting.
    settings = Settings(index_prefix=f"pt-{uuid.uuid4().hex[:10]}", redis_url=redis_url)
    broker = RedisBroker(settings, Hub(), Log(), url=redis_url, instance_id="storm")
    await broker.start()
    cuts: list[int] = []

    async def open_one(number: int) -> None:
        cuts.append(await broker.connected(f"user-{number}"))

    try:
        async with anyio.create_task_group() as tasks:
            for number in range(300):
                tasks.start_soon(open_one, number)
    finally:
        await broker.close()
    assert len(cuts) == 300
