"""The running services as an endpoint sees them: the lifespan's state in a request's scope."""

from __future__ import annotations

from typing import cast

from starlette.requests import HTTPConnection

from percolert.service.services import State


def state_of(connection: HTTPConnection) -> State:
    return cast(State, connection.scope["state"])
