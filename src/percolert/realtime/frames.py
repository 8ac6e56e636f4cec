"""WebSocket frames built once for many sockets, and the scope extension through which a
server offers to write them directly (`percolert.server.wsprotocol` is the server side).

An alert goes to many sockets as the same bytes (server frames are not masked), so the hub
frames it once and hands those bytes to every socket that is keeping up. Under a server that
offers no extension the accessors return None and the app uses the ASGI path alone. Nothing
here imports a server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from websockets.frames import Frame, Opcode

# scope["extensions"][FRAME_WRITER]: an object with the methods below (the server's protocol:
# no dict of bound methods made per socket), e.g. `write_frame(bytes) -> bool`.
FRAME_WRITER = "percolert.websocket.write_frame"

WriteFrame = Callable[[bytes], bool]
# (code, reason, seconds) -> whether a close frame was queued; see `close_behind`
CloseBehind = Callable[[int, str, float], bool]
# (wake) -> a callable saying whether a receive event is waiting; see `receive_listener`
Listen = Callable[[Callable[[], None]], Callable[[], bool]]
# (rest) -> None: the socket's rest runs once the app has returned; see `detacher`
Detach = Callable[[Callable[[], Awaitable[None]]], None]
# (release) -> whether it is deferred to the end of a detached socket; see `release_later`
ReleaseLater = Callable[[Callable[[], None]], bool]


def frame_text(text: str) -> bytes:
    """`text` as one unmasked, uncompressed WebSocket text frame, for any server socket."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


def frame_writer(scope: Mapping[str, Any]) -> WriteFrame | None:
    """The fast path of the socket with this ASGI scope, if its server offers one."""
    return cast(WriteFrame | None, _offered(scope, "write_frame"))


def receive_listener(scope: Mapping[str, Any]) -> Listen | None:
    """`listen` of the socket with this ASGI scope, if its server offers it: `listen(wake)`
    has `wake()` called whenever a receive event arrives, and returns whether one is
    waiting (so `receive` would not wait)."""
    return cast(Listen | None, _offered(scope, "listen"))


def closer(scope: Mapping[str, Any]) -> CloseBehind | None:
    """`close_behind` of the socket with this ASGI scope, if its server offers it."""
    return cast(CloseBehind | None, _offered(scope, "close_behind"))


def detacher(scope: Mapping[str, Any]) -> Detach | None:
    """`detach` of the socket with this ASGI scope, if its server offers it: `detach(rest)`
    has the server run `rest()` as the socket's task once the app has returned (in the
    context of the call), instead of the app awaiting it. What an open socket keeps is then
    that task alone, not the whole ASGI stack above the endpoint suspended for as long as
    the socket is open (docs/benchmarks/socket-memory.md)."""
    return cast(Detach | None, _offered(scope, "detach"))


def release_later(scope: Mapping[str, Any], release: Callable[[], None]) -> bool:
    """For a middleware that holds something for as long as a socket is open (its
    `finally` after the app returns): True if the app detached the socket's rest, and the
    server calls `release` when that ends; False (the middleware releases now) otherwise."""
    later = cast(ReleaseLater | None, _offered(scope, "release_later"))
    return later is not None and later(release)


def _offered(scope: Mapping[str, Any], name: str) -> object:
    """`name` of this protocol's scope extension, or None under another server."""
    extension = (scope.get("extensions") or {}).get(FRAME_WRITER)
    return None if extension is None else getattr(extension, name)
