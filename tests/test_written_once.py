"""Helpers that had been written several times live in one module each: a second copy drifts
(one retry rule, one date format, one error shape), so a copy anywhere else fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "percolert"

# (what, a pattern of its code, the one module allowed to hold it)
ONCE = [
    ("ISO dates, written and read", r"\.(from)?isoformat\(", "core/times.py"),
    ("which bulk failures are retried", r"cluster_block_exception|== 429\b", "engine/bulk.py"),
    ("JSON responses", r"Response\(msgspec\.json\.encode", "web/responses.py"),
    ("the first error of a task group", r"\.exceptions\[0\]", "core/exception_groups.py"),
    ("the path below the mount point", r"removeprefix\(scope", "web/paths.py"),
]


def _modules() -> dict[str, str]:
    return {
        str(path.relative_to(PACKAGE)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))
    }


@pytest.mark.parametrize(("what", "pattern", "home"), ONCE, ids=[item[0] for item in ONCE])
def test_a_helper_is_written_in_one_module(what: str, pattern: str, home: str) -> None:
    holders = [name for name, text in _modules().items() if re.search(pattern, text)]
    assert holders == [home], f"{what}: written in {holders}, expected only in {home}"


def test_no_two_modules_define_the_same_private_helper() -> None:
    """A private function of the same name and body in two modules is one helper twice."""
    seen: dict[str, str] = {}
    twice = []
    for name, text in _modules().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("_"):
                if node.name.startswith("__"):
                    continue
                body = ast.dump(ast.Module(body=node.body, type_ignores=[]))
                key = f"{node.name}:{body}"
                if key in seen:
                    twice.append(f"{node.name} in {seen[key]} and {name}")
                seen.setdefault(key, name)
    assert twice == []
