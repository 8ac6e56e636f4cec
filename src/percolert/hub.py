"""The connections on this node: who is connected, and delivery to their sockets.

Delivery never waits on a socket. Each connection has a bounded queue and its own writer
task; `offer` only enqueues. A connection whose queue is full has stopped keeping up: it is
cut off (closed with 1013, "try again later") rather than slowing anyone else, and the
page reconnects. The hub knows nothing of Elasticsearch or watches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

logger = logging.getLogger("percolert.hub")

# WebSocket close code for a client that fell too far behind (RFC 6455 "Try Again Later").
SLOW_CLIENT_CLOSE = 1013


class Connection:
    """One open socket of one user. `send_text` is the socket's own send coroutine."""

    def __init__(
        self,
        user: str,
        send_text: Callable[[str], object],
        queue_size: int,
    ) -> None:
        self.user = user
        self._send_text = send_text
        outgoing: tuple[MemoryObjectSendStream[str], MemoryObjectReceiveStream[str]]
        outgoing = anyio.create_memory_object_stream(queue_size)
        self._outgoing, self._pending = outgoing
        self.overflowed = False
        self._cancel_scope: anyio.CancelScope | None = None

    def offer(self, payload: str) -> bool:
        """Queue a message; a full queue marks the connection too slow and stops it."""
        if self.overflowed:
            return False
        try:
            self._outgoing.send_nowait(payload)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False  # the socket is going away
        except anyio.WouldBlock:
            self.overflowed = True
            logger.warning("closing a socket of user %s: send queue full", self.user[:8])
            if self._cancel_scope is not None:
                self._cancel_scope.cancel()
            return False
        return True

    def close(self) -> None:
        """Release the queue; later offers are refused."""
        self._outgoing.close()
        self._pending.close()

    async def write_until_cancelled(self, scope: anyio.CancelScope) -> None:
        """The writer: sends queued messages in order. `scope` is cancelled on overflow."""
        self._cancel_scope = scope
        if self.overflowed:
            scope.cancel()
        async for payload in self._pending:
            await self._send_text(payload)  # type: ignore[misc]


class Hub:
    def __init__(self) -> None:
        self._by_user: dict[str, set[Connection]] = {}
        self.delivered = 0

    def add(self, connection: Connection) -> None:
        self._by_user.setdefault(connection.user, set()).add(connection)

    def remove(self, connection: Connection) -> None:
        connections = self._by_user.get(connection.user)
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self._by_user[connection.user]

    def users(self) -> Collection[str]:
        return self._by_user.keys()

    def socket_count(self) -> int:
        return sum(len(connections) for connections in self._by_user.values())

    def send_to_user(self, user: str, payload: str) -> int:
        """Queue `payload` for every open socket of `user`; returns how many took it."""
        sent = 0
        for connection in tuple(self._by_user.get(user, ())):
            sent += connection.offer(payload)
        self.delivered += sent
        return sent

    def send_to_all(self, payload: str, *, exclude: Collection[str] = ()) -> int:
        """Queue `payload` for every socket of every user not in `exclude`."""
        sent = 0
        for user, connections in tuple(self._by_user.items()):
            if user in exclude:
                continue
            for connection in tuple(connections):
                sent += connection.offer(payload)
        self.delivered += sent
        return sent
