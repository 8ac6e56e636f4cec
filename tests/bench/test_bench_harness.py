"""The search-to-alert harness (bench/harness.py) at 1M watches and 10k sockets: its plan
puts a 100k reference before a bigger configuration, its load client paces the connect
storm and reports the greetings, and its headline states each goal of issue 14."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench import rig
from bench.harness import Run, Step, headline, peer_nodes, peer_schedule, plan_runs
from bench.rig import Subscribers, make_users
from percolert.core.settings import Settings
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.conftest import SAMPLE_CATALOG, prepare_indices
from tests.servers import run_server
from tests.waiting import wait_until_sync

DESIGNS = [
    "percolert-per-user",
    "percolert-alerts-off",
    "percolert-broadcast",
    "baseline-broadcast",
]


def test_a_million_watches_run_after_a_reference_at_100k_with_the_same_sockets() -> None:
    plan = plan_runs(
        [(1_000_000, 10_000)],
        DESIGNS,
        [2.0, 5.0, 200.0],
        big_rates=[25.0, 50.0, 100.0],
        reference=100_000,
        reference_rates=[50.0, 100.0],
    )
    assert plan[0] == Run(
        100_000, 10_000, ["percolert-per-user"], {"percolert-per-user": [50.0, 100.0]}, True
    )
    assert (plan[1].watches, plan[1].sockets, plan[1].reference) == (1_000_000, 10_000, False)
    # Broadcasts to 10k sockets saturate long before per-user searches do.
    assert plan[1].rates["percolert-broadcast"] == [2.0, 5.0, 10.0]
    assert plan[1].rates["baseline-broadcast"] == [2.0, 5.0, 10.0]
    assert plan[1].rates["percolert-per-user"] == [25.0, 50.0, 100.0]
    assert plan[1].rates["percolert-alerts-off"] == [25.0, 50.0, 100.0]


def test_configurations_up_to_the_reference_run_as_given() -> None:
    configurations = [(10_000, 1_000), (100_000, 5_000)]
    plan = plan_runs(configurations, DESIGNS, [10.0, 50.0], reference=100_000)
    assert [(run.watches, run.sockets, run.reference) for run in plan] == [
        (10_000, 1_000, False),
        (100_000, 5_000, False),
    ]
    assert all(run.rates[design] == [10.0, 50.0] for run in plan for design in DESIGNS)


def step(design: str, watches: int, rate: float, **fields: object) -> Step:
    values: dict[str, object] = {
        "alert_ms": {"p50": 5.0, "p90": 9.0, "p99": 40.0, "max": 60.0},
        "search_ms": {"p50": 3.0, "p90": 4.0, "p99": 9.0, "max": 12.0},
        "alerts_expected": 1000,
        "alerts_delivered": 1000,
        "rss_no_sockets_mb": 100.0,
        "rss_idle_sockets_mb": 250.0,
        "rss_per_idle_socket_kb": 15.36,
        **fields,
    }
    return Step(design=design, watches=watches, sockets=10_000, rate=rate, **values)  # type: ignore[arg-type]


def test_the_headline_states_each_goal_with_the_reference_beside() -> None:
    steps = [
        step(
            "percolert-per-user",
            100_000,
            100.0,
            es_watches_ms_per_search=2.0,
            percolate_ms_per_batch=3.0,
        ),
        step(
            "percolert-per-user",
            1_000_000,
            100.0,
            es_watches_ms_per_search=5.0,
            percolate_ms_per_batch=4.5,
            es_old_gcs=1,
            es_heap_used_mb=900.0,
        ),
        step(
            "percolert-alerts-off",
            1_000_000,
            100.0,
            search_ms={"p50": 1.8, "p90": 3.0, "p99": 8.0, "max": 9.0},
        ),
    ]
    loads = [
        {
            "watches_from": 100_000,
            "watches_to": 1_000_000,
            "seconds": 60.0,
            "watches_per_s": 15_000,
            "reported_watches_per_s": 16_500.5,
            "es_heap_used_mb": 700.0,
            "es_heap_max_mb": 2048.0,
            "es_old_gcs": 0,
        }
    ]
    text = "\n".join(headline(steps, [(1_000_000, 10_000)], {"es_heap": "2g"}, loads))
    assert "1M watches / 10,000 sockets" in text
    assert "100k watches / 10,000 sockets" in text
    lines = text.splitlines()
    rate = next(line for line in lines if "highest rate sustained" in line)
    assert "| 100/s | 100/s |" in rate
    es_cost = next(line for line in lines if "ES ms per search" in line)
    assert "(ratio 2.50x)" in es_cost
    assert "| 5.00 ms | 2.00 ms |" in es_cost
    assert "(ratio 1.50x)" in next(line for line in lines if "wall ms per batch" in line)
    on_off = next(line for line in lines if "alerts on - off" in line)
    assert "+1.20 ms (3 vs 1.8)" in on_off
    assert "15.36 KB" in next(line for line in lines if "RSS per idle socket" in line)
    heap = next(line for line in lines if "Elasticsearch heap 2g" in line)
    assert "1 of 2 steps with old GCs" in heap
    assert "16,500.5/s" in next(line for line in lines if "loading watches" in line)


@dataclass
class Served:
    """A server of the test's own (in this process), as the subscriber sockets see it."""

    url: str
    name: str = "test"
    design: str = "percolert-per-user"

    def tail_of_log(self, lines: int = 30) -> str:
        return ""


