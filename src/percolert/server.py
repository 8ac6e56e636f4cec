"""Running the app under uvicorn, with a graceful shutdown that drains the sockets first.

uvicorn on its own closes every WebSocket at once with 1012 when it stops. Percolert instead
stops accepting connections, lets each socket send what is queued for it and close with
1001 ("going away"), bounded by `drain_seconds`, and only then lets uvicorn finish.
"""

from __future__ import annotations

import socket

import uvicorn
from starlette.applications import Starlette

from percolert.hub import Hub

# Largest WebSocket frame a client may send; clients only send tiny control messages.
MAX_CLIENT_FRAME_BYTES = 16 * 1024


def make_config(app: Starlette, host: str, port: int, *, log_level: str = "info") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        ws="websockets-sansio",
        ws_max_size=MAX_CLIENT_FRAME_BYTES,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        timeout_graceful_shutdown=10,
    )


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, hub: Hub, *, drain_seconds: float = 5.0) -> None:
        super().__init__(config)
        self._hub = hub
        self._drain_seconds = drain_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while draining
        await self._hub.close_all(self._drain_seconds)
        await super().shutdown(sockets)


def build_server(
    app: Starlette, host: str, port: int, *, log_level: str = "info"
) -> GracefulServer:
    hub = app.state.hub
    assert isinstance(hub, Hub)
    return GracefulServer(make_config(app, host, port, log_level=log_level), hub)
