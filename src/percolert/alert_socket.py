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
    SERVICE_RESTART,
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
from percolert.wsprotocol import closer, frame_writer

logger = logging.getLogger("percolert.socket")


def _origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    return origin_allowed(
        websocket.headers.get("origin"), websocket.scope, settings.allowed_origins
    )


# Positions are stored in the alert log as Elasticsearch `long`s.
_MAX_POSITION = 2**63 - 1


def _resume_position(websocket: WebSocket) -> int | None:
    """The `after` query parameter: None when absent; ValueError unless it is a position.

    ASCII digits only: `str.isdigit` also accepts "²" and other digits that `int` refuses,
    and a number past a `long` would make Elasticsearch reject the replay query.
    """
    raw = websocket.query_params.get("after")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > _MAX_POSITION:
        raise ValueError(f"after must be the seq of an alert: a whole number up to {_MAX_POSITION}")
    return int(raw)


async def _greeting(
    state: State,
    websocket: WebSocket,
    user: str,
    after: int | None,
    cut: int,
    connection: Connection,
) -> tuple[Hello, list[Alert]]:
    """The hello message and the alerts missed since the client's `after` position.

    Neither holds an alert counting a search made before the session began, whatever
    `after` says: what other shoppers searched before is none of a new session's business.
    Elasticsearch being down must not keep a page from connecting: the page then gets no
    watch list (None) and no history, and live alerts as usual.
    """
    started = session_started(websocket)
    try:
        async with state["greetings"]:
            watches: list[Watch] | None = await state["watches"].visible_to(user)
            recent = await state["alert_log"].recent(user, cut, since=started)
            missed = (
                []
                if after is None
                else await state["alert_log"].missed(user, after, cut, since=started)
            )
    except (TransportError, elasticsearch.ApiError) as error:
        logger.warning("greeting without history, Elasticsearch failed: %s", error)
        watches, recent, missed = None, [], []
    # Apart from the history: product alerts fail (to no `away`) on their own.
    async with state["greetings"]:
        away = await state["product_feed"].greet(user, connection)
    hello = Hello(
        coalesce_seconds=state["settings"].coalesce_seconds,
        watches=watches,
        recent=recent,
        last_seq=cut,
        away=away,
    )
    return hello, missed


async def _read_until_closed(websocket: WebSocket) -> tuple[int, str]:
    """Answer pings; returns the close code and reason when the client leaves or misbehaves."""
    decoder = msgspec.json.Decoder(ClientMessages)
    pong = encode_message(Pong())
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
                # Sent from here, not queued: the queue's bound is for alerts the client fails
                # to take, and its own pings must not count toward it. A client that pings
                # without reading is simply not read from until it does.
                try:
                    await websocket.send_text(pong)
                except WebSocketDisconnect:
                    return 0, ""


async def alerts_socket(websocket: WebSocket) -> None:
    state = state_of(websocket)
    user = current_user(websocket)
    if user is None or not _origin_allowed(websocket, state["settings"]):
        # Closing before accepting refuses the handshake (HTTP 403).
        logger.info("refused a WebSocket handshake: %s", "origin" if user else "no session")
        await websocket.close(code=POLICY_VIOLATION)
        return
    await websocket.accept()
    try:
        after = _resume_position(websocket)
    except ValueError as error:
        # After the accept, so that the page is told why (a refused handshake says nothing).
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.close(code=POLICY_VIOLATION, reason=str(error))
        return
    hub = state["hub"]
    connection = Connection(
        user,
        websocket.send_text,
        state["settings"].socket_queue_size,
        write_frame=frame_writer(websocket.scope),
        session_started=session_started(websocket),
    )
    # Alerts numbered up to `cut` are replayed from the log; later ones arrive live through
    # the queue, which starts filling now (held until the cut is known: a shared broker
    # may deliver a later one while it answers). Nothing is sent twice or skipped.
    broker = state["broker"]
    connection.hold()
    state["product_feed"].hold(connection)
    hub.add(connection)
    try:
        cut = await broker.connected(user)
    except BaseException:
        hub.remove(connection)
        raise
    connection.release(cut)
    event(logger, "socket_open", user=user_tag(user), sockets=hub.socket_count())
    close_code, reason = 0, ""
    try:
        # Before the hello: a search after it must find this user's watches (reachability.py).
        await state["reachability"].arrived(user)
        hello, missed = await _greeting(state, websocket, user, after, cut, connection)
        await websocket.send_text(encode_message(hello))
        for alert in missed:
            await websocket.send_text(encode_message(alert))

        async with anyio.create_task_group() as tasks:

            async def read() -> None:
                nonlocal close_code, reason
                close_code, reason = await _read_until_closed(websocket)
                tasks.cancel_scope.cancel()

            tasks.start_soon(read)
            await connection.write(tasks.cancel_scope)
            tasks.cancel_scope.cancel()
    except* (WebSocketDisconnect, OSError):
        # The client went away, while greeted or while its writer sent (the task group then
        # raises it in a group): nothing to tell it.
        pass
    finally:
        hub.remove(connection)
        connection.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await broker.disconnected(user)
    if connection.overflowed:
        close_code, reason = SLOW_CLIENT, "too slow: reconnect to catch up"
    elif connection.resynced:
        close_code, reason = SERVICE_RESTART, "resync"
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
    close_behind = closer(websocket.scope)
    if close_code and close_behind is not None:
        # After what is already written, even to a client that stopped reading: it gets the
        # close frame when it reads again, or is cut off after `socket_close_seconds`.
        close_behind(close_code, reason, state["settings"].socket_close_seconds)
    elif close_code:
        # Bounded: a client that stopped reading may never take the close frame.
        with (
            anyio.move_on_after(1),
            contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError),
        ):
            await websocket.close(code=close_code, reason=reason)
