"""Structured logs: one JSON object per line, for requests, socket events and problems.

Nothing secret is logged: no cookies, no tokens; users appear as a short hash of their id.
Every line names the instance it comes from (`instance`): the app sets its id in the context
of its requests, sockets and background work (`as_instance`), so that one process serving
two apps (the tests) still tells them apart.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import msgspec
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from percolert.core.times import iso_from_seconds
from percolert.web.middleware.sessions import current_user
from percolert.web.paths import loggable_path

_encoder = msgspec.json.Encoder()
access_logger = logging.getLogger("percolert.access")
# Not state of the module: a handle to each task's context, where the app puts its id.
_instance: ContextVar[str | None] = ContextVar("percolert_instance", default=None)


@contextmanager
def as_instance(instance_id: str) -> Iterator[None]:
    """Log as `instance_id` inside the block (and in the tasks started from it)."""
    token = _instance.set(instance_id)
    try:
        yield
    finally:
        _instance.reset(token)


class InstanceFilter(logging.Filter):
    """Stamps each record with the instance of the context that logs it. A handler's filter
    runs in the logging task, before any formatting elsewhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "instance", None) is None:
            record.instance = _instance.get()
        return True


def user_tag(user: str | None) -> str | None:
    """A stable, non-reversible short tag for a user id, to correlate log lines."""
    return None if user is None else hashlib.sha256(user.encode()).hexdigest()[:10]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": iso_from_seconds(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        instance = getattr(record, "instance", None)
        if instance is not None:
            entry["instance"] = instance
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def configure(level: int = logging.INFO, *, json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json
        else logging.Formatter("%(asctime)s %(levelname)s %(instance)s %(name)s %(message)s")
    )
    handler.addFilter(InstanceFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # The transport logs every request and a traceback per retry; Percolert reports
    # Elasticsearch failures itself, in one line that says what to check.
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})


class AccessLogMiddleware:
    """One line per HTTP request: method, path, status, duration, user tag; and everything
    logged while serving a request or a socket names `instance_id`."""

    def __init__(self, app: ASGIApp, instance_id: str) -> None:
        self.app = app
        self.instance_id = instance_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with as_instance(self.instance_id):
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            event(
                access_logger,
                "request",
                method=scope["method"],
                path=loggable_path(scope),
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                user=user_tag(current_user(HTTPConnection(scope))),
            )
