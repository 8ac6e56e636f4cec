"""The Elasticsearch client: one AsyncElasticsearch that adapts to the server's major version.

The newest official client always asks for `compatible-with=<its own major>`, which an older
server rejects (`media_type_header_exception`). Rather than pinning an old client, each node
connection learns the server's major version from `GET /` on first use and rewrites the
compatibility headers to it. Servers 7.11+ understand the header; 7.17 is the dev node.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, overload

import anyio
import elasticsearch
import msgspec
from elastic_transport import (
    AiohttpHttpNode,
    ApiResponse,
    ConnectionError,
    ConnectionTimeout,
    HttpHeaders,
    JsonSerializer,
    NodeConfig,
    TlsError,
    TransportError,
)
from elastic_transport._node import NodeApiResponse  # exported by no public module
from elastic_transport.client_utils import DEFAULT, DefaultType
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_scan

from percolert.core.settings import Settings

CLIENT_VERSION = ".".join(str(part) for part in elasticsearch.__version__)
CLIENT_MAJOR = elasticsearch.__version__[0]
_COMPATIBLE_WITH = re.compile(r"compatible-with=\d+")


class ElasticsearchProblem(Exception):
    """A failure talking to Elasticsearch, with a message fit to show an operator."""


class UnsupportedVersion(ElasticsearchProblem):
    """The server's version is one this client cannot talk to."""


class _ServerInfo(msgspec.Struct):
    class Version(msgspec.Struct):
        number: str

    version: Version


def server_major(version_number: str) -> int:
    """The major of a version string such as "7.17.29", refusing what we cannot serve."""
    try:
        major, minor = (int(part) for part in version_number.split(".")[:2])
    except ValueError:
        raise UnsupportedVersion(
            f"cannot read the Elasticsearch version {version_number!r}"
        ) from None
    if (major, minor) < (7, 11):
        raise UnsupportedVersion(
            f"Elasticsearch {version_number} is too old: Percolert needs 7.11 or newer "
            "(7.17 for development, 8.x or 9.x in production)"
        )
    if major > CLIENT_MAJOR:
        raise UnsupportedVersion(
            f"Elasticsearch {version_number} is newer than the installed client "
            f"({CLIENT_VERSION}); upgrade the 'elasticsearch' package"
        )
    return major


def rewrite_compatibility(headers: HttpHeaders, major: int) -> HttpHeaders:
    """Headers asking for `compatible-with=<major>` instead of the client's own major."""
    rewritten = headers.copy()
    for name in ("accept", "content-type"):
        value = rewritten.get(name)
        if value is not None:
            rewritten[name] = _COMPATIBLE_WITH.sub(f"compatible-with={major}", value)
    return rewritten


# A refused version probe is tried again after this long.
PROBE_RETRY_SECONDS = 60.0


class VersionAdaptingNode(AiohttpHttpNode):
    """An HTTP node that speaks the compatibility dialect of the server behind it."""

    def __init__(self, config: NodeConfig) -> None:
        super().__init__(config)
        self._major: int | None = None
        self._probe_lock = asyncio.Lock()
        # When a refused probe may be tried again (monotonic seconds); until then requests go
        # out unadapted instead of each waiting on the lock for a probe that is refused again.
        self._probe_refused_until = 0.0

    async def perform_request(  # type: ignore[override]
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: HttpHeaders | None = None,
        request_timeout: DefaultType | float | None = DEFAULT,
    ) -> NodeApiResponse:
        major = self._major
        if major is None and time.monotonic() >= self._probe_refused_until:
            major = await self._learn_major(request_timeout)
        if headers is not None and major is not None and major != CLIENT_MAJOR:
            headers = rewrite_compatibility(headers, major)
        return await super().perform_request(method, target, body, headers, request_timeout)

    async def _learn_major(self, request_timeout: DefaultType | float | None) -> int | None:
        async with self._probe_lock:
            if self._major is not None or time.monotonic() < self._probe_refused_until:
                return self._major
            # Plain JSON is understood by every version, so the probe itself cannot be refused
            # for its headers.
            meta, body = await super().perform_request(
                "GET",
                "/",
                headers=HttpHeaders({"accept": "application/json"}),
                request_timeout=request_timeout,
            )
            if meta.status != 200:
                # A key without the `monitor` privilege may not read `GET /`; then assume the
                # server matches the client and let the real request report what is wrong,
                # and ask again only after a while (the key's privileges may change). Any
                # other answer (a proxy's 502 during a restart) is asked again next time.
                if meta.status in (401, 403):
                    self._probe_refused_until = time.monotonic() + PROBE_RETRY_SECONDS
                return None
            try:
                info = msgspec.json.decode(body, type=_ServerInfo)
            except msgspec.DecodeError:
                raise UnsupportedVersion(
                    "the server at this URL did not answer like Elasticsearch"
                ) from None
            self._major = server_major(info.version.number)
            return self._major


