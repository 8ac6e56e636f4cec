"""Running the app under uvicorn, with a graceful shutdown that drains the sockets first.

uvicorn on its own closes every WebSocket at once with 1012 when it stops. Percolert instead
stops accepting connections, finishes percolating the searches already answered, sends
pending follow-up alerts, lets each socket send what is queued for it and close with 1001
("going away") — all bounded by `drain_seconds` — and only then lets uvicorn finish.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import uvicorn

from percolert.server.gcpolicy import GcPolicy
from percolert.server.httpprotocol import bounded_protocol
from percolert.server.wsprotocol import FrameWritingProtocol

# An ASGI 3 application, spelled as Starlette spells it, without importing Starlette.
_Message = MutableMapping[str, Any]
ASGIApplication = Callable[
    [_Message, Callable[[], Awaitable[_Message]], Callable[[_Message], Awaitable[None]]],
    Awaitable[None],
]

# Largest WebSocket frame a client may send; clients only send tiny control messages.
MAX_CLIENT_FRAME_BYTES = 16 * 1024


def make_config(
    app: ASGIApplication,
    host: str,
    port: int,
    *,
    head_timeout: float,
    body_timeout: float,
    log_level: str = "info",
    trusted_proxies: Sequence[str] = (),
) -> uvicorn.Config:
    """uvicorn's configuration for Percolert; `head_timeout` and `body_timeout` bound slow
    clients (`Settings.head_timeout_seconds`, `body_timeout_seconds`)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        # uvicorn's own lines go to the process's handlers (percolert.web.logs: one JSON object
        # each, naming the instance) rather than to a text handler of its own.
        log_config=None,
        access_log=False,  # percolert.web.logs writes one JSON line per request instead
        # httptools, with bounds on the request head's size and time and on a stalled body
        http=bounded_protocol(head_timeout, body_timeout),
        # Client addresses (rate limits) and schemes come from X-Forwarded-For/-Proto only
        # when the peer is a trusted proxy; by default no one is (uvicorn's own default
        # trusts 127.0.0.1, where any local process could claim to be anyone).
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies),
        ws=FrameWritingProtocol,  # uvicorn's websockets-sansio, plus direct frame writes
        ws_max_size=MAX_CLIENT_FRAME_BYTES,
        # Alerts are a few hundred bytes: compressing each one for every socket cost more CPU
        # than anything else in a broadcast and saves almost no bytes (docs/benchmarks/).
        ws_per_message_deflate=False,
        ws_ping_interval=20,
        ws_ping_timeout=20,
        timeout_graceful_shutdown=10,
    )


Drain = Callable[[float], Awaitable[None]]  # stops new work, delivers, closes sockets


class GracefulServer(uvicorn.Server):
    """uvicorn's server, draining sockets on shutdown; with `tune_gc`, it also runs the
    process's garbage collector for steady latency (`percolert.server.gcpolicy`)."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Drain,
        *,
        drain_seconds: float = 5.0,
        tune_gc: bool = False,
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_seconds = drain_seconds
        self._gc = GcPolicy() if tune_gc else None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._gc is not None:
            self._gc.start()

    async def on_tick(self, counter: int) -> bool:
        if self._gc is not None:
            self._gc.tick()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while draining
        await self._drain(self._drain_seconds)
        await super().shutdown(sockets)


def build_server(
    app: ASGIApplication,
    drain: Drain,
    host: str,
    port: int,
    *,
    head_timeout: float,
    body_timeout: float,
    log_level: str = "info",
    tune_gc: bool = False,
    trusted_proxies: Sequence[str] = (),
) -> GracefulServer:
    """A server for an app whose lifespan `drain` stops it gracefully (`create_app` sets it
    as `app.state.drain`)."""
    config = make_config(
        app,
        host,
        port,
        head_timeout=head_timeout,
        body_timeout=body_timeout,
        log_level=log_level,
        trusted_proxies=trusted_proxies,
    )
    return GracefulServer(config, drain, tune_gc=tune_gc)
