"""Readiness against a real node: what `/readyz` asks of Elasticsearch, and how often."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.core.settings import Settings
from percolert.engine import es, indices
from percolert.engine.readiness import ClusterReadiness
from tests.servers import free_port

pytestmark = pytest.mark.anyio


def count_requests(client: AsyncElasticsearch) -> list[str]:
    """Every request the client sends from now on, as "METHOD path"."""
    sent: list[str] = []
    transport = client.transport
    perform: Callable[..., Any] = transport.perform_request

    async def counting(method: str, target: str, **options: Any) -> Any:
        sent.append(f"{method} {target}")
        return await perform(method, target, **options)

    transport.perform_request = counting  # type: ignore[method-assign]
    return sent


async def test_checks_within_the_interval_share_one_round_of_two_requests(
    fresh_settings: Settings,
) -> None:
    client = es.create_client(fresh_settings)
    now = [0.0]
    try:
        readiness = ClusterReadiness(client, fresh_settings, interval=2.0, clock=lambda: now[0])
        sent = count_requests(client)
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(readiness.check)
        for _ in range(5):
            state = await readiness.check()
        assert len(sent) == 2, sent  # the version and every alias at once
        prefix = fresh_settings.index_prefix
        assert state.needed == tuple(f"{prefix}-{name} is missing" for name in indices.INDEX_NAMES)

        await indices.setup(client, fresh_settings)
        sent.clear()
        now[0] += 1.9
        assert (await readiness.check()).needed == state.needed  # still the cached answer
        assert sent == []
        now[0] += 0.1
        assert (await readiness.check()).needed == ()
        assert len(sent) == 2, sent
    finally:
        await client.close()


async def test_an_unreachable_cluster_is_remembered_for_the_interval() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = Settings(elasticsearch_url=url, elasticsearch_timeout=1.0)
    client = es.create_client(settings, max_retries=0)
    now = [0.0]
    try:
        readiness = ClusterReadiness(client, settings, interval=2.0, clock=lambda: now[0])
        sent = count_requests(client)
        for _ in range(3):
            with pytest.raises(es.ElasticsearchProblem, match="cannot reach Elasticsearch at"):
                await readiness.check()
        assert len(sent) == 1, sent
        now[0] += 2.0
        with pytest.raises(es.ElasticsearchProblem):
            await readiness.check()
        assert len(sent) == 2, sent
    finally:
        await client.close()