def test_the_load_client_paces_the_connect_storm_and_reports_the_greetings(
    fresh_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("go") is None:
        pytest.skip("Go is not installed: the load client (tools/wsload) needs it")
    rig.build_wsload()
    prepare_indices(fresh_settings, catalog=SAMPLE_CATALOG)
    monkeypatch.setattr(rig, "CONNECT_RATE", 20.0)
    with run_server(fresh_settings) as base:
        # Their watches in one bulk load, under the user ids their cookies carry.
        users = asyncio.run(make_users(base, 15, "percolert-per-user", fresh_settings))
        cookie, word = users[3]
        assert cookie is not None
        listed = httpx.get(f"{base}/api/watches", cookies={COOKIE_NAME: cookie}).json()
        assert [watch["terms"] for watch in listed["watches"]] == [word]
        cookies = [cookie for cookie, _ in users for _ in range(2)]
        subscribers = Subscribers(Served(base), cookies, tmp_path)
        try:
            connect = subscribers.connect
            # Alerts carry no search text: the harness knows each by when it was made.
            sent, words, _, errors = rig.drive(Served(base), 20.0, 0.5, "join", tmp_path)
            expected = {rid for rid, word in words.items() if word in {w for _, w in users}}
            assert errors == 0
            assert expected
            wait_until_sync(
                lambda: set(subscribers.arrivals()[0]) >= expected,
                what="an alert for every search a subscriber watches, joined to its id",
            )
            assert set(subscribers.arrivals()[0]) <= set(sent)
        finally:
            subscribers.stop()
    assert connect["sockets"] == 30
    # Paced at 20 new sockets a second: the 30th cannot start before 1.45 s.
    assert connect["connect_seconds"] >= 1.45
    assert set(connect["greet_ms"]) == {"p50", "p90", "p99", "max"}
    assert 0 < connect["greet_ms"]["p50"] <= connect["greet_ms"]["max"]
    assert connect["handshake_ms"]["max"] <= connect["greet_ms"]["max"]
    assert connect["dial_retries"] == 0


def test_peer_nodes_are_one_two_or_both() -> None:
    assert peer_nodes("1") == [1]
    assert peer_nodes("1,2") == [1, 2]
    for wrong in ("3", "2,2", "", "0"):
        with pytest.raises(ValueError, match="--peer-nodes"):
            peer_nodes(wrong)


def test_two_nodes_alone_still_run_centrifugos_reference_on_one_instance() -> None:
    designs = ["percolert-alerts-off", "percolert-per-user", "centrifugo-per-user"]
    assert peer_schedule(designs, [1]) == [(design, 1) for design in designs]
    # Centrifugo's nodes are fed by one Percolert instance: its publishing is measured
    # against one instance with alerts off, Percolert's two instances against two.
    assert peer_schedule(designs, [2]) == [
        ("percolert-alerts-off", 1),
        ("percolert-alerts-off", 2),
        ("percolert-per-user", 2),
        ("centrifugo-per-user", 2),
    ]
    assert peer_schedule(designs, [1, 2]) == [
        *((design, 1) for design in designs),
        *((design, 2) for design in designs),
    ]
    # No reference asked for, none added.
    assert peer_schedule(["centrifugo-per-user"], [2]) == [("centrifugo-per-user", 2)]
