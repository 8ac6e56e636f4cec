"""Structured logs: one JSON object per line, for requests, socket events and problems.

Nothing secret is logged: no cookies, no tokens; users appear as a short hash of their id.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from percolert.sessions import current_user

_encoder = msgspec.json.Encoder()
access_logger = logging.getLogger("percolert.access")


def user_tag(user: str | None) -> str | None:
    """A stable, non-reversible short tag for a user id, to correlate log lines."""
    return None if user is None else hashlib.sha256(user.encode()).hexdigest()[:10]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
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
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # The transport logs every request and a traceback per retry; Percolert reports
    # Elasticsearch failures itself, in one line that says what to check.
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})


class AccessLogMiddleware:
    """One line per HTTP request: method, path, status, duration, user tag."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                user=user_tag(current_user(HTTPConnection(scope))),
            )
