"""The `percolert` command line (`main`). `admin` holds the commands that operate a
deployment (indices, catalog, watches, the server), `dev` those for development (the dev
node, the dev Redis, the demo); only `dev` may import `percolert.dev`. The top of the
layers: it may import every other package.
"""

from __future__ import annotations

from percolert.cli.main import main

__all__ = ["main"]
