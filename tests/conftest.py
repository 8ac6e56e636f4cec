"""Shared fixtures: one real Elasticsearch node per test session (the dev node, on a free port
with a temporary data directory) unless ELASTICSEARCH_URL points at one, and an index prefix
of its own for every test session so runs never touch each other's data; likewise one real
Redis (the dev Redis) unless REDIS_URL points at one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.core.settings import Settings, from_environment
from percolert.dev.devnode import DevNode
from percolert.dev.redisnode import RedisNode
from percolert.engine import es, indices
from percolert.products.catalog import ingest
from tests.servers import free_port, run_server

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CATALOG = ROOT / "data" / "products.ndjson"


@pytest.fixture(scope="session")
def elasticsearch_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("ELASTICSEARCH_URL")
    if url:
        yield url.rstrip("/")
        return
    node = DevNode.configured(from_environment(), tmp_path_factory.mktemp("esnode-state"))
    state, _ = node.start(free_port())
    try:
        yield state.url
    finally:
        node.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the session: REDIS_URL if set, else a dev Redis of its own on a free
    port with a temporary directory, stopped at the end."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url.rstrip("/")
        return
    node = RedisNode.configured(from_environment(), tmp_path_factory.mktemp("redis-state"))
    state, _ = node.start(free_port())
    try:
        yield state.url
    finally:
        node.stop()


def make_settings(url: str, **changes: object) -> Settings:
    settings = Settings(
        elasticsearch_url=url,
        index_prefix=f"pt-{uuid.uuid4().hex[:10]}",
        elasticsearch_timeout=5.0,
        # Its own state directory, so the generated session secret stays out of the repo.
        state_dir=Path(tempfile.mkdtemp(prefix="percolert-test-state-")),
        # The suite plays many shoppers from one address, far faster than people do:
        # tests/web/test_limits.py turns the limits on where it tests them.
        rate_limits_enabled=False,
        max_sockets_per_user=1000,
    )
    return msgspec.structs.replace(settings, **changes)


async def delete_indices(settings: Settings) -> None:
    client = es.create_client(settings)
    try:
        found = await client.indices.get(index=f"{settings.index_prefix}-*", allow_no_indices=True)
        for index in found:
            await client.indices.delete(index=index)
        # The search log's days are made from a template (insights/searchlog.py).
        await client.options(ignore_status=404).indices.delete_index_template(
            name=f"{settings.index_prefix}-*"
        )
    finally:
        await client.close()


def prepare_indices(settings: Settings, *, catalog: Path | None = None) -> None:
    """Create the indices of `settings` (and load `catalog` into products, if given)."""

    async def prepare() -> None:
        client = es.create_client(settings)
        try:
            await indices.setup(client, settings)
            if catalog is not None:
                products = indices.alias_for(settings, "products")
                report = await ingest(client, products, catalog)
                assert report.failed == 0, report.errors
        finally:
            await client.close()

    asyncio.run(prepare())


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`percolert ARGS` in a subprocess, configured for the deployment of `settings`."""
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": settings.elasticsearch_url,
        "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "percolert.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def on_test_broker(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """With PERCOLERT_TEST_BROKER=redis, the suite's servers run on the Redis broker (one
    instance each): the same behaviour is expected of it as of the embedded one."""
    if os.environ.get("PERCOLERT_TEST_BROKER", "memory") != "redis":
        return settings
    return msgspec.structs.replace(settings, redis_url=request.getfixturevalue("redis_url"))


@pytest.fixture
def fresh_settings(elasticsearch_url: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings with an index prefix no other test uses; its indices are deleted afterwards."""
    settings = on_test_broker(make_settings(elasticsearch_url), request)
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture(scope="session")
def catalog_settings(elasticsearch_url: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Indices set up and the sample catalog loaded once for the session's read-only tests."""
    settings = on_test_broker(make_settings(elasticsearch_url), request)

    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture(scope="session")
def server(catalog_settings: Settings) -> Iterator[str]:
    """A real Percolert server over the sample catalog; yields its base URL."""
    with run_server(catalog_settings) as url:
        yield url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_for(settings: Settings) -> AsyncElasticsearch:
    return es.create_client(settings)
