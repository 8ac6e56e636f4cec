"""The side-by-side report (bench/peer_report.py): delivery CPU per 1,000 alerts is the
alert path for Percolert (alerts on minus off) and Centrifugo's process plus Percolert's
publishing for Centrifugo, and the comparison pairs equal work only."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from bench.harness import Step
from bench.peer_report import (
    comparison,
    delivery_cpu,
    one_node_section,
    reconnect_rows,
    reconnect_table,
    rows,
    two_node_section,
)
from bench.reconnect import Outcome


def step(design: str, rate: float, **fields: object) -> Step:
    values: dict[str, object] = {
        "alert_ms": {"p50": 8.0, "p99": 20.0},
        "fanout_ms": {"p50": 1.0, "p99": 4.0},
        "alerts_expected": 10_000,
        "alerts_delivered": 10_000,
        "wall_seconds": 10.0,
        **fields,
    }
    return Step(design=design, watches=10_000, sockets=1_000, rate=rate, **values)  # type: ignore[arg-type]


def test_percolert_counts_its_alert_path_and_centrifugo_its_process_and_the_publishing() -> None:
    off = step("percolert-alerts-off", 100.0, server_cpu_percent=15.0, alerts_delivered=0)
    ours = step("percolert-per-user", 100.0, server_cpu_percent=25.0)
    theirs = step("centrifugo-per-user", 100.0, server_cpu_percent=20.0, peer_cpu_percent=12.0)
    # 10 % of a core for 10 s is 1,000 ms, over 10,000 alerts: 100 ms per 1,000.
    assert delivery_cpu(ours, off) == {
        "percolert": 100.0,
        "centrifugo": None,
        "total": 100.0,
        "server_all": 250.0,  # searches included
    }
    assert delivery_cpu(theirs, off) == {
        "percolert": 50.0,
        "centrifugo": 120.0,
        "total": 170.0,
        "server_all": 200.0,
    }
    # Without the reference at that rate there is no alert path to state.
    assert delivery_cpu(ours, None)["total"] is None


def test_rows_follow_the_issues_format_and_leave_the_reference_out() -> None:
    steps = [
        step("percolert-alerts-off", 50.0, server_cpu_percent=10.0, alerts_delivered=0),
        step("percolert-per-user", 50.0, server_cpu_percent=14.0, rss_per_idle_socket_kb=25.0),
        step("centrifugo-per-user", 50.0, server_cpu_percent=12.0, peer_cpu_percent=6.0),
    ]
    table = rows(steps)
    assert [(r["design"], r["mode"]) for r in table] == [
        ("percolert", "per-user"),
        ("centrifugo", "per-user"),
    ]
    first = table[0]
    for key in ("instances", "sockets", "watches", "rate", "alerts_expected", "alerts_delivered"):
        assert key in first
    assert first["alert_ms"] == {"p50": 8.0, "p99": 20.0}
    assert first["fanout_ms"] == {"p50": 1.0, "p99": 4.0}
    assert first["cpu_ms_per_1000_alerts"]["total"] == 40.0
    assert first["kb_per_idle_socket"] == 25.0
    [header, _, line] = comparison(table)
    assert "P ÷ C process" in header
    # 40 ms (Percolert) against Centrifugo's 60, and 60 + 20 publishing: 0.67x and 0.5x.
    assert "| 40 / 60 + 20 | 0.67x | 0.50x |" in line


def test_a_design_without_its_peer_at_that_rate_is_not_compared() -> None:
    steps = [
        step("percolert-alerts-off", 50.0, server_cpu_percent=10.0, alerts_delivered=0),
        step("percolert-broadcast", 50.0, server_cpu_percent=30.0),
        step("centrifugo-broadcast", 100.0, server_cpu_percent=12.0, peer_cpu_percent=6.0),
    ]
    assert len(comparison(rows(steps))) == 2  # the header only


def test_turns_are_summed_in_counts_and_medians_elsewhere_each_against_its_own_reference() -> None:
    steps = [
        step("percolert-alerts-off", 50.0, turn=0, server_cpu_percent=10.0, alerts_delivered=0),
        step("percolert-per-user", 50.0, turn=0, server_cpu_percent=14.0, alert_ms={"p99": 20.0}),
        step("percolert-alerts-off", 50.0, turn=1, server_cpu_percent=20.0, alerts_delivered=0),
        step("percolert-per-user", 50.0, turn=1, server_cpu_percent=26.0, alert_ms={"p99": 30.0}),
    ]
    [row] = rows(steps)
    assert row["turns"] == 2
    assert (row["alerts_delivered"], row["alerts_expected"]) == (20_000, 20_000)
    assert row["alert_ms"]["p99"] == 25.0
    # Turn 0: 4 % of a core, 40 ms per 1,000; turn 1: 6 %, 60 ms (not 26 - 10).
    assert row["cpu_ms_per_1000_alerts"]["total"] == 50.0


def test_without_a_reference_at_the_rate_percolert_counts_all_its_cpu_as_a_bound() -> None:
    steps = [
        step("percolert-broadcast", 5.0, server_cpu_percent=10.0),
        step("centrifugo-broadcast", 5.0, server_cpu_percent=2.0, peer_cpu_percent=30.0),
    ]
    [_, _, line] = comparison(rows(steps))
    # All of Percolert's 10 % (100 ms per 1,000) is at most 0.33x Centrifugo's 300.
    assert "| ≤ 100 / 300 + - | ≤ 0.33x | - |" in line


def test_only_the_turns_both_designs_ran_are_compared() -> None:
    steps = [
        step("percolert-broadcast", 25.0, turn=0, alert_ms={"p99": 30.0}),
        step("percolert-broadcast", 25.0, turn=1, alert_ms={"p99": 90.0}),
        step("centrifugo-broadcast", 25.0, turn=1, alert_ms={"p99": 900.0}),
    ]
    ours = next(r for r in rows(steps) if r["design"] == "percolert")
    assert (ours["turns"], ours["alert_ms"]["p99"]) == (1, 90.0)


def test_two_nodes_count_redis_on_both_sides_against_their_own_references() -> None:
    steps = [
        # One Percolert instance with alerts off (Centrifugo's publisher's reference) and two.
        step("percolert-alerts-off", 50.0, server_cpu_percent=10.0, alerts_delivered=0),
        step(
            "percolert-alerts-off", 50.0, instances=2, server_cpu_percent=16.0, alerts_delivered=0
        ),
        step(
            "percolert-per-user",
            50.0,
            instances=2,
            server_cpu_percent=20.0,
            redis_cpu_percent=3.0,
            rss_per_idle_socket_kb=30.0,
        ),
        step(
            "centrifugo-per-user",
            50.0,
            instances=2,
            server_cpu_percent=12.0,
            peer_cpu_percent=6.0,
            redis_cpu_percent=4.0,
        ),
    ]
    ours, theirs = rows(steps)
    assert (ours["instances"], theirs["instances"]) == (2, 2)
    # P: 20 - 16 = 4 % (40 ms per 1,000) plus Redis's 3 % (30 ms).
    assert ours["cpu_ms_per_1000_alerts"] == {
        "percolert": 40.0,
        "centrifugo": None,
        "total": 70.0,
        "server_all": 200.0,
        "redis": 30.0,
    }
    # C: its nodes' 60 ms, Redis's 40 and the one instance's publishing, 12 - 10: 20 ms.
    assert theirs["cpu_ms_per_1000_alerts"]["total"] == 120.0
    assert theirs["redis_cpu_percent"] == 4.0
    assert len(comparison(rows(steps))) == 2  # no pair on one node: the header only
    [header, _, line] = comparison(rows(steps), instances=2)
    assert "P alert path + Redis / C nodes + Redis + P publishing" in header
    # 70 against 60 + 40 = 100 (0.70x), and against 100 + 20 (0.58x).
    assert "| 40 + 30 / 60 + 40 + 20 | 0.70x | 0.58x |" in line


def test_a_run_of_one_node_reports_as_before_and_two_nodes_get_their_own_table() -> None:
    one = [
        step("percolert-alerts-off", 50.0, server_cpu_percent=10.0, alerts_delivered=0),
        step("percolert-per-user", 50.0, server_cpu_percent=14.0),
        step("centrifugo-per-user", 50.0, server_cpu_percent=12.0, peer_cpu_percent=6.0),
    ]
    [row, _] = rows(one)
    assert "redis" not in row["cpu_ms_per_1000_alerts"]
    assert "redis_cpu_percent" not in row
    assert one_node_section(rows(one))[0].startswith("## Percolert (P)")
    assert two_node_section(rows(one)) == []
    two = [replace(s, instances=2) for s in one[1:]]
    assert one_node_section(rows(two)) == []
    assert two_node_section(rows(one + two))[0].startswith("## Two nodes")


def test_reconnect_rows_of_two_nodes_are_apart_and_marked() -> None:
    dropped = {"reconnect": Outcome(share=0.1, away_s=1.5, dropped=50)}
    steps = [
        step("percolert-per-user", 50.0, **dropped),
        step("percolert-per-user", 50.0, instances=2, **dropped),
    ]
    one, two = reconnect_rows(steps)
    assert "instances" not in one
    assert two["instances"] == 2
    assert "| percolert-per-user (2 nodes) |" in reconnect_table([two], {})[-1]


def test_a_saved_step_reads_back_with_its_reconnect_outcome_in_either_form() -> None:
    """peer-results.json's steps as written now (`reconnect` an object) and as written
    before (flat `reconnect_*` fields): `peer_report.py` rewrites a report from either."""
    outcome = Outcome(
        share=0.1,
        away_s=1.5,
        dropped=50,
        resumed=50,
        recovered=48,
        complete=47,
        expected_away=300,
        received_after=297,
        missed=3,
        twice=1,
        replayed=120,
        replayed_alert_ms={"p50": 900.0, "p99": 1500.0},
        gap_ms={"p50": 1900.0, "p99": 2300.0},
    )
    dropped = step("percolert-per-user", 50.0, reconnect=outcome)
    assert Step.from_json(json.loads(json.dumps(asdict(dropped)))) == dropped
    plain = step("percolert-per-user", 100.0)
    assert Step.from_json(json.loads(json.dumps(asdict(plain)))) == plain
    older = {name: value for name, value in asdict(plain).items() if name != "reconnect"}
    older |= {
        "reconnect_share": 0.1,
        "reconnect_away_s": 1.5,
        "reconnect_dropped": 50,
        "reconnect_resumed": 50,
        "reconnect_recovered": 48,
        "reconnect_complete": 47,
        "reconnect_expected_away": 300,
        "reconnect_received_after": 297,
        "reconnect_missed": 3,
        "reconnect_twice": 1,
        "reconnect_replayed": 120,
        "replayed_alert_ms": {"p50": 900.0, "p99": 1500.0},
        "reconnect_gap_ms": {"p50": 1900.0, "p99": 2300.0},
    }
    assert Step.from_json(older) == replace(plain, reconnect=outcome)
    rate_step = {**older, "reconnect_share": 0.0, "reconnect_dropped": 0}
    assert Step.from_json(rate_step).reconnect is None
