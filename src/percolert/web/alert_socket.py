"""WS /ws: the alert socket — handshake checks, hello and replay, then live alerts."""

from __future__ import annotations

import contextlib
import functools
import logging
import time

import anyio
import elasticsearch
import msgspec
from elastic_transport import TransportError
from starlette.websockets import WebSocket, WebSocketDisconnect

from percolert.accounts.tokens import Account, Tokens
from percolert.alerts.log import Replay
from percolert.broker.base import TooManySockets
from percolert.core.exception_groups import first_error
from percolert.core.jsondepth import TooDeep, check_depth
from percolert.core.messages import (
    Alert,
    Auth,
    Away,
    ClientMessages,
    Hello,
    Ping,
    Pong,
    Watch,
)
from percolert.core.settings import Settings
from percolert.realtime.frames import closer, detacher, frame_writer, receive_listener
from percolert.realtime.hub import (
    GOING_AWAY,
    POLICY_VIOLATION,
    SERVICE_RESTART,
    SLOW_CLIENT,
    UNSUPPORTED_DATA,
    Connection,
)
from percolert.service.services import State, encode_message
from percolert.web.logs import event, user_tag
from percolert.web.middleware.admission import Admission
from percolert.web.middleware.ratelimits import retry_after
from percolert.web.middleware.sessions import current_user, session_started
from percolert.web.origins import origin_allowed
from percolert.web.socket_auth import (
    SocketAuthFailed,
    TokenClock,
    first_token,
    wants_token,
)
from percolert.web.state import state_of

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
    started: float,
    everyone_since: float | None,
) -> tuple[Hello, list[Alert]]:
    """The hello message and the alerts missed since the client's `after` position.

    Neither holds an alert counting a search made before the session began, whatever
    `after` says: what other shoppers searched before is none of a new session's business.
    Elasticsearch being down must not keep a page from connecting: the page then gets no
    watch list (None) and no history, and live alerts as usual.
    """
    watches: list[Watch] | None = None
    recent: list[Alert] = []
    replay = Replay([], complete=True)
    log = state["alert_log"]
    # Through the greetings' reads: a reconnect storm's greetings share their round trips
    # (engine/reads.py), and leave searches most of the client's connections.
    reads = state["greeting_reads"]

    async def read_watches() -> None:
        nonlocal watches
        watches = await state["watches"].visible_to(user, reads)

    async def read_recent() -> None:
        nonlocal recent
        recent = await log.recent(
            user, cut, since=started, everyone_since=everyone_since, reads=reads
        )

    async def read_replay() -> None:
        nonlocal replay
        assert after is not None
        replay = await log.replay(
            user, after, cut, since=started, everyone_since=everyone_since, reads=reads
        )

    away: Away | None = None

    async def read_history() -> None:
        nonlocal watches, recent, replay
        try:
            async with anyio.create_task_group() as history:
                history.start_soon(read_watches)
                history.start_soon(read_recent)
                if after is not None:
                    history.start_soon(read_replay)
        except* (TransportError, elasticsearch.ApiError) as failed:
            logger.warning(
                "greeting without history, Elasticsearch failed: %s", first_error(failed)
            )
            watches, recent, replay = None, [], Replay([], complete=False)

    async def read_away() -> None:
        nonlocal away
        away = await state["product_feed"].greet(user, connection, reads)

    # The reads at once: a page resuming under load waits for the longest (the product
    # feed's two in a row), not for each in turn. Product alerts fail (to no `away`) on
    # their own.
    async with anyio.create_task_group() as reading:
        reading.start_soon(read_history)
        reading.start_soon(read_away)
    missed = replay.alerts
    # One alert once (`after=0` asks for both): what is replayed is not listed as well. A
    # resuming page takes the replay and leaves the list it already shows.
    replayed = {alert.id for alert in missed}
    recent = [alert for alert in recent if alert.id not in replayed]
    hello = Hello(
        coalesce_seconds=state["settings"].coalesce_seconds,
        watches=watches,
        recent=recent,
        last_seq=_resume_from(after, recent, missed),
        away=away,
        recovered=None if after is None else replay.complete,
    )
    return hello, missed


