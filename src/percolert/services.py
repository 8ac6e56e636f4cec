"""What the lifespan builds and every endpoint uses: one typed state per running app."""

from __future__ import annotations

from typing import TypedDict, cast

import anyio
import msgspec
from elasticsearch import AsyncElasticsearch
from starlette.requests import HTTPConnection

from percolert.alertlog import AlertLog
from percolert.alerts import AlertDispatcher
from percolert.hub import Hub
from percolert.messages import ServerMessage
from percolert.metrics import Metrics
from percolert.percolator import Percolator
from percolert.settings import Settings
from percolert.watches import WatchStore


class State(TypedDict):
    client: AsyncElasticsearch
    settings: Settings
    hub: Hub
    percolator: Percolator
    dispatcher: AlertDispatcher
    watches: WatchStore
    alert_log: AlertLog
    metrics: Metrics
    # Greetings reading Elasticsearch at once (watches and history of a new socket).
    greetings: anyio.Semaphore


def state_of(connection: HTTPConnection) -> State:
    return cast(State, connection.scope["state"])


def encode_message(message: ServerMessage) -> str:
    """A WebSocket message as JSON text, encoded once for however many sockets get it."""
    return msgspec.json.encode(message).decode()
