"""What an idle alert socket costs the server: RSS growth from 0 to N sockets, divided by N.

Each round starts a fresh server (`percolert serve`, wrapped by a probe: see `serve_probed`),
connects and closes a few sockets so that first-use costs (imports, caches, pools) are not
counted, reads the server's resident set with 0 sockets, connects N sockets (two tabs per
user, as the harness does: `wsload subscribe`, which is ready once every socket had its
hello), lets them idle and reads it again. Each reading comes after a garbage collection in
the server (the probe), which also reports what Python holds: tracked objects by type, the
sizes of their own allocations (`sys.getsizeof`), the tasks, and the pause of a collection
and of a compaction (gcpolicy) at that many sockets. With `--trace` the server runs under
tracemalloc (its RSS is then inflated: for attribution only) and the biggest allocation
sites of the growth are listed.

    PYTHONPATH=. .venv/bin/python bench/socket_memory.py --sockets 10000
    PYTHONPATH=. .venv/bin/python bench/socket_memory.py --sockets 10000 \\
        --variants before=/work/before/src,after=src       # alternating rounds, side by side
    PYTHONPATH=. .venv/bin/python bench/socket_memory.py --sockets 2000 --rounds 1 --trace

Uses ELASTICSEARCH_URL when set (its own index prefix, set up afresh), else a fresh dev node.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.rig import REPORT_DIR, ROOT, Server, Subscribers, build_wsload
from percolert.core.settings import from_environment
from percolert.dev.devnode import DevNode
from percolert.web.middleware.sessions import SessionSigner
from tests.servers import free_port

PREFIX = "sockmem"
PROBE_ENV = "PERCOLERT_BENCH_PROBE"  # the probe's output file, in the server's environment
TABS = 2
SECRET = "socket-memory-bench"  # the servers' session secret: the cookies are minted here


# -- inside the server process ---------------------------------------------------------------


def _probe(_signum: int, _frame: object) -> None:
    """SIGUSR1: collect, then write what the process holds to $PERCOLERT_BENCH_PROBE."""
    path = Path(os.environ[PROBE_ENV])
    started = time.perf_counter()
    gc.collect()  # what the policy's own full collection costs (the frozen set is skipped)
    collect_ms = 1000 * (time.perf_counter() - started)
    started = time.perf_counter()
    gc.unfreeze()  # a compaction (gcpolicy): everything is walked
    gc.collect()
    compaction_ms = 1000 * (time.perf_counter() - started)
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    chains = Counter(_await_chain(task) for task in asyncio.all_tasks())
    gc.freeze()
    rss = psutil.Process().memory_info().rss
    # What the C allocator holds free (fragmentation left by transient work such as the
    # greetings) rather than what the sockets hold: the same after giving it back.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    report: dict[str, Any] = {
        "rss": rss,
        "rss_trimmed": psutil.Process().memory_info().rss,
        "blocks": sys.getallocatedblocks(),
        "collect_ms": round(collect_ms, 1),
        "compaction_ms": round(compaction_ms, 1),
        "objects": sum(counts.values()),
        "counts": dict(counts),
        "chains": dict(chains.most_common(3)),
        "sizes": dict(sizes),
    }
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(str(path) + ".trace")
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report))
    partial.rename(path)


def _await_chain(task: asyncio.Task[Any]) -> str:
    """The coroutines a task is suspended in, outermost first."""
    names: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(names) < 60:
        names.append(getattr(awaited, "__qualname__", type(awaited).__qualname__))
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return " > ".join(names)


def serve_probed(port: int) -> int:
    """`percolert serve` with the probe on SIGUSR1 (uvicorn leaves that signal alone)."""
    from percolert.cli import main as percolert_main

    signal.signal(signal.SIGUSR1, _probe)
    return percolert_main(["serve", "--port", str(port)])


# -- the orchestrator ------------------------------------------------------------------------


class ProbedServer(Server):
    """The harness's server under test, started through `serve_probed` from `src`."""

    def __init__(self, src: Path, es_url: str, scratch: Path, *, trace: bool) -> None:
        self.design = "percolert-per-user"
        self.name = f"sockmem-{src.parent.name}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = "/readyz"
        self.probe_path = scratch / "probe.json"
        env = {
            **os.environ,
            "ELASTICSEARCH_URL": es_url,
            "PERCOLERT_INDEX_PREFIX": PREFIX,
            "PERCOLERT_STATE_DIR": str(scratch / "app"),
            "PERCOLERT_SECRET": SECRET,
            "PERCOLERT_RECONNECT_GRACE_SECONDS": "5",
            "PERCOLERT_RATE_LIMITS": "off",
            "PERCOLERT_MAX_WATCHES_PER_USER": "1000",
            "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)]),
            PROBE_ENV: str(self.probe_path),
        }
        if trace:
            env["PYTHONTRACEMALLOC"] = "1"
        command = [sys.executable, "-m", "bench.socket_memory", "--serve", str(self.port)]
        self.start(command, env, scratch)

    def probe(self, label: str) -> dict[str, Any]:
        """The probe's report; with tracemalloc, its snapshot is kept as `<label>.trace`."""
        self.probe_path.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not self.probe_path.exists():
            if time.monotonic() > deadline:
                raise SystemExit("the server's probe did not answer")
            time.sleep(0.1)
        result: dict[str, Any] = json.loads(self.probe_path.read_text())
        trace = Path(str(self.probe_path) + ".trace")
        if trace.exists():
            result["trace"] = str(trace.rename(self.probe_path.with_name(f"{label}.trace")))
        return result

    def sockets(self) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("percolert_connected_sockets"):
                return float(line.split()[-1])
        return float("nan")