# A retention prune waits for its `delete_by_query` up to this long.
_PRUNE_TIMEOUT = 300.0


async def delete_older(client: AsyncElasticsearch, index: str, cutoff: str) -> None:
    """Delete the documents of `index` whose `at` is before `cutoff` (an ISO time): the
    retention prunes. It waits for the deletion: one run with `wait_for_completion=false`
    leaves its result in the `.tasks` index for good (two more every ten minutes per
    instance, for the alert log's and the product alerts' prunes)."""
    await client.options(request_timeout=_PRUNE_TIMEOUT).delete_by_query(
        index=index,
        query={"range": {"at": {"lt": cutoff}}},
        conflicts="proceed",
        wait_for_completion=True,
    )


# A change by query meeting documents that changed meanwhile tries them again this often.
_BY_QUERY_ATTEMPTS = 5
# The pause before the second try, doubled before each next one (1.5 s in all).
_BY_QUERY_PAUSE = 0.1
# Documents read, and written back, per request of a rewrite.
_REWRITE_PAGE = 1000

# A document's new source, or None to delete it; returning the source unchanged leaves it.
Rewrite = Callable[[dict[str, Any]], dict[str, Any] | None]


async def delete_matching(
    client: AsyncElasticsearch, index: str, query: dict[str, Any], *, request_timeout: float
) -> int:
    """Delete the documents of `index` matching `query`, visible to search when this
    returns; documents changed meanwhile (a version conflict) are tried again. Returns how
    many were deleted; ElasticsearchProblem when some still were not, or were refused."""
    deleted = 0
    scoped = client.options(request_timeout=request_timeout)
    for attempt in range(_BY_QUERY_ATTEMPTS):
        if attempt:
            # A writer busy with the same documents (a mark, a routing) gets a moment, and
            # the refresh shows its writes: `delete_by_query` reads the documents as search
            # last saw them, so one written since conflicts again until a refresh.
            await anyio.sleep(_BY_QUERY_PAUSE * 2 ** (attempt - 1))
            await scoped.indices.refresh(index=index)
        response = await scoped.delete_by_query(
            index=index, query=query, conflicts="proceed", refresh=True
        )
        deleted += int(response.get("deleted", 0))
        if response.get("failures"):
            raise ElasticsearchProblem(f"{index}: deletion refused: {response['failures'][0]}")
        if not response.get("version_conflicts"):
            return deleted
    raise ElasticsearchProblem(f"{index}: documents kept changing meanwhile; try again")


