"""The multi-instance benchmarks' own checks: the routing micro-benchmark delivers every alert
through both routings against a real redis-server, and the round-trip count leaves out the
commands the broker's scripts run inside Redis."""

from __future__ import annotations

from pathlib import Path

import psutil

from bench.broker_routing import VARIANTS, measure, plan
from bench.cluster import script_commands
from percolert.dev.redisnode import RedisNode
from tests.servers import free_port


def test_both_routings_deliver_every_alert_once(tmp_path: Path) -> None:
    node = RedisNode(tmp_path)
    state, _ = node.start(free_port())
    try:
        searches = plan(users=200, searches=20, recipients=10)
        for variant in VARIANTS:
            result = measure(state.url, psutil.Process(state.pid), variant, 200, 2, searches)
            assert (result.delivered, result.expected) == (200, 200), variant
    finally:
        node.stop()


def test_round_trips_leave_out_commands_run_inside_scripts() -> None:
    inside = script_commands()
    assert {"xadd", "hincrby", "hexists", "time"} <= inside
    assert not {"evalsha", "xread"} & inside
