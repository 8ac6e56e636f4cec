"""WS /ws: the alert socket — handshake checks, hello and replay, then live alerts."""

from __future__ import annotations

import contextlib
import logging

import anyio
import elasticsearch
import msgspec
from elastic_transport import TransportError
from starlette.websockets import WebSocket, WebSocketDisconnect

from percolert.hub import (
    GOING_AWAY,
    POLICY_VIOLATION,
    SLOW_CLIENT,
    UNSUPPORTED_DATA,
    Connection,
)
from percolert.logs import event, user_tag
from percolert.messages import Alert, ClientMessages, Hello, Ping, Pong, Watch
from percolert.origins import origin_allowed
from percolert.services import State, encode_message, state_of
from percolert.sessions import current_user, session_started
from percolert.settings import Settings
from percolert.wsprotocol import frame_writer

logger = logging.getLogger("percolert.socket")


def _origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    return origin_allowed(
        websocket.headers.get("origin"), websocket.scope, settings.allowed_origins
    )


def _resume_position(websocket: WebSocket) -> int | None:
    raw = websocket.query_params.get("after")
    if raw is None:
        return None
    return int(raw) if raw.isdigit() and len(raw) < 20 else None


async def _greeting(
    state: State, websocket: WebSocket, user: str, cut: int
) -> tuple[Hello, list[Alert]]:
    """The hello message and the alerts missed since the client's `after` position.

    Elasticsearch being down must not keep a page from connecting: the page then gets no
    watch list (None) and no history, and live alerts as usual.
    """
    after = _resume_position(websocket)
    try:
        async with state["greetings"]:
            watches: list[Watch] | None = await state["watches"].visible_to(user)
            recent = await state["alert_log"].recent(user, session_started(websocket))
            missed = [] if after is None else await state["alert_log"].missed(user, after, cut)
    except (TransportError, elasticsearch.ApiError) as error:
        logger.warning("greeting without history, Elasticsearch failed: %s", error)
        watches, recent, missed = None, [], []
    hello = Hello(
        coalesce_seconds=state["settings"].coalesce_seconds,
        watches=watches,
        recent=recent,
        last_seq=cut,
    )
    return hello, missed


async def _read_until_closed(websocket: WebSocket, connection: Connection) -> tuple[int, str]:
    """Answer pings; returns the close code and reason when the client leaves or misbehaves."""
    decoder = msgspec.json.Decoder(ClientMessages)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return 0, ""
        text = message.get("text")
        if text is None:
            return UNSUPPORTED_DATA, "only JSON text messages are accepted"
        try:
            decoded = decoder.decode(text)
        except msgspec.DecodeError:
            return POLICY_VIOLATION, "malformed message"
        match decoded:
            case Ping():
                connection.offer(encode_message(Pong()))


async def alerts_socket(websocket: WebSocket) -> None:
    state = state_of(websocket)
    user = current_user(websocket)
    if user is None or not _origin_allowed(websocket, state["settings"]):
        # Closing before accepting refuses the handshake (HTTP 403).
        logger.info("refused a WebSocket handshake: %s", "origin" if user else "no session")
        await websocket.close(code=POLICY_VIOLATION)
        return
    await websocket.accept()
    hub = state["hub"]
    connection = Connection(
        user,
        websocket.send_text,
        state["settings"].socket_queue_size,
        write_frame=frame_writer(websocket.scope),
    )
    # Alerts numbered up to `cut` are replayed from the log; later ones arrive live through
    # the queue, which starts filling now. Nothing is sent twice or skipped.
    cut = state["alert_log"].last_seq
    hub.add(connection)
    event(logger, "socket_open", user=user_tag(user), sockets=hub.socket_count())
    close_code, reason = 0, ""
    try:
        hello, missed = await _greeting(state, websocket, user, cut)
        await websocket.send_text(encode_message(hello))
        for alert in missed:
            await websocket.send_text(encode_message(alert))

        async with anyio.create_task_group() as tasks:

            async def read() -> None:
                nonlocal close_code, reason
                close_code, reason = await _read_until_closed(websocket, connection)
                tasks.cancel_scope.cancel()

            tasks.start_soon(read)
            await connection.write(tasks.cancel_scope)
            tasks.cancel_scope.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        hub.remove(connection)
        connection.close()
    if connection.overflowed:
        close_code, reason = SLOW_CLIENT, "too slow: reconnect to catch up"
    elif connection.finished:
        close_code, reason = GOING_AWAY, "server shutting down"
    event(
        logger,
        "socket_close",
        user=user_tag(user),
        code=close_code or None,
        reason=reason or None,
        sockets=hub.socket_count(),
    )
    if close_code:
        # Bounded: a client that stopped reading may never take the close frame.
        with (
            anyio.move_on_after(1),
            contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError),
        ):
            await websocket.close(code=close_code, reason=reason)