def _resume_from(after: int | None, recent: list[Alert], missed: list[Alert]) -> int:
    """Where the client resumes: the newest of the user's own alerts this greeting covers
    (or where it resumed from). Never the cut, a global position: told across reconnects,
    it would show when anyone's last alert was sent."""
    return max([after or 0, *(alert.seq for alert in recent), *(alert.seq for alert in missed)])


async def _account_refusal(state: State, admission: Admission | None, user: str) -> str | None:
    """Why an account's socket may not open, if so: its rate limit, or (here: the shared
    broker counts the other instances') the cap on one user's open sockets, which the
    handshake could not apply to an account it did not know yet. No await between this
    and the socket joining the hub: two sockets of one account cannot both pass the cap."""
    if admission is not None:
        refused = await admission.account_socket_refusal(user)
        if refused is not None:
            wait, what = refused
            return f"{what}: try again in {retry_after(wait)} s"
    most = state["settings"].max_sockets_per_user
    if len(state["hub"].connections(user)) >= most:
        return f"too many open connections for this account: at most {most}; close another tab"
    return None


class _Reader:
    """Reads what the client sends: answers pings, takes fresh tokens (`clock`: a socket
    authenticated by token); a close code and reason once the client leaves or misbehaves."""

    def __init__(self, websocket: WebSocket, clock: TokenClock | None) -> None:
        self._websocket = websocket
        self._clock = clock
        self._decoder = msgspec.json.Decoder(ClientMessages)
        self._pong = encode_message(Pong())
        self.close_code, self.reason = 0, ""
        self.over = False

    async def read_one(self) -> None:
        """Take one message (waiting for it if need be) and answer it; `over` once the
        socket is."""
        message = await self._websocket.receive()
        if message["type"] == "websocket.disconnect":
            self.over = True
            return
        text = message.get("text")
        if text is None:
            self.close_code, self.reason = UNSUPPORTED_DATA, "only JSON text messages are accepted"
            self.over = True
            return
        try:
            # Before decoding: the decoder recurses, and a frame of brackets exhausts it.
            check_depth(text.encode())
            decoded = self._decoder.decode(text)
        except (msgspec.DecodeError, TooDeep):
            self.close_code, self.reason = POLICY_VIOLATION, "malformed message"
            self.over = True
            return
        match decoded:
            case Ping():
                # Sent from here, not queued: the queue's bound is for alerts the client fails
                # to take, and its own pings must not count toward it. A client that pings
                # without reading is simply not read from until it does.
                try:
                    await self._websocket.send_text(self._pong)
                except WebSocketDisconnect:
                    self.over = True
            case Auth(token=token):
                if self._clock is None:
                    self.close_code, self.reason = POLICY_VIOLATION, "this socket takes no token"
                    self.over = True
                    return
                await self._clock.renew(token)

    async def read_until_closed(self) -> None:
        while not self.over:
            await self.read_one()


async def _live(
    websocket: WebSocket, connection: Connection, clock: TokenClock | None
) -> tuple[int, str]:
    """Alerts out and pings answered until the socket is over; its close code and reason
    (0 and "" when the client left or the server closes it)."""
    reader = _Reader(websocket, clock)
    listen = receive_listener(websocket.scope)
    if listen is not None:
        # One task: the writer reads whenever something arrived (nothing waits to read).
        waiting = listen(connection.readable)

        async def read_waiting() -> bool:
            while waiting() and not reader.over:
                await reader.read_one()
            return not reader.over

        with anyio.CancelScope() as scope:
            await connection.write(scope, read_waiting)
        return reader.close_code, reader.reason
    # Another server's protocol: a reader task beside the writer.
    async with anyio.create_task_group() as tasks:

        async def read() -> None:
            await reader.read_until_closed()
            tasks.cancel_scope.cancel()

        tasks.start_soon(read)
        await connection.write(tasks.cancel_scope)
        tasks.cancel_scope.cancel()
    return reader.close_code, reader.reason


