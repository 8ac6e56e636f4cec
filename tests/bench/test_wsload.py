"""The Go load client's own tests (tools/wsload, used by the benchmark), run with the suite
wherever Go is installed, so that the README's test command covers them too."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

WSLOAD = ROOT / "tools" / "wsload"


def test_go_tests_of_the_load_client_pass() -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: tools/wsload's `go test` needs it (go.dev/doc/install)")
    # Read-only modules: go.sum must already pin everything (a first run downloads the
    # dependencies through the module proxy; later runs take about a second).
    result = subprocess.run(
        [go, "test", "-mod=readonly", "./..."],
        cwd=WSLOAD,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ok  \tpercolert/tools/wsload" in result.stdout, output  # tests ran, not "no tests"
