"""The vendored uPlot (web/vendor/uplot/) is exactly what its VENDORED.md records: the
package version, the npm tarball's integrity and each file's sha256. A file changed, added or
removed without that record updated fails here, as does a record naming another version than
the script's own banner."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "web" / "vendor" / "uplot"
RECORD = VENDOR / "VENDORED.md"
ADMIN_PAGE = ROOT / "web" / "admin" / "index.html"

_VERSION = re.compile(r"^- Version: `(\d+\.\d+\.\d+)`$", re.MULTILINE)
_INTEGRITY = re.compile(r"^- Tarball integrity: `sha512-([A-Za-z0-9+/]+={0,2})`$", re.MULTILINE)
_ROW = re.compile(r"^\| `([^`/]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|$", re.MULTILINE)


def record() -> str:
    return RECORD.read_text(encoding="utf-8")


def recorded_version() -> str:
    found = _VERSION.findall(record())
    assert len(found) == 1, "VENDORED.md must give one '- Version: `X.Y.Z`' line"
    return str(found[0])


def recorded_sums() -> dict[str, str]:
    rows = _ROW.findall(record())
    sums = {name: digest for name, digest in rows}
    assert len(sums) == len(rows), "VENDORED.md lists a file twice"
    return sums


def test_every_vendored_file_is_recorded_with_its_sha256() -> None:
    sums = recorded_sums()
    present = {path.name for path in VENDOR.iterdir() if path != RECORD}
    assert present == set(sums), "web/vendor/uplot/ and VENDORED.md's table disagree"
    for name, digest in sorted(sums.items()):
        actual = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert actual == digest, f"{name} changed: sha256 {actual}, VENDORED.md says {digest}"


def test_the_script_is_the_recorded_version() -> None:
    banner = (VENDOR / "uPlot.iife.min.js").read_text(encoding="utf-8").splitlines()[0]
    assert banner == f"/*! https://github.com/leeoniya/uPlot (v{recorded_version()}) */"


def test_the_tarball_integrity_is_a_sha512() -> None:
    found = _INTEGRITY.findall(record())
    assert len(found) == 1, "VENDORED.md must give one '- Tarball integrity: `sha512-…`' line"
    assert len(base64.b64decode(found[0], validate=True)) == 64


def test_the_licence_is_kept() -> None:
    assert (VENDOR / "LICENSE").read_text(encoding="utf-8").startswith("The MIT License")


def test_the_admin_page_loads_the_vendored_files() -> None:
    page = ADMIN_PAGE.read_text(encoding="utf-8")
    loaded = re.findall(r'"/static/vendor/uplot/([^"]+)"', page)
    assert sorted(loaded) == ["uPlot.iife.min.js", "uPlot.min.css"]
    assert set(loaded) <= set(recorded_sums())
