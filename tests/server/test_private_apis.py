"""The internals of other packages that Percolert relies on, checked by name.

`percolert.server.wsprotocol` subclasses uvicorn's websockets-sansio protocol and reads its
state, `percolert.server.httpprotocol` subclasses uvicorn's httptools protocol and hooks its
parser callbacks, `percolert.server.runner` hooks uvicorn's server loop, and
`percolert.engine.es` subclasses the transport's aiohttp node. None of that is public API,
so pyproject.toml caps those packages at the versions tested; when a cap is raised, this
module says exactly what moved, and in which version, before anything fails in a less
obvious way.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import socket
import typing
from importlib.metadata import version

import anyio
import pytest
import uvicorn
from elastic_transport import AiohttpHttpNode, NodeConfig
from elastic_transport.client_utils import DEFAULT
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

from tests.waiting import wait_until


def moved(package: str, what: str, user: str) -> str:
    return (
        f"{package} {version(package)}: {what}, which {user} relies on. Adapt {user}, or "
        f"let pyproject.toml allow only {package} versions that have it."
    )


def require(owner: object, name: str, package: str, user: str) -> typing.Any:
    """`owner.name`, failing with the package's version if it does not exist."""
    if not hasattr(owner, name):
        label = getattr(owner, "__name__", type(owner).__qualname__)
        pytest.fail(moved(package, f"{label}.{name} does not exist", user), pytrace=False)
    return getattr(owner, name)


def test_uvicorn_protocol_module_and_class() -> None:
    user = "percolert.server.wsprotocol"
    module = "uvicorn.protocols.websockets.websockets_sansio_impl"
    try:
        sansio = importlib.import_module(module)
    except ImportError:
        pytest.fail(moved("uvicorn", f"there is no module {module}", user), pytrace=False)
    protocol = require(sansio, "WebSocketsSansIOProtocol", "uvicorn", user)
    # Overridden: the protocol's own, not asyncio.Protocol's no-op.
    for method in ("run_asgi", "connection_lost", "send_500_response", "on_task_complete"):
        assert method in vars(protocol), moved(
            "uvicorn", f"WebSocketsSansIOProtocol does not define {method}", user
        )
    # `run_asgi` is replaced, not extended (a detached socket's rest runs after the app):
    # FrameWritingProtocol._guarded does what uvicorn's does after the app, line for line.
    source = inspect.getsource(protocol.run_asgi)
    for statement in (
        "result = await self.app(self.scope, self.receive, self.send)",
        "except ClientDisconnected:",
        'self.logger.exception("Exception in ASGI application\\n")',
        "self.send_500_response()",
        "if not self.handshake_complete:",
        "elif result is not None:",
        "if self.close_timer is None:",
        "self.transport.close()",
    ):
        assert statement in source, moved(
            "uvicorn", f"WebSocketsSansIOProtocol.run_asgi no longer has `{statement}`", user
        )
    assert source.count("\n") <= 17, moved(
        "uvicorn", "WebSocketsSansIOProtocol.run_asgi does more than it did", user
    )


def test_uvicorn_server_hooks() -> None:
    user = "percolert.server.runner"
    for method, parameters in [
        ("startup", ["self", "sockets"]),
        ("shutdown", ["self", "sockets"]),
        ("on_tick", ["self", "counter"]),
    ]:
        hook = require(uvicorn.Server, method, "uvicorn", user)
        found = list(inspect.signature(hook).parameters)
        assert found == parameters, moved(
            "uvicorn", f"Server.{method} now takes {found}, not {parameters}", user
        )


@pytest.mark.anyio
async def test_the_uvicorn_state_the_socket_fast_path_reads() -> None:
    """A real GracefulServer with FrameWritingProtocol, a real client: every attribute that
    `write_frame` and `_untie` read exists, a frame written directly arrives, the protocol
    lets go of its transport once the socket is over, and uvicorn calls `on_tick`."""
    from percolert.realtime.frames import WriteFrame, frame_text, frame_writer
    from percolert.server.runner import GracefulServer, make_config
    from percolert.server.wsprotocol import FrameWritingProtocol

    writers: list[WriteFrame] = []
    ticks: list[int] = []
    drained: list[float] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        writer = frame_writer(websocket.scope)
        assert writer is not None, "FrameWritingProtocol did not offer its fast path"
        writers.append(writer)
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()

    async def drain(seconds: float) -> None:
        drained.append(seconds)

    class TickCounting(GracefulServer):
        async def on_tick(self, counter: int) -> bool:
            ticks.append(counter)
            return await super().on_tick(counter)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        config = make_config(
            app, "127.0.0.1", port, head_timeout=10, body_timeout=60, log_level="warning"
        )
        server = TickCounting(config, drain)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(server.serve, [listener])
            await wait_until(lambda: server.started, what="the server to start")
            require(server, "servers", "uvicorn", "percolert.server.runner")
            async with connect(f"ws://127.0.0.1:{port}/ws") as client:
                await wait_until(lambda: writers, what="the socket to be accepted")
                protocol = typing.cast(FrameWritingProtocol, writers[0].__self__)  # type: ignore[attr-defined]
                user = "percolert.server.wsprotocol"
                for name in (
                    "handshake_complete",
                    "close_sent",
                    "disconnected",
                    "writable",
                    "transport",
                    "scope",
                    "conn",
                    # close_behind
                    "queue",
                    "read_paused",
                    "close_timer",
                    "loop",
                    # run_asgi and a detached socket's rest
                    "app",
                    "receive",
                    "send",
                    "tasks",
                    "logger",
                ):
                    require(protocol, name, "uvicorn", user)
                for name in ("state", "extensions", "parser", "send_close", "data_to_send"):
                    require(protocol.conn, name, "websockets", user)
                assert inspect.isgenerator(protocol.conn.parser), moved(
                    "websockets", "Protocol.parser is not a generator", user
                )
                assert writers[0](frame_text("written directly"))
                assert await client.recv() == "written directly"
            await wait_until(
                lambda: protocol.transport is None,
                what="the closed socket's protocol to let go of its transport",
            )
            await wait_until(lambda: ticks, what="uvicorn to call Server.on_tick")
            server.should_exit = True
    assert drained == [5.0]  # GracefulServer.shutdown ran


