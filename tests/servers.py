"""Real servers for tests: uvicorn on an unused port in a background thread (as uvicorn's own
test suite does), `percolert serve` in a process of its own (for tests that kill it), plain
HTTP servers for the pages and endpoints of others (another origin's page, a shop's keys),
and helpers to find free ports."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from percolert.core.settings import Settings
from percolert.server.runner import build_server
from percolert.web.app import create_app


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers with `reply`."""

    def reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    # Connections waiting to be accepted: the standard library's 5 drops the handshakes of a
    # burst (a webhook sender's 32 at once), which the client then retries a second later.
    request_queue_size = 128


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """The standard library's HTTP server with `handler` on an unused loopback port, in a
    background thread until the block ends; yields its base URL."""
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def run_server(
    settings: Settings, port: int | None = None, *, app: Starlette | None = None
) -> Iterator[str]:
    """Serve `app` (default: `create_app(settings)`) until the block ends (then shut down
    gracefully, as on SIGTERM); yields the base URL."""
    port = port or free_port()
    app = create_app(settings) if app is None else app
    server = build_server(
        app,
        app.state.drain,
        "127.0.0.1",
        port,
        head_timeout=settings.head_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        log_level="warning",
        trusted_proxies=settings.trusted_proxies,
    )
    with serving(server, port) as url:
        yield url


@contextmanager
def serving(server: uvicorn.Server, port: int) -> Iterator[str]:
    """Run a uvicorn server (listening on `port`) in a background thread until the block
    ends; yields its base URL once it is up."""
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def metric(base_url: str, name: str, **labels: str) -> float:
    """The value of one sample on the server's /metrics (with exactly these labels), e.g. a
    counter to wait on."""
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels or ''} on {base_url}/metrics")


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        self._into.append(record.getMessage())


@contextmanager
def logged_errors() -> Iterator[list[str]]:
    """The messages logged at ERROR or above by the servers of the block (uvicorn's loggers
    do not propagate to the root, where pytest's capture listens). Enter it after the servers
    are built: building one configures uvicorn's loggers afresh, dropping this handler."""
    errors: list[str] = []
    handler = _Collect(errors)
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "percolert")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield errors
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def serve_process(
    settings: Settings, port: int, log: Path, environment: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`percolert serve` in its own process, as deployed: `settings`' cluster, index prefix
    and state directory, no rate limits, plus `environment`; its output appended to `log`."""
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": settings.elasticsearch_url,
        "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
        "PERCOLERT_PORT": str(port),
        "PERCOLERT_STATE_DIR": str(settings.state_dir),
        "PERCOLERT_RATE_LIMITS": "off",
        "PERCOLERT_LOG_FORMAT": "text",
        **(environment or {}),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "percolert.cli", "serve"], env=env, stdout=out, stderr=out
        )


def answering(process: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    """Whether the process at `url` is ready (it must not have exited: then its log says why)."""
    assert process.poll() is None, log.read_text()
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