async def rewrite_matching(
    client: AsyncElasticsearch,
    index: str,
    query: dict[str, Any],
    rewrite: Rewrite,
    *,
    request_timeout: float,
) -> int:
    """Rewrite each document of `index` matching `query` as `rewrite` says (in Python rather
    than a script: a cluster may run without a scripting language, as the dev node does),
    each write conditional on the document being as it was read; one changed meanwhile is
    read again. Visible to search when this returns; returns how many documents were
    rewritten or deleted. ElasticsearchProblem when some still were not, or were refused."""
    changed = 0
    scoped = client.options(request_timeout=request_timeout)
    for _ in range(_BY_QUERY_ATTEMPTS):
        operations: list[dict[str, Any]] = []
        conflicts = 0
        async for hit in async_scan(
            scoped,
            index=index,
            query={"query": query},
            size=_REWRITE_PAGE,
            seq_no_primary_term=True,
        ):
            source = hit["_source"]
            rewritten = rewrite(source)
            if rewritten == source:
                continue
            target = {
                "_index": hit["_index"],
                "_id": hit["_id"],
                "if_seq_no": hit["_seq_no"],
                "if_primary_term": hit["_primary_term"],
            }
            if rewritten is None:
                operations.append({"delete": target})
            else:
                operations += [{"index": target}, rewritten]
            if len(operations) >= 2 * _REWRITE_PAGE:
                done, conflicted = await _write_conditionally(scoped, index, operations)
                changed, conflicts, operations = changed + done, conflicts + conflicted, []
        if operations:
            done, conflicted = await _write_conditionally(scoped, index, operations)
            changed, conflicts = changed + done, conflicts + conflicted
        await scoped.indices.refresh(index=index)
        if not conflicts:
            return changed
    raise ElasticsearchProblem(f"{index}: documents kept changing meanwhile; try again")


async def _write_conditionally(
    client: AsyncElasticsearch, index: str, operations: list[dict[str, Any]]
) -> tuple[int, int]:
    """One bulk request of conditional writes: how many were done, and how many found
    their document changed (or gone) meanwhile."""
    response = await client.bulk(operations=operations)
    done = conflicts = 0
    for item in response["items"]:
        [(action, result)] = item.items()
        status = int(result.get("status", 0))
        if status < 300 or (action == "delete" and status == 404):
            done += status < 300
        elif status == 409:
            conflicts += 1
        else:
            raise ElasticsearchProblem(f"{index}: a rewrite was refused: {result.get('error')}")
    return done, conflicts


class _RawJson(JsonSerializer):
    """Hands JSON response bodies on as the bytes they came in; requests are encoded as ever."""

    def loads(self, data: bytes) -> Any:
        return data


class RawJsonClient(AsyncElasticsearch):
    """A client whose JSON responses are their raw bytes (`ApiResponse.body`), for a caller
    that decodes them straight into typed structs (msgspec) rather than through generic
    dicts: the percolator, whose responses run to megabytes. An error answer is decoded
    as usual, so that it raises the same ApiError, with the same message, as elsewhere."""

    async def perform_request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any | None = None,
        endpoint_id: str | None = None,
        path_parts: Mapping[str, Any] | None = None,
    ) -> ApiResponse[Any]:
        try:
            return await super().perform_request(
                method,
                path,
                params=params,
                headers=headers,
                body=body,
                endpoint_id=endpoint_id,
                path_parts=path_parts,
            )
        except elasticsearch.ApiError as error:
            if not isinstance(error.body, bytes):
                raise
            try:
                decoded = msgspec.json.decode(error.body)
            except msgspec.DecodeError:
                decoded = error.body.decode("utf-8", "replace")
            message = decoded.get("error", decoded) if isinstance(decoded, dict) else decoded
            if isinstance(message, dict) and "type" in message:
                message = message["type"]
            raise type(error)(message=str(message), meta=error.meta, body=decoded) from None


@overload
def create_client(
    settings: Settings,
    *,
    max_retries: int = 1,
    raw_json: Literal[False] = False,
    connections: int | None = None,
) -> AsyncElasticsearch: ...


@overload
def create_client(
    settings: Settings,
    *,
    max_retries: int = 1,
    raw_json: Literal[True],
    connections: int | None = None,
) -> RawJsonClient: ...


@overload
def create_client(
    settings: Settings,
    *,
    max_retries: int = 1,
    raw_json: bool,
    connections: int | None = None,
) -> AsyncElasticsearch: ...


