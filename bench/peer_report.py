"""The side-by-side report of `bench/harness.py --peer centrifugo`: Percolert's own delivery
and Centrifugo's, behind the same percolation front end, at the same watches, sockets and
rates (docs/benchmarks/peer-results.json and .md, peer-latency.png, peer-cpu.png).

CPU per 1,000 alerts is the delivery's: for Percolert the alert path, its server's CPU with
alerts on minus with alerts off (`percolert-alerts-off`, same configuration and rate); for
Centrifugo its own process, and beside it Percolert's cost of publishing to it (the same
difference, its server with Centrifugo delivery minus alerts off). Both are divided by the
alerts delivered in the step.

On two nodes (`--peer-nodes 2`, bench/nodes.py) the delivery's CPU counts the Redis the nodes
share as well: for Percolert its two instances with alerts on minus its two instances with
alerts off, plus Redis; for Centrifugo its two nodes plus Redis, and beside it the one
Percolert instance's cost of publishing (against one instance with alerts off). Their rows
have `instances: 2` and a table of their own.

Reconnect recovery comes from each design's reconnect step (bench/reconnect.py): the sockets
dropped mid-step and resumed, what they missed and what came twice, summed over the turns.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cpu_budget import budget_note, throttled_note
from bench.reconnect import Outcome
from bench.rig import REPORT_DIR

if TYPE_CHECKING:
    from bench.harness import Step

# The pairs compared: Percolert's design, and Centrifugo's doing the same work.
PAIRS = [
    ("percolert-per-user", "centrifugo-per-user"),
    ("percolert-broadcast", "centrifugo-broadcast"),
]
REFERENCE = "percolert-alerts-off"


def _per_1000(cpu_percent: float, step: Step) -> float | None:
    """CPU milliseconds per 1,000 alerts delivered, from a CPU share over the step."""
    if not step.alerts_delivered or not step.wall_seconds:
        return None
    cpu_ms = 10 * cpu_percent * step.wall_seconds  # percent of a core -> ms over the step
    return round(1000 * cpu_ms / step.alerts_delivered, 1)


CPU_KEYS = ("percolert", "centrifugo", "total", "server_all")
# Two nodes: the shared Redis's too.
SHARED_CPU_KEYS = (*CPU_KEYS, "redis")


def percolert_instances(step: Step) -> int:
    """How many Percolert instances ran the step: Centrifugo's nodes are fed by one."""
    return 1 if step.design.startswith("centrifugo") else step.instances


def delivery_cpu(step: Step, off: Step | None) -> dict[str, float | None]:
    """The step's CPU per 1,000 alerts: `percolert` (Percolert's server with alerts on minus
    alerts off), `centrifugo` (its process) and `total` (what the delivery cost, both);
    `server_all`, all of Percolert's server's (searches included: an upper bound of its
    share where no alerts-off step ran at that rate). On two nodes the processes of each
    role are summed, `redis` is the shared Redis's and `total` includes it."""
    publishing = None if off is None else step.server_cpu_percent - off.server_cpu_percent
    own = None if publishing is None else _per_1000(max(0.0, publishing), step)
    server_all = _per_1000(step.server_cpu_percent, step)
    shared = step.instances > 1
    redis = _per_1000(step.redis_cpu_percent, step) if shared else None
    cpu: dict[str, float | None]
    if step.design.startswith("centrifugo"):
        peer = _per_1000(step.peer_cpu_percent, step)
        total = None if own is None or peer is None else round(own + peer + (redis or 0.0), 1)
        cpu = {"percolert": own, "centrifugo": peer, "total": total, "server_all": server_all}
    else:
        total = own if own is None or not shared else round(own + (redis or 0.0), 1)
        cpu = {"percolert": own, "centrifugo": None, "total": total, "server_all": server_all}
    if shared:
        cpu["redis"] = redis
    return cpu


def _median(values: Sequence[float | None]) -> float | None:
    known = sorted(value for value in values if value is not None)
    if not known:
        return None
    middle = len(known) // 2
    found = known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2
    return round(found, 2)


