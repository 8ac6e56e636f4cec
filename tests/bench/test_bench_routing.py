"""The multi-instance benchmarks' own checks: the routing micro-benchmark delivers every alert
through both routings against a real redis-server, the round-trip count leaves out the
commands the broker's scripts run inside Redis, and on a real Redis Cluster the benchmark
counts every node's CPU and the primaries' commands."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from bench.broker_routing import VARIANTS, measure, plan
from bench.cluster import RedisUnderTest, script_commands
from percolert.broker.connection import connect, disconnect
from percolert.dev.redisnode import RedisNode
from tests.redis_topologies import RedisClusterNodes
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


@pytest.mark.anyio
async def test_a_cluster_counts_all_its_nodes_and_its_primaries_commands(tmp_path: Path) -> None:
    with RedisClusterNodes(tmp_path) as nodes:
        under_test = RedisUnderTest.cluster(nodes)
        try:
            assert len(under_test.processes) == 6
            assert len(under_test.primaries) == 3
            before = under_test.command_calls().get("set", 0)
            # As the instances reach it: the client in cluster mode.
            client = connect(under_test.url, max_connections=4, socket_timeout=5, connect_timeout=5)
            try:
                for number in range(30):  # keys on every primary's slots
                    await client.set(f"key-{number}", "x")
            finally:
                await disconnect(client)
            assert under_test.command_calls()["set"] == before + 30
            under_test.empty()
            assert under_test.used_memory_mb() > 0
            assert all(primary.dbsize() == 0 for primary in under_test.primaries)
        finally:
            under_test.close()
