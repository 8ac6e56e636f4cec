"""A CPU budget for the benchmark's load client: its processes (the subscriber sockets and
the search driver) in a cgroup of their own under a CFS quota, so that every design's steps
run with the client held to the same share of the machine, whichever design it measures.

On 2 cores shared by Elasticsearch, the server and the client, the client's own bursts
(25,000 alerts a second to read at 10k sockets and 100/s) take time from the others. With a
budget it never has more than `cores` of a core within any 100 ms period; what it wanted
beyond that is counted as throttled time, read per step, since a throttled client reads its
alerts late and that lateness is in the latencies it records.

cgroup v2 (`cpu.max`, where the root offers the cpu controller) or v1 (`cpu.cfs_quota_us`
under the `cpu` hierarchy); both need write access to the cgroup file system, as root has on
a machine or container that mounts it read-write. Without it the budget is refused up front
with the reason, rather than a run that silently measures without one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class BudgetError(RuntimeError):
    """No cgroup with a CPU controller can be made here."""


def _hierarchy(root: Path) -> tuple[Path, bool]:
    """Where to make the group, and whether it is cgroup v2."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return root, True
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / name / "cpu.cfs_quota_us").exists():
            return root / name, False
    raise BudgetError(f"no cgroup CPU controller under {root} (neither v2 cpu.max nor v1 cpu)")


class CpuBudget:
    """A cgroup holding at most `cores` CPUs' worth of time per period; processes started
    with `preexec_fn=budget.join` run in it from their first instruction."""

    def __init__(self, cores: float, name: str, root: Path = CGROUP_ROOT) -> None:
        if not 0.01 <= cores <= (os.cpu_count() or 1):
            raise BudgetError(f"a CPU budget of {cores:g} cores is outside 0.01-{os.cpu_count()}")
        parent, self._v2 = _hierarchy(root)
        self.path = parent / name
        quota = int(cores * PERIOD_US)
        try:
            if self._v2:
                subtree = parent / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
            self.path.mkdir(exist_ok=True)
            if self._v2:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as error:
            raise BudgetError(f"cannot make the cgroup {self.path}: {error}") from error
        self._procs = os.fsencode(self.path / "cgroup.procs")

    def join(self) -> None:
        """Move the calling process into the group: a `preexec_fn`, so only os calls."""
        descriptor = os.open(self._procs, os.O_WRONLY)
        try:
            os.write(descriptor, b"0")
        finally:
            os.close(descriptor)

    def throttled_seconds(self) -> float:
        """How long, in all, the group's processes were held back by the quota."""
        stat = dict(
            line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line
        )
        if self._v2:
            return int(stat.get("throttled_usec", 0)) / 1e6
        return int(stat.get("throttled_time", 0)) / 1e9

    def close(self) -> None:
        """Remove the group (its processes have exited; any left go to the parent)."""
        if not self.path.exists():
            return
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # exited meanwhile
                (self.path.parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):  # a process still leaving; empty, it costs nothing
            self.path.rmdir()


def throttled_note(milliseconds: float | None) -> str:
    """A report's client CPU cell's note: how long the budget held the client back."""
    return "" if milliseconds is None else f" (throttled {milliseconds:g} ms)"


def budget_note(cores: float | None) -> str:
    """A report's run line's note: the budget the run held the load client to."""
    if cores is None:
        return ""
    return (
        f"; the load client (sockets and search driver) held to {cores:g} of a core in every "
        "design (`--client-cpus`, bench/cpu_budget.py), its throttled time beside its CPU"
    )
