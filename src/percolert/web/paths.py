"""Where a request goes, as the app's routes see it."""

from __future__ import annotations

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """The path the app's routes match on: below its mount point (`root_path`), if any."""
    return str(scope["path"]).removeprefix(scope.get("root_path", ""))
