"""What every command shares: the one-line error, which cluster it talks to, and running
async work against it with every cluster failure turned into that one line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import elasticsearch
import msgspec
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch

from percolert.core.settings import DEFAULT_ELASTICSEARCH_URL, Settings
from percolert.engine import es

T = TypeVar("T")


class CliError(Exception):
    """Ends the command with a one-line message and exit code 1."""


def cluster_line(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """Which cluster a command uses and why: ELASTICSEARCH_URL, or the default when it is not
    set. Admin commands and `serve` never look for a dev node: a production server without
    ELASTICSEARCH_URL must not quietly use one that a developer left running."""
    env = os.environ if environ is None else environ
    url = settings.elasticsearch_url
    if env.get("ELASTICSEARCH_URL", "").strip():
        return f"Elasticsearch at {url} (ELASTICSEARCH_URL)"
    if url == DEFAULT_ELASTICSEARCH_URL:
        return f"Elasticsearch at {url} (the default: ELASTICSEARCH_URL is not set)"
    return f"Elasticsearch at {url}"


def run_with_client(settings: Settings, work: Callable[[AsyncElasticsearch], Awaitable[T]]) -> T:
    """`work` with a client of the settings' cluster, named on stderr first."""
    print(f"percolert: {cluster_line(settings)}", file=sys.stderr)

    async def main() -> T:
        client = es.create_client(settings, max_retries=3)
        try:
            await es.check_connection(client, settings.elasticsearch_url)
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except es.ElasticsearchProblem as problem:
        raise CliError(str(problem)) from None
    except elasticsearch.NotFoundError as error:
        if error.error != "index_not_found_exception":
            raise
        raise CliError("the indices are not set up yet: run `percolert setup` first") from None
    except elasticsearch.ApiError as error:
        raise CliError(f"Elasticsearch refused the request: {error}") from None
    except TransportError as error:  # the cluster went away midway
        raise CliError(es.describe(error, settings.elasticsearch_url)) from None


def with_address(settings: Settings, args: argparse.Namespace, **changes: str) -> Settings:
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    return msgspec.structs.replace(settings, host=host, port=port, **changes)


def count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
