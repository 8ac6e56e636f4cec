"""Locating files that ship beside the code: index mappings, the web page, dev tooling."""

from __future__ import annotations

from pathlib import Path

# This file is percolert/core/assets.py: the package is one folder up.
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def source_root() -> Path | None:
    """The repository checkout this package runs from (an editable install), if any."""
    root = _PACKAGE_DIR.parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def asset_dir(name: str) -> Path:
    """`mappings` or `web`: inside the wheel when installed, else from the source checkout."""
    packaged = _PACKAGE_DIR / "_assets" / name
    if packaged.is_dir():
        return packaged
    root = source_root()
    if root is not None and (root / name).is_dir():
        return root / name
    raise FileNotFoundError(f"cannot find Percolert's {name}/ directory next to {_PACKAGE_DIR}")
