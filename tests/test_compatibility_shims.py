"""Compatibility shims carry the release that removes them (`Compatibility shim, removed in
X.Y.Z`), and that release cannot ship with them: once the package's version reaches it, this
fails until the shim is gone."""

from __future__ import annotations

import re
from pathlib import Path

import percolert

PACKAGE = Path(percolert.__file__).resolve().parent
MARK = re.compile(r"Compatibility shim, removed in (\d+)\.(\d+)\.(\d+)")
# What each shim reads that the current format does not have: each must sit under a mark.
SHIMS = [
    ("alerts/log.py", "def upgrade_v1("),
    ("web/middleware/sessions.py", "if not started_ms:"),
    ("broker/redis.py", 'if b"e" not in fields:'),
    ("broker/redis.py", "return AlertWatch(id=watch_id, terms=_text(raw))"),
]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_every_shim_is_marked_with_the_release_that_removes_it() -> None:
    for name, code in SHIMS:
        text = (PACKAGE / name).read_text()
        at = text.index(code)
        nearby = text[max(0, text.rfind("\n\n", 0, at)) : text.find("\n\n", at)]
        assert MARK.search(nearby), f"{name}: the shim at {code!r} names no release"


def test_no_shim_outlives_its_release() -> None:
    current = _version(percolert.__version__)
    overdue = [
        f"{path.relative_to(PACKAGE)}: removed in {'.'.join(mark)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for mark in MARK.findall(path.read_text())
        if current >= tuple(int(part) for part in mark)
    ]
    assert overdue == []