async def alerts_socket(
    websocket: WebSocket, tokens: Tokens | None = None, admission: Admission | None = None
) -> None:
    """One alert socket: a session's (its cookie) or, opened with `?auth=token`, a shop
    account's (its first message: socket_auth.py; `tokens` checks them, and `admission`
    holds the account to its own socket limits once it is known)."""
    state = state_of(websocket)
    by_token = wants_token(websocket)
    user = current_user(websocket)
    if (user is None and not by_token) or not _origin_allowed(websocket, state["settings"]):
        # Closing before accepting refuses the handshake (HTTP 403).
        logger.info("refused a WebSocket handshake: %s", "no session" if user is None else "origin")
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
    account = None
    started, everyone_since = session_started(websocket), None
    if by_token:
        try:
            account = await first_token(
                websocket, tokens, state["settings"].socket_auth_timeout_seconds
            )
        except SocketAuthFailed as failed:
            logger.info("refused a socket's token: %s", failed.reason)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await websocket.close(code=failed.code, reason=failed.reason)
            return
        except WebSocketDisconnect:
            return
        # An account's history is its own, across devices (sessions.act_as_account); default
        # watches' news, everyone's, starts for it as for anyone: when it came.
        user, started, everyone_since = account.user, 0.0, time.time()
        refused = await _account_refusal(state, admission, user)
        if refused is not None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await websocket.close(code=POLICY_VIOLATION, reason=refused)
            return
        # Who the shop says this is, for e-mail and the shop's events while they are away.
        await state["offsite"].saw(account.user, account.subject, account.email)
    assert user is not None
    hub = state["hub"]
    connection = Connection(
        user,
        websocket.send_text,
        state["settings"].socket_queue_size,
        write_frame=frame_writer(websocket.scope),
        session_started=started,
    )
    # Alerts numbered up to `cut` are replayed from the log; later ones arrive live through
    # the queue, which starts filling now (held until the cut is known: a shared broker
    # may deliver a later one while it answers). Nothing is sent twice or skipped.
    broker = state["broker"]
    connection.hold()
    state["product_feed"].hold(connection)
    hub.add(connection)
    try:
        cut = await broker.connected(user, max_sockets=state["settings"].max_sockets_per_user)
    except TooManySockets as refused:
        # This instance let it in; together with the user's sockets on the others it is one
        # too many. Told after the accept, as other refusals that need a look are.
        hub.remove(connection)
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.close(code=POLICY_VIOLATION, reason=str(refused))
        return
    except BaseException:
        hub.remove(connection)
        raise
    connection.release(cut)
    event(logger, "socket_open", user=user_tag(user), sockets=hub.socket_count())
    session = functools.partial(
        _session, state, websocket, connection, tokens, account, after, cut, started, everyone_since
    )
    detach = detacher(websocket.scope)
    if detach is None:
        await session()
    else:
        # The server runs it once this returns: an open socket keeps that task alone, not
        # the ASGI stack's suspended frames above this endpoint.
        detach(session)


async def _session(
    state: State,
    websocket: WebSocket,
    connection: Connection,
    tokens: Tokens | None,
    account: Account | None,
    after: int | None,
    cut: int,
    started: float,
    everyone_since: float | None,
) -> None:
    """A socket in the hub from the greeting to its close (the hub, the broker and the log
    told of its end)."""
    user, hub, broker = connection.user, state["hub"], state["broker"]
    clock: TokenClock | None = None
    close_code, reason = 0, ""
    try:
        if account is not None and tokens is not None:
            ahead = state["settings"].token_refresh_ahead_seconds
            clock = TokenClock(connection, tokens, account, ahead)
        # Before the hello: a search after it must find this user's watches (reachability.py).
        await state["reachability"].arrived(user)
        hello, missed = await _greeting(
            state, websocket, user, after, cut, connection, started, everyone_since
        )
        await websocket.send_text(encode_message(hello))
        if hello.away is not None:
            state["product_feed"].greeted(user, hello.away)
        for alert in missed:
            await websocket.send_text(encode_message(alert))
        # Not kept in this frame for as long as the socket is open: the hello lists the
        # user's watches and recent alerts, `missed` what was replayed.
        del hello, missed
        close_code, reason = await _live(websocket, connection, clock)
    except* (WebSocketDisconnect, OSError):
        # The client went away, while greeted or while its writer sent (the task group then
        # raises it in a group): nothing to tell it.
        pass
    finally:
        if clock is not None:
            clock.stop()
        hub.remove(connection)
        connection.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await broker.disconnected(user)
    if connection.overflowed:
        close_code, reason = SLOW_CLIENT, "too slow: reconnect to catch up"
    elif connection.ended is not None:
        # Ended by the server: an expired token (socket_auth.py), an erased account.
        close_code, reason = connection.ended
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
