"""JSON responses: every body msgspec-encoded in one place."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import Message, Send


def json_response(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def never_stored(send: Send) -> Send:
    """`send` with `Cache-Control: no-store` on the response (unless it says otherwise): for
    answers only an admin may read, which no cache along the way may keep."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            if "cache-control" not in headers:
                headers["cache-control"] = "no-store"
        await send(message)

    return sending