def settle(server: ProbedServer, sockets: int, seconds: float) -> None:
    """Wait until the server counts `sockets` open, then `seconds` more for it to go idle."""
    deadline = time.monotonic() + 120
    while server.sockets() != sockets:
        if time.monotonic() > deadline:
            raise SystemExit(f"the server never counted {sockets} sockets")
        time.sleep(0.2)
    time.sleep(seconds)


def one_round(
    src: Path,
    es_url: str,
    scratch: Path,
    cookies: list[str | None],
    *,
    trace: bool,
    settle_seconds: float,
) -> dict[str, Any]:
    server = ProbedServer(src, es_url, scratch, trace=trace)
    try:
        # First use (imports, pools, caches) outside the measurement.
        warm = Subscribers(server, cookies[:50], scratch)
        warm.stop()
        Path(str(warm.record) + ".ready").unlink()  # the next subscribers' share its name
        settle(server, 0, settle_seconds)
        before = server.probe("before")
        started = time.monotonic()
        subscribers = Subscribers(server, cookies, scratch)
        connect_s = time.monotonic() - started
        try:
            settle(server, len(cookies), settle_seconds)
            after = server.probe("after")
        finally:
            subscribers.stop()
    finally:
        server.stop()
    return summarize(before, after, len(cookies), connect_s)


def summarize(
    before: dict[str, Any],
    after: dict[str, Any],
    sockets: int,
    connect_s: float,
) -> dict[str, Any]:
    def per_socket(key: str) -> dict[str, float]:
        growth = {
            name: (after[key].get(name, 0) - before[key].get(name, 0)) / sockets
            for name in set(after[key]) | set(before[key])
        }
        return {
            name: round(value, 2)
            for name, value in sorted(growth.items(), key=lambda item: -abs(item[1]))
            if abs(value) >= 0.05
        }

    result: dict[str, Any] = {
        "sockets": sockets,
        "connect_seconds": round(connect_s, 1),
        "rss_before_mb": round(before["rss"] / 2**20, 1),
        "rss_after_mb": round(after["rss"] / 2**20, 1),
        "kb_per_socket": round((after["rss"] - before["rss"]) / sockets / 1024, 2),
        "kb_per_socket_trimmed": round(
            (after["rss_trimmed"] - before["rss_trimmed"]) / sockets / 1024, 2
        ),
        "blocks_per_socket": round((after["blocks"] - before["blocks"]) / sockets, 1),
        "objects_per_socket": round((after["objects"] - before["objects"]) / sockets, 1),
        "python_bytes_per_socket": round(
            (sum(after["sizes"].values()) - sum(before["sizes"].values())) / sockets
        ),
        "collect_ms": [before["collect_ms"], after["collect_ms"]],
        "compaction_ms": [before["compaction_ms"], after["compaction_ms"]],
        "objects_by_type": dict(list(per_socket("counts").items())[:25]),
        "tasks_after": after["chains"],
        "bytes_by_type": dict(list(per_socket("sizes").items())[:25]),
    }
    if "trace" in after:
        # Allocation sites of the growth (tracemalloc's own bookkeeping left out).
        skip = [tracemalloc.Filter(False, tracemalloc.__file__)]
        grown = (
            tracemalloc.Snapshot.load(after["trace"])
            .filter_traces(skip)
            .compare_to(tracemalloc.Snapshot.load(before["trace"]).filter_traces(skip), "lineno")
        )
        result["bytes_by_line"] = {
            str(stat.traceback[0]): round(stat.size_diff / sockets)
            for stat in grown[:30]
            if abs(stat.size_diff) >= sockets
        }
    return result


