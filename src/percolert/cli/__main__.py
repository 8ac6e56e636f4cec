"""`python -m percolert.cli`: the same as the `percolert` command."""

from __future__ import annotations

import sys

from percolert.cli.main import main

sys.exit(main())