def _quantiles(taken: Sequence[object], name: str) -> dict[str, float | None]:
    """The medians of the steps' p50 and p99 of the percentiles `name` (alert_ms, ...)."""
    return {k: _median([getattr(s, name).get(k) for s in taken]) for k in ("p50", "p99")}


def rows(steps: list[Step]) -> list[dict[str, Any]]:
    """One row per compared design, configuration and rate, in the issue's format: counts
    summed over the turns, every other figure the median of the turns' (CPU per alert each
    turn against that turn's alerts-off step)."""
    steps = [step for step in steps if step.reconnect is None]  # reconnect_rows' own
    # The reference of a step: alerts off on as many Percolert instances, in its turn.
    off = {
        (s.turn, s.instances, s.watches, s.sockets, s.rate): s
        for s in steps
        if s.design == REFERENCE
    }
    ran = {(s.design, s.instances, s.turn, s.watches, s.sockets, s.rate) for s in steps}
    ran_any = {(s.design, s.instances, s.watches, s.sockets, s.rate) for s in steps}
    peer_of = {ours: theirs for ours, theirs in PAIRS} | {theirs: ours for ours, theirs in PAIRS}
    turns: dict[tuple[str, int, int, int, float], list[Step]] = defaultdict(list)
    for step in steps:
        if step.design == REFERENCE:
            continue
        # Where its peer ran the same step, only the turns in which both did (a design stops
        # climbing after a step far past the bar: the two may differ).
        peer = peer_of.get(step.design, "")
        where = (step.watches, step.sockets, step.rate)
        if (peer, step.instances, *where) in ran_any and (
            peer,
            step.instances,
            step.turn,
            *where,
        ) not in ran:
            continue
        turns[(step.design, step.instances, *where)].append(step)
    made = []
    for (design, instances, watches, sockets, rate), taken in turns.items():
        cpus = [
            delivery_cpu(s, off.get((s.turn, percolert_instances(s), s.watches, s.sockets, s.rate)))
            for s in taken
        ]
        keys = SHARED_CPU_KEYS if instances > 1 else CPU_KEYS

        def middle(read: Callable[[Step], float | None], of: list[Step] = taken) -> float | None:
            return _median([read(s) for s in of])

        shared = {"redis_cpu_percent": middle(lambda s: s.redis_cpu_percent)}
        made.append(
            {
                "design": design.split("-")[0],
                "mode": design.split("-", 1)[1],
                "instances": instances,
                "sockets": sockets,
                "watches": watches,
                "rate": rate,
                "turns": len(taken),
                "alerts_expected": sum(s.alerts_expected for s in taken),
                "alerts_delivered": sum(s.alerts_delivered for s in taken),
                "alert_ms": _quantiles(taken, "alert_ms"),
                "fanout_ms": _quantiles(taken, "fanout_ms"),
                "dispatch_ms": _quantiles(taken, "dispatch_ms"),
                "cpu_ms_per_1000_alerts": {k: _median([cpu[k] for cpu in cpus]) for k in keys},
                "kb_per_idle_socket": middle(lambda s: s.rss_per_idle_socket_kb),
                "server_cpu_percent": middle(lambda s: s.server_cpu_percent),
                "peer_cpu_percent": middle(lambda s: s.peer_cpu_percent),
                "client_cpu_percent": middle(lambda s: s.client_cpu_percent),
                "es_cpu_percent": middle(lambda s: s.es_cpu_percent),
                **(shared if instances > 1 else {}),
                "search_errors": sum(s.search_errors for s in taken),
                "sockets_closed": sum(s.sockets_closed for s in taken),
            }
        )
    return made