@contextmanager
def elasticsearch(scratch: Path) -> Iterator[str]:
    url = os.environ.get("ELASTICSEARCH_URL")
    if url:
        yield url
        return
    node = DevNode.configured(from_environment(), scratch / "node", heap="1g")
    state, _ = node.start(free_port())
    try:
        yield state.url
    finally:
        node.stop()


def print_round(label: str, result: dict[str, Any]) -> None:
    print(
        f"{label}: {result['sockets']} sockets, RSS {result['rss_before_mb']} -> "
        f"{result['rss_after_mb']} MiB: {result['kb_per_socket']} KB/socket "
        f"({result['kb_per_socket_trimmed']} after malloc_trim); "
        f"{result['blocks_per_socket']} allocated blocks/socket, "
        f"{result['objects_per_socket']} tracked objects/socket "
        f"({result['python_bytes_per_socket']} B own size); "
        f"collect {result['collect_ms'][1]} ms, compaction {result['compaction_ms'][1]} ms "
        f"(0 sockets: {result['collect_ms'][0]} / {result['compaction_ms'][0]} ms); "
        f"connected in {result['connect_seconds']} s",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=f"here={ROOT / 'src'}",
        help="comma-separated NAME=SRC_DIR, measured in alternating rounds",
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before a probe")
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the server")
    parser.add_argument("--report", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        return serve_probed(args.serve)
    variants = [
        (name, Path(src).resolve())
        for name, src in (item.split("=", 1) for item in args.variants.split(","))
    ]
    build_wsload()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory(prefix="percolert-sockmem-") as scratch_name:
        scratch = Path(scratch_name)
        with elasticsearch(scratch) as es_url:
            env = {**os.environ, "ELASTICSEARCH_URL": es_url, "PERCOLERT_INDEX_PREFIX": PREFIX}
            subprocess.run(
                [sys.executable, "-m", "percolert.cli", "setup", "--recreate"],
                env=env,
                check=True,
                capture_output=True,
            )
            # Two tabs per user, as in the harness; sessions minted here with the servers'
            # secret rather than fetched page by page (without watches: a socket holds none
            # of its user's watches once greeted).
            signer = SessionSigner(SECRET)
            users = [signer.issue()[1] for _ in range((args.sockets + TABS - 1) // TABS)]
            cookies: list[str | None] = [cookie for cookie in users for _ in range(TABS)]
            cookies = cookies[: args.sockets]
            for number in range(args.rounds):
                order = variants if number % 2 == 0 else variants[::-1]
                for name, src in order:
                    result = one_round(
                        src, es_url, scratch, cookies, trace=args.trace, settle_seconds=args.settle
                    )
                    results[name].append(result)
                    print_round(f"round {number + 1} {name}", result)
    print("\nsummary (median of rounds):")
    for name, rounds in results.items():
        kb = statistics.median(r["kb_per_socket"] for r in rounds)
        objects = statistics.median(r["objects_per_socket"] for r in rounds)
        compaction = statistics.median(r["compaction_ms"][1] for r in rounds)
        collect = statistics.median(r["collect_ms"][1] for r in rounds)
        print(
            f"  {name}: {kb} KB/socket (rounds: {[r['kb_per_socket'] for r in rounds]}), "
            f"{objects} tracked objects/socket, at {args.sockets} sockets a full collection "
            f"{collect} ms, a compaction {compaction} ms"
        )
        last = rounds[-1]
        print("    objects per socket by type:", json.dumps(last["objects_by_type"]))
        print("    own bytes per socket by type:", json.dumps(last["bytes_by_type"]))
        for chain, count in last["tasks_after"].items():
            print(f"    {count} tasks in: {chain}")
        for line, size in last.get("bytes_by_line", {}).items():
            print(f"    {size:7d} B/socket  {line}")
    if args.report is not None:
        path = args.report if args.report.is_absolute() else REPORT_DIR / args.report
        path.write_text(json.dumps({"sockets": args.sockets, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
