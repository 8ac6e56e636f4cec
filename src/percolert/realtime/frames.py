"""WebSocket frames built once for many sockets, and the scope extension through which a
server offers to write them directly (`percolert.server.wsprotocol` is the server side).

An alert goes to many sockets as the same bytes (server frames are not masked), so the hub
frames it once and hands those bytes to every socket that is keeping up. Under a server that
offers no extension the accessors return None and the app uses the ASGI path alone. Nothing
here imports a server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from websockets.frames import Frame, Opcode

# scope["extensions"][FRAME_WRITER] = {"write_frame": <callable(bytes) -> bool>}
FRAME_WRITER = "percolert.websocket.write_frame"

WriteFrame = Callable[[bytes], bool]
# (code, reason, seconds) -> whether a close frame was queued; see `close_behind`
CloseBehind = Callable[[int, str, float], bool]
# (wake) -> a callable saying whether a receive event is waiting; see `receive_listener`
Listen = Callable[[Callable[[], None]], Callable[[], bool]]


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


def _offered(scope: Mapping[str, Any], name: str) -> object:
    """`name` of this protocol's scope extension, or None under another server."""
    extension = (scope.get("extensions") or {}).get(FRAME_WRITER)
    return None if extension is None else extension[name]