def reconnect_rows(steps: list[Step]) -> list[dict[str, Any]]:
    """One row per design and configuration from its reconnect steps: counts summed over
    the turns, latencies the median of the turns'."""
    turns: dict[tuple[str, int, int, int], list[Outcome]] = defaultdict(list)
    rates: dict[tuple[str, int, int, int], list[float]] = defaultdict(list)
    for step in steps:
        if step.reconnect is not None:
            key = (step.design, step.instances, step.watches, step.sockets)
            turns[key].append(step.reconnect)
            rates[key].append(step.rate)
    made = []
    for (design, instances, watches, sockets), taken in turns.items():
        said = [s.recovered for s in taken if s.recovered is not None]
        made.append(
            {
                "design": design.split("-")[0],
                "mode": design.split("-", 1)[1],
                # Marked on two nodes only: a one-node row is as it always was.
                **({"instances": instances} if instances > 1 else {}),
                "watches": watches,
                "sockets": sockets,
                "rate": _median(rates[(design, instances, watches, sockets)]),
                "turns": len(taken),
                "share": taken[0].share,
                "away_s": taken[0].away_s,
                "dropped": sum(s.dropped for s in taken),
                "resumed": sum(s.resumed for s in taken),
                "recovered": sum(said) if said else None,
                "complete": sum(s.complete for s in taken),
                "expected_away": sum(s.expected_away for s in taken),
                "received_after": sum(s.received_after for s in taken),
                "missed": sum(s.missed for s in taken),
                "twice": sum(s.twice for s in taken),
                "replayed": sum(s.replayed for s in taken),
                "replayed_alert_ms": _quantiles(taken, "replayed_alert_ms"),
                "gap_ms": _quantiles(taken, "gap_ms"),
            }
        )
    return made


