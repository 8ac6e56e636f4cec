"""A reconnect storm on two instances: how long resuming sockets wait for their greetings.

The two-node run beside Centrifugo (issue 26) showed Percolert's resumed sockets greeted
again 7.9 s (5k sockets) and 10.7 s (10k) after their drop, Centrifugo's after 1.5 s: each
greeting reads the user's watches, recent alerts, replay and product feed from
Elasticsearch. This measures that storm alone, in alternating rounds of the source trees
given (`--variants`), so that a change to the greeting is measured side by side.

Each round of a variant: two instances on a fresh Redis (bench/nodes.py), USERS users with
one watch word each and two tabs (socket k on instance k mod 2), searches at `--rate` for
`--seconds` (alternating between the instances), and `--share` of the sockets dropped at
once 30 % into it, each resuming with `/ws?after=` after `--away` seconds. Reported per
round: drop -> greeted again (p50, p99), the sockets resumed, and what they missed or got
twice (bench/reconnect.py).

    PYTHONPATH=. .nox/bench/bin/python bench/greeting_storm.py
    PYTHONPATH=. .nox/bench/bin/python bench/greeting_storm.py \\
        --variants before=/tmp/before/src,after=src --rounds 3

Uses ELASTICSEARCH_URL (its own index prefix, set up afresh), else a fresh dev node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import reconnect as reconnection
from bench.harness import prepare_catalog
from bench.nodes import deploy
from bench.rig import (
    PREFIX,
    REPORT_DIR,
    ROOT,
    build_wsload,
    cpu_seconds,
    drive,
    make_users,
    node_process,
    percentiles,
)
from bench.socket_memory import elasticsearch
from percolert.core.settings import Settings

DESIGN = "percolert-per-user"
TABS = 2


def one_round(
    src: Path,
    es_url: str,
    scratch: Path,
    cookies: list[str | None],
    socket_words: list[str | None],
    args: argparse.Namespace,
    tag: str,
) -> dict[str, Any]:
    """One variant's storm: its instances started afresh, the sockets opened, the round
    run under searches; the drop-to-greeting times and the recovery counts."""
    plan = reconnection.Plan(share=args.share, away_s=args.away)
    spec = {**plan.spec(args.seconds), "spread_s": args.spread}
    deployment = deploy(
        DESIGN,
        2,
        es_url,
        scratch,
        extra_env={"PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])},
    )
    try:
        sockets = deployment.open_sockets(cookies, scratch, spec)
        try:
            first, *rest = deployment.servers
            node = node_process(es_url)
            roles = {
                "servers": [server.ps for server in deployment.servers],
                "elasticsearch": [node] if node is not None else [],
                "clients": sockets.processes,
                "redis": [deployment.redis_process] if deployment.redis_process else [],
            }
            cpu_before = {role: sum(map(cpu_seconds, each)) for role, each in roles.items()}
            start = sockets.drop_some()
            sent, words, _, errors = drive(first, args.rate, args.seconds, tag, scratch, also=rest)
            if not sockets.await_round(start, 120.0):
                print("  the round did not finish within 120 s", flush=True)
            # The same searches and the same drops in every round: the CPU of the whole step
            # compares the variants at equal work (the storm's share is the difference).
            cpu = {
                role: round(sum(map(cpu_seconds, each)) - cpu_before[role], 2)
                for role, each in roles.items()
            }

            def expected(socket: int) -> set[str]:
                return {rid for rid in sent if words[rid] == socket_words[socket]}

            # The last alerts of the step land before the record is read.
            time.sleep(2.0)
            summed = reconnection.recovery(sockets.dropped(), expected, sent)
        finally:
            sockets.stop()
    finally:
        deployment.stop()
    gap = percentiles(summed.away_ms)
    return {
        "dropped": summed.dropped,
        "resumed": summed.resumed,
        "missed": summed.missed,
        "twice": summed.twice,
        "expected_away": summed.expected_away,
        "received_after": summed.received_after,
        "search_errors": errors,
        "gap_ms": gap,
        "cpu_seconds": cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_500, help="two sockets each")
    parser.add_argument("--share", type=float, default=0.2, help="of the sockets dropped")
    parser.add_argument("--away", type=float, default=1.5, help="seconds each stays away")
    parser.add_argument("--spread", type=float, default=0.2, help="seconds the drops span")
    parser.add_argument("--rate", type=float, default=50.0, help="searches a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=f"here={ROOT / 'src'}",
        help="comma-separated NAME=SRC_DIR, measured in alternating rounds",
    )
    parser.add_argument("--report", type=Path, default=None, help="write the JSON here")
    parser.add_argument(
        "--scratch", type=Path, default=None, help="keep the servers' logs here (else deleted)"
    )
    args = parser.parse_args()
    variants = [
        (name, Path(src).resolve())
        for name, src in (item.split("=", 1) for item in args.variants.split(","))
    ]
    build_wsload()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    with contextlib.ExitStack() as stack:
        if args.scratch is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="greetings-")))
        else:
            scratch = args.scratch.resolve()
            scratch.mkdir(parents=True, exist_ok=True)
        with elasticsearch(scratch) as es_url:
            prepare_catalog(es_url, recreate=True)
            # The users and their watches, once: every round's instances share the state
            # directory (its session secret) and the indices.
            setup = deploy(DESIGN, 1, es_url, scratch)
            try:
                settings = Settings(
                    elasticsearch_url=es_url, index_prefix=PREFIX, elasticsearch_timeout=120.0
                )
                users = asyncio.run(make_users(setup.servers[0].url, args.users, DESIGN, settings))
                # Elasticsearch warmed up, and the alert log holding history to greet with.
                drive(setup.servers[0], args.rate, 10.0, "warm", scratch)
            finally:
                setup.stop()
            cookies = [cookie for cookie, _ in users for _ in range(TABS)]
            socket_words = [word for _, word in users for _ in range(TABS)]
            for number in range(args.rounds):
                order = variants if number % 2 == 0 else variants[::-1]
                for name, src in order:
                    result = one_round(
                        src, es_url, scratch, cookies, socket_words, args, f"g{number}{name[:3]}"
                    )
                    results[name].append(result)
                    print(f"round {number + 1} {name}: {json.dumps(result)}", flush=True)
    print(
        f"\n{len(cookies)} sockets on two instances, {args.share:.0%} dropped, "
        f"{args.rate:g} searches/s; drop -> greeted again, median of rounds:"
    )
    for name, rounds in results.items():
        p50 = statistics.median(r["gap_ms"].get("p50", float("nan")) for r in rounds)
        p99 = statistics.median(r["gap_ms"].get("p99", float("nan")) for r in rounds)
        cpu = {
            role: statistics.median(r["cpu_seconds"][role] for r in rounds)
            for role in rounds[0]["cpu_seconds"]
        }
        print(
            f"  {name}: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
            f"(rounds p50: {[r['gap_ms'].get('p50') for r in rounds]}); "
            f"missed {sum(r['missed'] for r in rounds)}, twice {sum(r['twice'] for r in rounds)}; "
            f"CPU seconds of the step: {json.dumps(cpu)}"
        )
    if args.report is not None:
        path = args.report if args.report.is_absolute() else REPORT_DIR / args.report
        saved = {"args": {**vars(args), "report": str(path)}, "results": results}
        path.write_text(json.dumps(saved, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