def test_uvicorn_httptools_protocol_hooks() -> None:
    """`percolert.server.httpprotocol` overrides these and reads `cycle`, `flow`, `loop` and
    `server_state` (set in `__init__`; the head and body bounds of tests/web/test_limits.py
    and tests/web/test_hostile_edge.py exercise them for real)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    user = "percolert.server.httpprotocol"
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "on_message_complete",
        "send_400_response",
        "handle_websocket_upgrade",
    ):
        assert name in vars(HttpToolsProtocol), moved(
            "uvicorn", f"HttpToolsProtocol does not define {name}", user
        )
    assert list(inspect.signature(HttpToolsProtocol.send_400_response).parameters) == [
        "self",
        "msg",
    ], moved("uvicorn", "HttpToolsProtocol.send_400_response takes other arguments", user)
    setup = inspect.getsource(HttpToolsProtocol.__init__)
    for name in ("cycle", "flow", "loop", "server_state"):
        assert f"self.{name}" in setup, moved(
            "uvicorn", f"HttpToolsProtocol no longer sets self.{name} in __init__", user
        )
    # A body that stopped arriving: the cycle is marked disconnected, its waiter woken.
    cycle_setup = inspect.getsource(RequestResponseCycle.__init__)
    for name in (
        "disconnected",
        "message_event",
        "response_started",
        "response_complete",
        "waiting_for_100_continue",
    ):
        assert f"self.{name}" in cycle_setup, moved(
            "uvicorn", f"RequestResponseCycle no longer sets self.{name} in __init__", user
        )
    from uvicorn.protocols.http.flow_control import FlowControl

    require(FlowControl(None), "read_paused", "uvicorn", user)  # type: ignore[arg-type]


def test_the_websocket_protocol_s_connection_is_a_plain_server_protocol() -> None:
    """`percolert.server.wsprotocol` turns uvicorn's `conn` into a subclass that only
    overrides `reject`: that needs `conn` to be exactly websockets' ServerProtocol, and
    `reject` to build the refusals uvicorn sends."""
    from uvicorn.protocols.websockets import websockets_sansio_impl
    from websockets.server import ServerProtocol

    user = "percolert.server.wsprotocol"
    built = getattr(websockets_sansio_impl, "ServerProtocol", None)
    assert built is ServerProtocol, moved(
        "uvicorn", "WebSocketsSansIOProtocol's conn is not websockets' ServerProtocol", user
    )
    source = inspect.getsource(websockets_sansio_impl.WebSocketsSansIOProtocol)
    assert "self.conn = ServerProtocol(" in source, moved(
        "uvicorn", "WebSocketsSansIOProtocol no longer builds self.conn = ServerProtocol(...)", user
    )
    assert "self.conn.reject(" in source, moved(
        "uvicorn", "WebSocketsSansIOProtocol no longer refuses through conn.reject", user
    )
    assert "self.reject(" in inspect.getsource(ServerProtocol.accept), moved(
        "websockets", "ServerProtocol.accept no longer refuses through reject", user
    )


def test_elastic_transport_node_internals() -> None:
    user = "percolert.engine.es"
    try:
        node_module = importlib.import_module("elastic_transport._node")
    except ImportError:
        pytest.fail(
            moved("elastic-transport", "there is no module elastic_transport._node", user),
            pytrace=False,
        )
    response = require(node_module, "NodeApiResponse", "elastic-transport", user)

    # VersionAdaptingNode overrides this method and calls it positionally.
    method = AiohttpHttpNode.perform_request
    parameters = inspect.signature(method).parameters
    expected = ["self", "method", "target", "body", "headers", "request_timeout"]
    assert list(parameters) == expected, moved(
        "elastic-transport",
        f"AiohttpHttpNode.perform_request now takes {list(parameters)}, not {expected}",
        user,
    )
    assert parameters["request_timeout"].default is DEFAULT, moved(
        "elastic-transport", "perform_request's request_timeout does not default to DEFAULT", user
    )
    returns = typing.get_type_hints(method)["return"]
    assert returns is response, moved(
        "elastic-transport", f"perform_request now returns {returns}, not NodeApiResponse", user
    )

    # The subclass's own private names must not shadow the base class's.
    node = AiohttpHttpNode(NodeConfig("http", "127.0.0.1", 9200))
    clashes = {"_major", "_probe_lock", "_learn_major"} & set(dir(node))
    assert not clashes, moved(
        "elastic-transport", f"AiohttpHttpNode now has {sorted(clashes)} of its own", user
    )