def reconnect_table(table: list[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    """The reconnect rows as markdown, after what they measure (`plan`: the run's wsload
    `reconnect` spec), or why there are none."""
    if not table:
        return ["No reconnect step in this run (it predates them, or `--reconnect-share 0`)."]
    lines = [
        "After its rates, each design ran one more step in which a share of its sockets "
        f"({plan.get('share', '?')}) was closed abruptly (no close frame) "
        f"{plan.get('delay_s', '?')} s into the step, spread over {plan.get('spread_s', '?')} s, "
        f"and stayed away {plan.get('away_s', '?')} s while alerts kept coming. Each then "
        "resumed: Percolert's with `/ws?after=` the last seq it had seen, Centrifugo's with "
        "`recover` from the last offset and epoch. For those sockets, against the step's "
        "searches that reach them:",
        "",
        "- *expected while away*: what a socket was owed when greeted again (searches sent "
        "before then whose alert it had not received before the drop);",
        "- *received after resuming*: how many of those came on its new connection, replayed "
        "or live;",
        "- *missed*: alerts it never received, before the drop or after;",
        "- *twice*: alerts that arrived more than once on one socket (nothing is deduplicated);",
        "- *server said recovered*: `recovered: true` (Centrifugo's connect reply, Percolert's "
        "hello); *missed nothing*: resumed sockets that missed nothing;",
        "- *replayed alert*: from sending the search to receiving the replayed alert; *drop → "
        "greeted again* includes the time away.",
        "",
        "Counts are summed over the turns, times are the median of the turns'.",
        "",
        "| design | watches | sockets | rate/s | dropped | resumed | server said recovered "
        "| missed nothing | expected while away | received after resuming | missed | twice "
        "| replayed | replayed alert p99 ms | drop → greeted again p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['design']}-{r['mode']}{_nodes(r.get('instances', 1))} | {r['watches']:,} "
            f"| {r['sockets']:,} | {_cell(r['rate'])} | {r['dropped']:,} | {r['resumed']:,} "
            f"| {_cell(r['recovered'])} "
            f"| {r['complete']:,} | {r['expected_away']:,} | {r['received_after']:,} "
            f"| {r['missed']:,} | {r['twice']:,} | {r['replayed']:,} "
            f"| {_cell(r['replayed_alert_ms']['p99'])} "
            f"| {_cell(r['gap_ms']['p50'])} / {_cell(r['gap_ms']['p99'])} |"
        )
    return lines


def _nodes(instances: int) -> str:
    """A design's mark in a table: none on one node."""
    return "" if instances == 1 else f" ({instances} nodes)"


def _cell(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}" if isinstance(value, float) else str(value)


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or not theirs:
        return "-"
    return f"{ours / theirs:.2f}x"


def _sum(*values: float | None) -> float | None:
    return None if any(value is None for value in values) else round(sum(filter(None, values)), 1)


def comparison(table: list[dict[str, Any]], instances: int = 1) -> list[str]:
    """Percolert ÷ Centrifugo per configuration and rate: delivery CPU per alert (against
    Centrifugo's process alone, the issue's figure, and against it plus Percolert's
    publishing), fan-out p99, alert p99 and memory per idle socket. Where no alerts-off step
    ran at the rate, Percolert's figure is all of its server's CPU, marked ≤.

    The rows of `instances` nodes only. On two, CPU counts the shared Redis on both sides:
    Percolert's alert path (its two instances) plus Redis against Centrifugo's two nodes
    plus Redis, and against that plus Percolert's publishing."""
    shared = instances > 1
    by_key = {
        (r["design"], r["mode"], r["watches"], r["sockets"], r["rate"]): r
        for r in table
        if r.get("instances", 1) == instances
    }
    lines = [
        (
            "| work | watches | sockets | rate/s | delivered, P / C | CPU ms per 1,000 alerts: "
            "P alert path + Redis / C nodes + Redis + P publishing | P ÷ (C + Redis) "
            "| P ÷ (C + Redis + publishing) | fan-out p99 ms, P / C | P ÷ C "
            "| alert p99 ms, P / C | KB per idle socket, P / C |"
            if shared
            else "| work | watches | sockets | rate/s | delivered, P / C | CPU ms per 1,000 "
            "alerts: P alert path / C process + P publishing | P ÷ C process "
            "| P ÷ (C + publishing) | fan-out p99 ms, P / C | P ÷ C | alert p99 ms, P / C "
            "| KB per idle socket, P / C |"
        ),
        "|---|---:|---:|---:|---|---|---:|---:|---|---:|---|---|",
    ]
    for ours, _theirs in PAIRS:
        mode = ours.split("-", 1)[1]
        keys = sorted({k[2:] for k in by_key if k[:2] == ("percolert", mode)})
        for watches, sockets, rate in keys:
            p = by_key.get(("percolert", mode, watches, sockets, rate))
            c = by_key.get(("centrifugo", mode, watches, sockets, rate))
            if p is None or c is None:
                continue
            p_cpu, c_cpu = p["cpu_ms_per_1000_alerts"], c["cpu_ms_per_1000_alerts"]
            ours_cpu, bound = p_cpu["total"], ""
            if ours_cpu is None:
                ours_cpu, bound = p_cpu["server_all"], "≤ "
                if shared:
                    ours_cpu = _sum(ours_cpu, p_cpu["redis"])
            theirs = c_cpu["centrifugo"]
            spent = f"{bound}{_cell(ours_cpu)} / {_cell(theirs)} + {_cell(c_cpu['percolert'])}"
            if shared:
                theirs = _sum(theirs, c_cpu["redis"])
                path = p_cpu["server_all"] if bound else p_cpu["percolert"]
                spent = (
                    f"{bound}{_cell(path)} + {_cell(p_cpu['redis'])} / "
                    f"{_cell(c_cpu['centrifugo'])} + {_cell(c_cpu['redis'])} + "
                    f"{_cell(c_cpu['percolert'])}"
                )
            lines.append(
                f"| {mode} | {watches:,} | {sockets:,} | {rate:g} "
                f"| {p['alerts_delivered']:,}/{p['alerts_expected']:,} / "
                f"{c['alerts_delivered']:,}/{c['alerts_expected']:,} "
                f"| {spent} "
                f"| {bound}{_ratio(ours_cpu, theirs)} "
                f"| {_ratio(ours_cpu, c_cpu['total']) if not bound else '-'} "
                f"| {_cell(p['fanout_ms']['p99'])} / {_cell(c['fanout_ms']['p99'])} "
                f"| {_ratio(p['fanout_ms']['p99'], c['fanout_ms']['p99'])} "
                f"| {_cell(p['alert_ms']['p99'])} / {_cell(c['alert_ms']['p99'])} "
                f"| {_cell(p['kb_per_idle_socket'])} / {_cell(c['kb_per_idle_socket'])} |"
            )
    return lines


def one_node_section(table: list[dict[str, Any]]) -> list[str]:
    """The one-node comparison; left out of a run of two nodes only."""
    if table and all(row.get("instances", 1) != 1 for row in table):
        return []
    return ["## Percolert (P) ÷ Centrifugo (C), equal work", "", *comparison(table), ""]


def two_node_section(table: list[dict[str, Any]]) -> list[str]:
    """The two-node comparison, and what it counts; none without two-node rows."""
    if all(row.get("instances", 1) != 2 for row in table):
        return []
    return [
        "## Two nodes sharing a Redis: Percolert (P) ÷ Centrifugo (C), equal work",
        "",
        "The same users, watches, sockets and searches as on one node. P: two Percolert "
        "instances on its Redis broker, the searches alternating between them. C: two "
        "Centrifugo nodes on its Redis engine, fed by one Percolert instance through the "
        "first node's server API (Percolert's Centrifugo delivery takes no Redis broker). "
        "Socket k is on node k mod 2, so each user's two tabs are on both nodes, and each "
        "node's sockets have a load client of their own. Each design run has a fresh "
        "`redis-server` of its own.",
        "",
        "- **Delivery CPU per 1,000 alerts** counts Redis's CPU on both sides. P: its two "
        "instances with alerts on minus its two instances with alerts off, plus Redis. C: "
        "its two nodes plus Redis; beside it, the Percolert instance's cost of publishing "
        "(with Centrifugo delivery minus one instance with alerts off).",
        "- **KB per idle socket**: the RSS growth of both nodes (Redis not counted).",
        "- In the step table, a two-node step's CPU cell has a fifth figure: Redis.",
        "",
        *comparison(table, instances=2),
        "",
    ]


def write_peer_report(steps: list[Step], run: dict[str, Any]) -> None:
    """peer-results.json ({"run", "rows", "steps"}), peer-results.md and the plots."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    table = rows(steps)
    reconnects = reconnect_rows(steps)
    (REPORT_DIR / "peer-results.json").write_text(
        json.dumps(
            {
                "run": run,
                "rows": table,
                "reconnect": reconnects,
                "steps": [asdict(s) for s in steps],
            },
            indent=2,
        )
        + "\n"
    )
    lines = [
        "# Side by side with Centrifugo",
        "",
        f"Machine: {os.cpu_count()} cores shared by everything: the Elasticsearch dev node, "
        "Percolert, Centrifugo v6.9.1 (its designs only), the Go load client (tools/wsload) "
        "and the orchestrator. Generated by `nox -s bench -- --peer centrifugo` "
        "(bench/harness.py, bench/peer_report.py).",
        "",
        "Both designs have the same front end: the same users, watches and searches; each "
        "search is answered and percolated by Percolert. In `percolert` designs Percolert's "
        "own hub writes the alerts to its sockets; in `centrifugo` designs Percolert publishes "
        "each recipient's alert to the recipient's personal channel on Centrifugo (history "
        "and recovery on), which holds the sockets (the load client speaks its JSON "
        "protocol). Per-user: each search reaches the subscribers watching its word. "
        "Broadcast: one default watch reaching every socket.",
        "",
        "- **Alert latency**: from sending the search to each socket receiving its alert.",
        "- **Fan-out**: from the alert's dispatch (its `seq`, stamped when the broker numbers "
        "it) to its receipt.",
        "- **Delivery CPU per 1,000 alerts**, for Percolert: its server with alerts on minus "
        "with alerts off (same configuration and rate). For Centrifugo: its process, plus "
        "Percolert's cost of publishing, counted the same way.",
        "- **KB per idle socket**: the growth of the RSS of the process holding the sockets, "
        "from none to all connected and idle.",
        "",
        f"Run: `{' '.join(['nox -s bench --', *run.get('argv', [])])}`, "
        f"{run.get('minutes', '?')} minutes; load average {run.get('load_average_start', '?')} "
        f"at the start, {run.get('load_average_end', '?')} at the end; {run.get('turns', 1)} "
        f"turns of {run.get('seconds_per_step', '?')} s steps. In each configuration the "
        "designs ran one after another (each over its rates), and again in the next turn; "
        "figures are the median of the turns', counts their sum"
        f"{budget_note(run.get('client_cpus'))}.",
        "",
        *one_node_section(table),
        *two_node_section(table),
        "## Reconnect recovery",
        "",
        *reconnect_table(reconnects, run.get("reconnect") or {}),
        "",
        "## Every step",
        "",
        "| turn | design | watches | sockets | rate/s | delivered | alert p50 / p99 ms "
        "| dispatch p99 | fan-out p50 / p99 ms | CPU %: Percolert / Centrifugo / client / ES "
        "| load |",
        "|---:|---|---:|---:|---:|---|---|---:|---|---|---:|",
    ]
    for step in steps:
        # A two-node step's CPU cell ends with the Redis's.
        redis = f" / {step.redis_cpu_percent:g}" if step.instances > 1 else ""
        lines.append(
            f"| {step.turn} | {step.design}{_nodes(step.instances)}"
            f"{' (reconnect)' if step.reconnect is not None else ''} "
            f"| {step.watches:,} | {step.sockets:,} | {step.rate:g} "
            f"| {step.alerts_delivered:,}/{step.alerts_expected:,} "
            f"| {_cell(step.alert_ms.get('p50'))} / {_cell(step.alert_ms.get('p99'))} "
            f"| {_cell(step.dispatch_ms.get('p99'))} "
            f"| {_cell(step.fanout_ms.get('p50'))} / {_cell(step.fanout_ms.get('p99'))} "
            f"| {step.server_cpu_percent:g} / {step.peer_cpu_percent:g} / "
            f"{step.client_cpu_percent:g}{throttled_note(step.client_throttled_ms)} / "
            f"{step.es_cpu_percent:g}{redis} "
            f"| {step.load_average:g} |"
        )
    lines += ["", "![latency](peer-latency.png) ![cpu](peer-cpu.png)", ""]
    (REPORT_DIR / "peer-results.md").write_text("\n".join(lines))
    plot(table)


def plot(table: list[dict[str, Any]]) -> None:
    """Alert p99 against the rate, and delivery CPU per 1,000 alerts against the rate, a
    line per design and configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in table:
        nodes = _nodes(row.get("instances", 1))
        key = f"{row['design']}-{row['mode']}{nodes} W={row['watches']} S={row['sockets']}"
        series[key].append(row)
    for name, path, label in [
        ("peer-latency.png", ("alert_ms", "p99"), "p99 search-to-alert latency (ms)"),
        ("peer-cpu.png", ("cpu_ms_per_1000_alerts", "total"), "delivery CPU ms per 1,000 alerts"),
    ]:
        figure, axis = plt.subplots(figsize=(8, 5))
        for key, points in sorted(series.items()):
            shown = [(p["rate"], p[path[0]][path[1]]) for p in points]
            shown = [(rate, value) for rate, value in shown if value is not None]
            if shown:
                axis.plot(*zip(*shown, strict=True), marker="o", label=key)
        axis.set_xlabel("searches per second")
        axis.set_ylabel(label)
        axis.set_yscale("log")
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(REPORT_DIR / name, dpi=120)
        plt.close(figure)


def main() -> None:
    """Write the report again from peer-results.json (after a change to the report only)."""
    import argparse

    from bench.harness import Step

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", nargs="?", default=str(REPORT_DIR / "peer-results.json"))
    args = parser.parse_args()
    saved = json.loads(Path(args.json).read_text())
    write_peer_report([Step.from_json(step) for step in saved["steps"]], saved["run"])
    print((REPORT_DIR / "peer-results.md").read_text())


if __name__ == "__main__":
    main()
