"""The load client's CPU budget (bench/cpu_budget.py): a process started inside it runs in
its cgroup and is held back by the quota, which its throttled time shows. Skipped where no
cgroup CPU controller can be written (a container without a writable cgroup file system)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cpu_budget import BudgetError, CpuBudget, budget_note, throttled_note

# Burns this much CPU time, then prints its cgroups: under a fifth of a core the burn spans
# several of the quota's 100 ms periods, each of which ends throttled.
_BURN = """
import time
while time.process_time() < 0.3:
    pass
print(open("/proc/self/cgroup").read())
"""


@pytest.fixture
def budget() -> Iterator[CpuBudget]:
    try:
        made = CpuBudget(0.2, f"percolert-test-{os.getpid()}")
    except BudgetError as error:
        pytest.skip(f"no writable cgroup CPU controller here: {error}")
    try:
        yield made
    finally:
        made.close()
    assert not made.path.exists()


def test_a_process_started_inside_the_budget_is_held_to_its_quota(budget: CpuBudget) -> None:
    before = budget.throttled_seconds()
    burnt = subprocess.run(
        [sys.executable, "-c", _BURN],
        preexec_fn=budget.join,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert budget.path.name in burnt.stdout
    assert budget.throttled_seconds() > before


def test_a_budget_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match="outside"):
        CpuBudget(0.0, "none", root=tmp_path)
    with pytest.raises(BudgetError, match="no cgroup CPU controller"):
        CpuBudget(0.5, "none", root=tmp_path)


def test_reports_name_the_budget_only_when_there_is_one() -> None:
    assert throttled_note(None) == budget_note(None) == ""
    assert throttled_note(12.5) == " (throttled 12.5 ms)"
    assert "held to 0.5 of a core" in budget_note(0.5)
