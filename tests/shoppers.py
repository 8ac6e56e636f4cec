"""Test clients that behave like browsers: an HTTP client keeping the session cookie, and
real WebSocket connections authenticated by that cookie."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from elasticsearch import AsyncElasticsearch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from percolert.core.messages import Watch, WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.watches.store import WatchStore
from percolert.web.middleware.sessions import COOKIE_NAME


@asynccontextmanager
async def default_watch(
    settings: Settings, terms: str
) -> AsyncIterator[tuple[Watch, AsyncElasticsearch]]:
    """A default watch added as an admin would, removed afterwards; with the client used."""
    client = es.create_client(settings)
    store = WatchStore(
        client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=5
    )
    watch = await store.add(None, WatchSpec(terms=terms))
    try:
        yield watch, client
    finally:
        await store.remove(None, watch.id)
        await client.close()


class Socket:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.hello: dict[str, Any] = {}

    async def receive(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next message, or None if nothing arrives within `timeout` seconds."""
        with anyio.move_on_after(timeout):
            raw = await self.connection.recv()
            message: dict[str, Any] = json.loads(raw)
            return message
        return None

    async def next_alert(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next alert, skipping other messages (watches_changed, pong)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = await self.receive(left)
            if message is None:
                return None
            if message["type"] == "alert":
                return message
        return None

    async def raw_messages(self, seconds: float) -> list[str | bytes]:
        """Everything that arrives during `seconds`, undecoded."""
        received: list[str | bytes] = []
        with anyio.move_on_after(seconds):
            while True:
                received.append(await self.connection.recv())
        return received

    async def alerts_during(self, seconds: float) -> list[dict[str, Any]]:
        messages = [json.loads(raw) for raw in await self.raw_messages(seconds)]
        return [message for message in messages if message["type"] == "alert"]

    async def messages_before_pong(self) -> list[dict[str, Any]]:
        """Everything already sent to this socket: what arrives before the reply to a ping."""
        await self.connection.send(json.dumps({"type": "ping"}))
        before: list[dict[str, Any]] = []
        while (message := await self.receive()) is not None:
            if message["type"] == "pong":
                return before
            before.append(message)
        raise AssertionError("no pong came")

    async def closed_by_server(self) -> tuple[int, str]:
        """The close code and reason, once the server closes the socket (what arrives
        before is passed over); fails if it closes without a close frame."""
        try:
            while True:
                await self.connection.recv()
        except ConnectionClosed as closed:
            received = closed.rcvd
        assert received is not None, "closed without a close frame"
        return received.code, received.reason

    async def close(self) -> None:
        await self.connection.close()


class Shopper:
    """One browser: its own cookie jar, hence its own user; with `token`, a shop's customer
    logged in (the token on every request and socket, no session of its own)."""

    def __init__(self, base_url: str, *, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=15, headers=headers)
        self.sockets: list[Socket] = []

    async def __aenter__(self) -> Shopper:
        if self.token is None:
            # As the page does before its first API call: the page itself starts no session.
            response = await self.http.post("/api/session", json={})
            response.raise_for_status()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for socket in self.sockets:
            await socket.close()
        await self.http.aclose()

    @property
    def cookie(self) -> str:
        value = self.http.cookies.get(COOKIE_NAME)
        assert value, "no session cookie"
        return value

    async def search(self, text: str, **params: Any) -> httpx.Response:
        response = await self.http.get("/api/search", params={"q": text, **params})
        assert response.status_code == 200, response.text
        return response

    async def watch(self, terms: str, **spec: Any) -> dict[str, Any]:
        response = await self.http.post("/api/watches", json={"terms": terms, **spec})
        assert response.status_code == 201, response.text
        watch: dict[str, Any] = response.json()
        return watch

    async def alerts_before_marker(self, socket: Socket, searcher: Shopper) -> list[dict[str, Any]]:
        """The alerts `socket` (one of ours) receives before a marker: a fresh watch of ours on
        a word nothing else has, matched by a search `searcher` makes now. Percolation hands
        matches on in the order of the searches and a socket receives in the order sent, so
        whatever an earlier search sends arrives first: "nothing arrived", without a wait."""
        [before] = await self.alerts_before_markers([socket], searcher)
        return before

    async def alerts_before_markers(
        self, sockets: list[Socket], searcher: Shopper
    ) -> list[list[dict[str, Any]]]:
        """`alerts_before_marker` for several sockets of ours at once (one marker reaches
        them all)."""
        word = "marker" + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:12])
        marker = await self.watch(word)
        try:
            await searcher.search(word)
            found: list[list[dict[str, Any]]] = []
            for socket in sockets:
                before: list[dict[str, Any]] = []
                while (alert := await socket.next_alert()) is not None:
                    if alert["watch"]["id"] == marker["id"]:
                        break
                    before.append(alert)
                else:
                    raise AssertionError("the marker's alert never came")
                found.append(before)
            return found
        finally:
            await self.unwatch(marker["id"])

    async def unwatch(self, watch_id: str) -> None:
        response = await self.http.delete(f"/api/watches/{watch_id}")
        assert response.status_code == 204, response.text

    async def connect(
        self,
        *,
        origin: str | None = None,
        cookie: str | None = None,
        after: int | None = None,
        base_url: str | None = None,
    ) -> Socket:
        """Open the alert socket as the page would; the hello message is read off.
        `base_url`: another instance of the same service (default: this shopper's). With a
        token, the socket authenticates by its first message (no cookie)."""
        base_url = base_url or self.base_url
        ws_url = base_url.replace("http://", "ws://") + "/ws"
        query = [] if self.token is None else ["auth=token"]
        if after is not None:
            query.append(f"after={after}")
        if query:
            ws_url += "?" + "&".join(query)
        headers = (
            {} if self.token is not None else {"Cookie": f"{COOKIE_NAME}={cookie or self.cookie}"}
        )
        connection = await connect(
            ws_url, origin=Origin(origin or base_url), additional_headers=headers, open_timeout=10
        )
        if self.token is not None:
            await connection.send(json.dumps({"type": "auth", "token": self.token}))
        socket = Socket(connection)
        self.sockets.append(socket)
        hello = await socket.receive()
        assert hello is not None
        assert hello["type"] == "hello"
        socket.hello = hello
        return socket