def create_client(
    settings: Settings,
    *,
    max_retries: int = 1,
    raw_json: bool = False,
    connections: int | None = None,
) -> AsyncElasticsearch:
    """One client for the whole process; it connects lazily, so ES may come up later.
    `raw_json`: a RawJsonClient (JSON responses as bytes). `connections`: per node, instead
    of `settings.elasticsearch_connections` (a second client need not double them)."""
    options: dict[str, Any] = {
        "node_class": VersionAdaptingNode,
        "request_timeout": settings.elasticsearch_timeout,
        "connections_per_node": connections or settings.elasticsearch_connections,
        "max_retries": max_retries,
        "retry_on_timeout": False,
    }
    if settings.elasticsearch_api_key:
        options["api_key"] = settings.elasticsearch_api_key
    elif settings.elasticsearch_username and settings.elasticsearch_password:
        options["basic_auth"] = (settings.elasticsearch_username, settings.elasticsearch_password)
    if settings.elasticsearch_ca_certs:
        options["ca_certs"] = settings.elasticsearch_ca_certs
    if settings.elasticsearch_url.startswith("https://"):
        options["verify_certs"] = settings.elasticsearch_verify_certs
    if raw_json:
        # The compatibility mimetype (what the client asks for) follows application/json.
        options["serializers"] = {"application/json": _RawJson()}
        return RawJsonClient(settings.elasticsearch_url, **options)
    return AsyncElasticsearch(settings.elasticsearch_url, **options)


def is_unavailable(error: BaseException) -> bool:
    """True when the cluster could not be reached or answered too slowly (a 503 case)."""
    if isinstance(error, ConnectionError | ConnectionTimeout):
        return True
    return isinstance(error, elasticsearch.ApiError) and error.meta.status in {502, 503, 504}


def describe(error: BaseException, url: str) -> str:
    """A one-line explanation of an Elasticsearch failure, naming what to check."""
    if isinstance(error, ElasticsearchProblem):
        return str(error)
    if isinstance(error, TlsError):
        return (
            f"TLS handshake with Elasticsearch at {url} failed ({error.message}); "
            "check ELASTICSEARCH_CA_CERTS"
        )
    if isinstance(error, ConnectionTimeout):
        return f"Elasticsearch at {url} did not answer in time"
    if isinstance(error, ConnectionError):
        return (
            f"cannot reach Elasticsearch at {url} ({error.message}); is it running? "
            "(`percolert devnode start` starts a local one)"
        )
    if isinstance(error, elasticsearch.AuthenticationException):
        return (
            f"Elasticsearch at {url} rejected the credentials (401); check "
            "ELASTICSEARCH_API_KEY or ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD"
        )
    if isinstance(error, elasticsearch.AuthorizationException):
        return f"the configured credentials may not do this on {url} (403): {error.message}"
    if isinstance(error, elasticsearch.ApiError):
        return f"Elasticsearch at {url} answered {error.meta.status}: {error.message}"
    if isinstance(error, TransportError):
        return f"talking to Elasticsearch at {url} failed: {error.message}"
    return f"unexpected error talking to Elasticsearch at {url}: {error!r}"


async def answers_searches(
    client: AsyncElasticsearch, index: str, *, request_timeout: float
) -> None:
    """Returns once the cluster answers an empty search of `index` within `request_timeout`;
    raises TransportError when it does not answer. Any answer counts, a refusal too (an API
    key may not be allowed what is asked, the index may be gone): only no answer is down."""
    try:
        await client.options(request_timeout=request_timeout, max_retries=0).search(
            index=index, size=0, track_total_hits=False
        )
    except elasticsearch.ApiError:
        return


async def check_connection(client: AsyncElasticsearch, url: str) -> str:
    """The server's version, or ElasticsearchProblem with a clear message."""
    try:
        info = await client.info()
    except (TransportError, elasticsearch.ApiError) as error:
        raise ElasticsearchProblem(describe(error, url)) from error
    return str(info["version"]["number"])
