"""What readiness asks of Elasticsearch, asked at most once per interval.

A load balancer or orchestrator polls `/readyz` often, from every instance; each check is a
version request and one request for the aliases, so answers within `interval` share one
check (concurrent callers wait for the one in flight). The mapping files are read once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import elasticsearch
import msgspec
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import AsyncElasticsearch

from percolert.core.cached import Cached
from percolert.core.settings import Settings
from percolert.engine import es
from percolert.engine.indices import expected_indices, needing_setup


class ClusterState(msgspec.Struct, frozen=True):
    version: str
    # What `percolert setup` still has to do, one phrase per index; empty when set up.
    needed: tuple[str, ...]


class ClusterReadiness:
    def __init__(
        self,
        client: AsyncElasticsearch,
        settings: Settings,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_timeout: Callable[[str], None] = lambda reason: None,
    ) -> None:
        """`on_timeout(reason)` hears of a check that timed out: the cluster hangs, which
        callers that share the breaker need not wait to learn."""
        self._client = client
        self._settings = settings
        self._expected = expected_indices(settings)
        self._on_timeout = on_timeout
        # The last outcome: the cluster's state, or why it could not be had (for the log).
        self._outcome = Cached(self._ask, ttl_seconds=interval, clock=clock)

    async def check(self) -> ClusterState:
        """The cluster's state as of at most `interval` ago; ElasticsearchProblem when it
        could not be reached then."""
        outcome = await self._outcome.get()
        if isinstance(outcome, str):
            raise es.ElasticsearchProblem(outcome)
        return outcome

    async def _ask(self) -> ClusterState | str:
        url = self._settings.elasticsearch_url
        try:
            version = await es.check_connection(self._client, url)
            needed = await needing_setup(self._client, self._settings, expected=self._expected)
        except es.ElasticsearchProblem as problem:
            if isinstance(problem.__cause__, ConnectionTimeout):
                self._on_timeout(str(problem))
            return str(problem)
        except (TransportError, elasticsearch.ApiError) as error:
            if isinstance(error, ConnectionTimeout):
                self._on_timeout(es.describe(error, url))
            return es.describe(error, url)
        return ClusterState(version=version, needed=tuple(needed))
