"""Percolert: per-user "notify me" alerts for search, percolated in Elasticsearch.

The package's layers, lowest first (each may import those below it; `pyproject.toml`'s
import contracts check it in lint): `core`; `engine` and `realtime`; `watches` and `broker`;
`alerts` and `products`; `service`; `web`; `server`; `cli`. `dev` (development tooling) may
import `core` only, and only `cli.dev` imports it.

The public names, `percolert.create_app` and `percolert.Settings`, are imported on first
use, so that importing one layer does not import the whole service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Settings", "__version__", "create_app"]

if TYPE_CHECKING:
    from percolert.core.settings import Settings
    from percolert.web.app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from percolert.web.app import create_app

        return create_app
    if name == "Settings":
        from percolert.core.settings import Settings

        return Settings
    raise AttributeError(f"module 'percolert' has no attribute {name!r}")
