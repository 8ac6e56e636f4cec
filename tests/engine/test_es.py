"""The version-aware client: one newest-major client talking to the 7.17 dev node (and 8/9)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from elastic_transport import HttpHeaders, TransportError

from percolert.core.settings import Settings
from percolert.engine import es
from tests.conftest import make_settings
from tests.servers import free_port

pytestmark = pytest.mark.anyio


def test_rewrite_compatibility_changes_only_the_major() -> None:
    headers = HttpHeaders(
        {
            "accept": "application/vnd.elasticsearch+json; compatible-with=9",
            "content-type": "application/vnd.elasticsearch+x-ndjson; compatible-with=9",
            "x-other": "compatible-with=9",
        }
    )
    rewritten = es.rewrite_compatibility(headers, 7)
    assert rewritten["accept"] == "application/vnd.elasticsearch+json; compatible-with=7"
    assert rewritten["content-type"] == "application/vnd.elasticsearch+x-ndjson; compatible-with=7"
    assert rewritten["x-other"] == "compatible-with=9"
    assert headers["accept"].endswith("=9")  # the caller's headers are left alone


@pytest.mark.parametrize(("version", "major"), [("7.17.29", 7), ("7.11.0", 7), ("8.15.3", 8)])
def test_server_major(version: str, major: int) -> None:
    assert es.server_major(version) == major


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("7.10.2", "too old"),
        ("6.8.23", "too old"),
        (f"{es.CLIENT_MAJOR + 1}.0.0", "newer"),
        ("banana", "cannot read"),
    ],
)
def test_versions_we_cannot_serve(version: str, message: str) -> None:
    with pytest.raises(es.UnsupportedVersion, match=message):
        es.server_major(version)


async def test_adapted_client_reads_and_writes(elasticsearch_url: str) -> None:
    settings = make_settings(elasticsearch_url)
    client = es.create_client(settings)
    index = f"{settings.index_prefix}-probe"
    try:
        version = await es.check_connection(client, elasticsearch_url)
        assert es.server_major(version) >= 7
        await client.indices.create(index=index, mappings={"properties": {"t": {"type": "text"}}})
        await client.index(index=index, id="1", document={"t": "Kindle Paperwhite"}, refresh=True)
        found = await client.search(index=index, query={"match": {"t": "kindle"}})
        assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
    finally:
        await client.options(ignore_status=404).indices.delete(index=index)
        await client.close()


async def test_connection_refused_is_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = es.create_client(Settings(elasticsearch_url=url))
    try:
        with pytest.raises(es.ElasticsearchProblem, match="cannot reach Elasticsearch at"):
            await es.check_connection(client, url)
    finally:
        await client.close()


@contextmanager
def http_stand_in(
    body: bytes, seen: list[dict[str, str]] | None = None, *, root_status: int = 200
) -> Iterator[str]:
    """Answers every GET with `body` (`GET /` with `root_status`); records each request's
    path and headers in `seen`. Used only to check the version gate and the headers on the
    wire, never as a search engine."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if seen is not None:
                seen.append(
                    {":path": self.path}
                    | {name.lower(): value for name, value in self.headers.items()}
                )
            self.send_response(root_status if self.path == "/" else 200)
            self.send_header("content-type", "application/json")
            self.send_header("x-elastic-product", "Elasticsearch")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"version": {"number": "7.10.2"}}', "7.10.2 is too old"),
        (b"<html>not elasticsearch</html>", "did not answer like Elasticsearch"),
    ],
)
async def test_servers_we_cannot_serve_are_named(body: bytes, message: str) -> None:
    with http_stand_in(body) as url:
        client = es.create_client(Settings(elasticsearch_url=url))
        try:
            with pytest.raises(es.ElasticsearchProblem, match=message):
                await es.check_connection(client, url)
        finally:
            await client.close()


@pytest.mark.parametrize("major", [7, 8, es.CLIENT_MAJOR])
async def test_requests_ask_for_the_servers_major(major: int) -> None:
    """An 8.x server refuses `compatible-with=9` from the newest client; the adapted client
    asks each server for its own major. (The real 7.17.29 dev node happens to accept any
    value, so this is checked on the wire.)"""
    seen: list[dict[str, str]] = []
    body = b'{"version": {"number": "%d.17.0"}, "status": "green"}' % major
    with http_stand_in(body, seen) as url:
        client = es.create_client(Settings(elasticsearch_url=url))
        try:
            await client.cluster.health()
        finally:
            await client.close()
    probe, request = seen
    assert probe["accept"] == "application/json"
    assert request["accept"] == f"application/vnd.elasticsearch+json; compatible-with={major}"


@pytest.mark.parametrize(
    ("root_status", "probes"),
    [(403, 1), (502, 3)],
    ids=["refused-waits-a-retry-interval", "other-failure-asked-again"],
)
async def test_a_failed_version_probe_is_asked_again_unless_refused(
    root_status: int, probes: int
) -> None:
    """A key without the `monitor` privilege may not read `GET /` (403): requests then go
    out unadapted, and the probe waits a retry interval instead of preceding each request.
    A proxy's 502 during a node restart is not a refusal: the next request probes again
    (backing off would send the client's own major to an older server for a minute)."""
    seen: list[dict[str, str]] = []
    body = b'{"status": "green", "cluster_name": "x"}'
    with http_stand_in(body, seen, root_status=root_status) as url:
        client = es.create_client(Settings(elasticsearch_url=url))
        try:
            for _ in range(3):
                await client.cluster.health()
        finally:
            await client.close()
    paths = [request[":path"] for request in seen]
    assert paths.count("/") == probes, paths
    assert paths.count("/_cluster/health") == 3, paths


async def test_any_answer_to_the_breakers_probe_is_an_answer() -> None:
    """A refusal (an API key without the privilege, an index gone) answers; no answer does
    not (the cluster still hangs or is gone)."""
    version = b'{"version": {"number": "8.17.0"}}'
    with http_stand_in(version) as url:  # refuses the search: it answers GET only
        client = es.create_client(Settings(elasticsearch_url=url))
        try:
            await es.answers_searches(client, "products", request_timeout=1.0)
        finally:
            await client.close()
    nowhere = f"http://127.0.0.1:{free_port()}"
    client = es.create_client(Settings(elasticsearch_url=nowhere))
    try:
        with pytest.raises(TransportError):
            await es.answers_searches(client, "products", request_timeout=1.0)
    finally:
        await client.close()
