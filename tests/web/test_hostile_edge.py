"""The edge against hostile or broken clients, on a real server over real sockets: slow heads
and bodies (slowloris) cut off, the security headers on the server's own refusals too, a
client that leaves mid-body logged as such (not as a 500), and JSON nested too deep for the
decoder refused before it is decoded.

The server's timeouts are a second here; the clients trickle ten times faster than that, so
that only a bound on the whole head (not on the pause between lines), or on the pause
between body reads (not on the whole body), explains what they see. Nothing waits a fixed
time: each test waits for the server to close or to log, under a deadline that only
matters when it never does."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from percolert.core.jsondepth import MAX_DEPTH
from percolert.core.settings import Settings, from_environment
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.servers import run_server
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-the-edge-tests-0123456789"
TIMEOUT = 1.0  # the server's head and body timeouts
TRICKLE = TIMEOUT / 10  # a trickling client's pause between two pieces
GIVE_UP = 20.0  # how long a client waits for the server before the test fails

SECURITY_HEADERS = (
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
)


@pytest.fixture(scope="module")
def edge(catalog_settings: Settings) -> Iterator[str]:
    """A server with second-long timeouts, the admin API, and one socket per user. Nothing
    here writes to its catalog: every admin request is refused."""
    settings = msgspec.structs.replace(
        catalog_settings,
        head_timeout_seconds=TIMEOUT,
        body_timeout_seconds=TIMEOUT,
        admin_token=TOKEN,
        max_sockets_per_user=1,
    )
    with run_server(settings) as url:
        yield url


class Record(msgspec.Struct, frozen=True):
    logger: str
    level: int
    message: str
    fields: dict[str, Any]
    traceback: bool


@contextmanager
def server_logs() -> Iterator[list[Record]]:
    """Everything the percolert and uvicorn loggers log inside the block, INFO and up
    (enter it after the server is built: building one configures uvicorn's loggers)."""
    records: list[Record] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fields = getattr(record, "fields", None)
            records.append(
                Record(
                    record.name,
                    record.levelno,
                    record.getMessage(),
                    dict(fields) if isinstance(fields, dict) else {},
                    record.exc_info is not None,
                )
            )

    handler = Collect(logging.INFO)
    loggers = [logging.getLogger(name) for name in ("percolert", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    loggers[0].setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def access_statuses(records: list[Record], path: str) -> list[int]:
    return [
        record.fields["status"]
        for record in records
        if record.logger == "percolert.access" and record.fields.get("path") == path
    ]


def assert_nothing_went_wrong(records: list[Record]) -> None:
    problems = [record for record in records if record.level >= logging.ERROR or record.traceback]
    assert not problems, problems


class Answer(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        code: str = json.loads(self.body)["error"]["code"]
        return code


def parse(response: bytes) -> Answer:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split(" ", 2)[1]), headers, body)


def assert_security_headers(headers: Any) -> None:
    for name in SECURITY_HEADERS:
        assert name in headers, f"no {name} in {dict(headers)}"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


async def read_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    received = b""
    while True:
        try:
            received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return received


async def exchange(url: str, request: bytes) -> bytes:
    """Send `request` (possibly unfinished: the client then waits) and read until the
    server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(request)
        with anyio.fail_after(GIVE_UP):
            return await read_until_closed(stream)


async def trickle(url: str, first: bytes, pieces: Iterator[bytes]) -> tuple[bytes, int]:
    """Send `first`, then one of `pieces` every TRICKLE seconds while the connection is open;
    what the server answered once it closed the connection, and how many pieces were sent."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(first)
        answer = b""
        with anyio.fail_after(GIVE_UP):
            async with anyio.create_task_group() as tasks:

                async def read() -> None:
                    nonlocal answer
                    answer = await read_until_closed(stream)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(read)
                for piece in pieces:
                    await anyio.sleep(TRICKLE)
                    try:
                        await stream.send(piece)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        break
                    sent += 1
                await anyio.sleep_forever()  # until the server closes, or the test gives up
    return answer, sent


def post_head(url: str, path: str, cookie: str, length: int, extra: str = "") -> bytes:
    host = url.removeprefix("http://")
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {url}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
        f"Cookie: {COOKIE_NAME}={cookie}\r\n{extra}\r\n"
    ).encode()


# --- slowloris ------------------------------------------------------------------------------


def test_the_timeouts_come_from_the_environment_with_a_proxy_s_defaults() -> None:
    defaults = from_environment({})
    assert (defaults.head_timeout_seconds, defaults.body_timeout_seconds) == (10.0, 60.0)
    given = from_environment(
        {"PERCOLERT_HEAD_TIMEOUT_SECONDS": "2.5", "PERCOLERT_BODY_TIMEOUT_SECONDS": "30"}
    )
    assert (given.head_timeout_seconds, given.body_timeout_seconds) == (2.5, 30.0)


async def test_a_head_trickled_a_line_at_a_time_is_cut_off_at_the_head_timeout(
    edge: str,
) -> None:
    """A header line every tenth of the timeout: a bound on the pause between lines would
    never end it, a bound on the whole head does, with a 408."""
    lines = (f"X-Slow-{n}: a\r\n".encode() for n in range(1000))
    answer, sent = await trickle(edge, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", lines)
    assert sent < 1000
    refusal = parse(answer)
    assert refusal.status == 408, answer
    assert refusal.error_code() == "request_timeout"
    assert_security_headers(refusal.headers)


async def test_a_connection_that_never_sends_a_request_is_closed(edge: str) -> None:
    assert await exchange(edge, b"") == b""


async def test_a_body_that_stops_arriving_is_answered_408_and_the_connection_closed(
    edge: str,
) -> None:
    async with Shopper(edge) as a:
        with server_logs() as records:
            head = post_head(edge, "/api/watches", a.cookie, 100)
            refusal = parse(await exchange(edge, head + b'{"'))
            assert refusal.status == 408, refusal
            assert refusal.error_code() == "request_timeout"
            assert_security_headers(refusal.headers)
            await wait_until(
                lambda: access_statuses(records, "/api/watches"), what="the access log line"
            )
        assert access_statuses(records, "/api/watches") == [408]
        assert_nothing_went_wrong(records)


async def test_a_body_trickled_a_byte_at_a_time_within_the_body_timeout_is_served(
    edge: str,
) -> None:
    """The body takes longer than the timeout in all, but never pauses that long."""
    body = b'{"terms": "kindle trickled"}'
    async with Shopper(edge) as a:
        head = post_head(edge, "/api/watches", a.cookie, len(body), "Connection: close\r\n")
        answer, sent = await trickle(edge, head, (bytes([byte]) for byte in body))
        assert sent == len(body)
        served = parse(answer)
        assert served.status == 201, answer
        await a.unwatch(json.loads(served.body)["id"])


# --- a client that leaves mid-body ----------------------------------------------------------


async def test_a_client_gone_mid_body_is_a_499_in_the_log_not_a_500(edge: str) -> None:
    async with Shopper(edge) as a:
        with server_logs() as records:
            host, port = edge.removeprefix("http://").split(":")
            async with await anyio.connect_tcp(host, int(port)) as stream:
                await stream.send(post_head(edge, "/api/watches", a.cookie, 100) + b'{"')
            await wait_until(
                lambda: access_statuses(records, "/api/watches"), what="the access log line"
            )
        assert access_statuses(records, "/api/watches") == [499]
        said = [record for record in records if "closed the request" in record.message]
        assert said, records
        assert said[0].level == logging.INFO
        assert_nothing_went_wrong(records)


# --- security headers on the server's own refusals ------------------------------------------


async def test_a_head_too_large_is_refused_with_the_security_headers(edge: str) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000
    refusal = parse(await exchange(edge, request))
    assert refusal.status == 431
    assert refusal.error_code() == "headers_too_large"
    assert_security_headers(refusal.headers)


async def test_what_is_not_http_is_refused_in_the_error_shape_with_the_security_headers(
    edge: str,
) -> None:
    refusal = parse(await exchange(edge, b"NOT HTTP AT ALL\r\n\r\n"))
    assert refusal.status == 400
    assert refusal.error_code() == "invalid_request"
    assert_security_headers(refusal.headers)


async def test_a_malformed_websocket_handshake_is_refused_with_the_security_headers(
    edge: str,
) -> None:
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    refusal = parse(await exchange(edge, request))
    assert refusal.status == 400
    assert_security_headers(refusal.headers)


async def test_a_handshake_closed_before_accepting_is_a_403_with_the_security_headers(
    edge: str,
) -> None:
    """No session: the app closes before accepting, and uvicorn answers 403."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(edge.replace("http://", "ws://") + "/ws"):
            pass
    assert refused.value.response.status_code == 403
    assert_security_headers(refused.value.response.headers)


async def test_a_handshake_denied_by_the_app_carries_the_security_headers(edge: str) -> None:
    """Over the socket cap: the app's denial response (429) through the server's extension."""
    async with Shopper(edge) as a:
        socket = await a.connect()
        try:
            with pytest.raises(InvalidStatus) as refused:
                await a.connect()
        finally:
            await socket.close()
    response = refused.value.response
    assert response.status_code == 429
    assert json.loads(response.body)["error"]["code"] == "too_many_sockets"
    assert_security_headers(response.headers)
    port = edge.rsplit(":", 1)[1]
    assert (
        f"connect-src 'self' ws://127.0.0.1:{port}" in response.headers["content-security-policy"]
    )


# --- JSON nested too deep to decode ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 4000, id="arrays"),
        pytest.param(b'{"a":' * 800, id="objects"),
        pytest.param(b'{"terms": "kindle", "x": ' + b"[" * (MAX_DEPTH + 1), id="inside a field"),
    ],
)
async def test_a_watch_nested_too_deep_is_a_400_before_it_is_decoded(
    edge: str, body: bytes
) -> None:
    async with Shopper(edge) as a:
        with server_logs() as records:
            refused = await a.http.post(
                "/api/watches",
                content=body,
                headers={"origin": edge, "content-type": "application/json"},
            )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "too_deep"
        assert str(MAX_DEPTH) in refused.json()["error"]["message"]
        assert_nothing_went_wrong(records)


@pytest.mark.parametrize(
    "body",
    [pytest.param(b"[" * 20_000, id="arrays"), pytest.param(b'{"a":' * 6_000, id="objects")],
)
def test_a_product_nested_too_deep_is_a_400_before_it_is_decoded(edge: str, body: bytes) -> None:
    with server_logs() as records:
        refused = httpx.put(
            f"{edge}/api/admin/products/ER-0001",
            content=body,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "content-type": "application/json",
                "origin": edge,
            },
            timeout=10,
        )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "too_deep"
    assert_nothing_went_wrong(records)


async def test_json_nested_up_to_the_bound_is_decoded_as_before(edge: str) -> None:
    """A body at the bound reaches the decoder: the answer is about its content."""
    at_the_bound = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    async with Shopper(edge) as a:
        watch = await a.http.post(
            "/api/watches",
            content=at_the_bound,
            headers={"origin": edge, "content-type": "application/json"},
        )
        product = await a.http.put(
            "/api/admin/products/ER-0001",
            content=at_the_bound,
            headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
        )
    assert watch.status_code == 400, watch.text
    assert watch.json()["error"]["code"] == "invalid_watch"
    assert product.status_code == 400, product.text
    assert product.json()["error"]["code"] == "invalid_product"
