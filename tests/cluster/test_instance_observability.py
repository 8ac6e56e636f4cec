"""Each instance names itself in its logs and metrics, and an instance on a shared Redis
reports its broker's traffic: real servers, real Redis, real WebSocket clients."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import msgspec
import pytest

from percolert.core.settings import Settings
from percolert.web.logs import InstanceFilter, JsonFormatter
from tests.servers import free_port, metric, run_server
from tests.shoppers import Shopper, default_watch
from tests.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.anyio


@contextmanager
def logged_lines() -> Iterator[list[dict[str, object]]]:
    """What the percolert loggers write, as the CLI's handler would write it (stamped with the
    logging context's instance, then formatted as JSON)."""
    lines: list[dict[str, object]] = []
    formatter = JsonFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    handler = Collect(logging.INFO)
    handler.addFilter(InstanceFilter())
    logger = logging.getLogger("percolert")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_two_apps_in_one_process_log_and_export_their_own_id(
    catalog_settings: Settings,
) -> None:
    alpha = msgspec.structs.replace(catalog_settings, instance_id="alpha")
    beta = msgspec.structs.replace(catalog_settings, instance_id="beta")
    with run_server(alpha) as one, run_server(beta) as two, logged_lines() as lines:
        for server, name in ((one, "alpha"), (two, "beta")):
            assert metric(server, "percolert_instance_info", instance=name) == 1
            async with Shopper(server) as shopper:
                await shopper.search("kindle")
                socket = await shopper.connect()
                await socket.close()
            await wait_until(
                lambda name=name: any(  # type: ignore[misc]
                    line["message"] == "socket_close" and line.get("instance") == name
                    for line in lines
                ),
                what=f"{name}'s socket to close",
            )
    by_instance: dict[object, set[object]] = {}
    for line in lines:
        by_instance.setdefault(line.get("instance"), set()).add(line["message"])
    assert set(by_instance) == {"alpha", "beta"}, by_instance  # no line without an instance
    for name in ("alpha", "beta"):
        assert {"request", "socket_open", "socket_close"} <= by_instance[name]


def test_without_an_id_each_app_gets_one_of_its_own(catalog_settings: Settings) -> None:
    with run_server(catalog_settings) as one, run_server(catalog_settings) as two:
        ids = []
        for server in (one, two):
            response = httpx.get(f"{server}/metrics", timeout=10)
            [line] = [
                line
                for line in response.text.splitlines()
                if line.startswith("percolert_instance_info{")
            ]
            ids.append(line)
    assert ids[0] != ids[1]
    assert 'instance="127.0.0.1:' in ids[0]


def test_every_line_of_percolert_serve_names_the_instance(catalog_settings: Settings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": catalog_settings.elasticsearch_url,
        "PERCOLERT_INDEX_PREFIX": catalog_settings.index_prefix,
        "PERCOLERT_STATE_DIR": str(catalog_settings.state_dir),
        "PERCOLERT_INSTANCE_ID": "serve-1",
        "PERCOLERT_PORT": str(port),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "percolert.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:

            def ready() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).is_success
                except httpx.TransportError:
                    return False

            wait_until_sync(ready, timeout=30, what="percolert serve to be ready")
            assert httpx.get(f"http://127.0.0.1:{port}/api/categories").status_code == 200
        finally:
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert any('"message":"request"' in line for line in lines)
    assert any("Uvicorn running" in line for line in lines)  # uvicorn's own lines too
    assert [line for line in lines if json.loads(line).get("instance") != "serve-1"] == []


@pytest.fixture
def redis_settings(catalog_settings: Settings, redis_url: str) -> Settings:
    return msgspec.structs.replace(catalog_settings, redis_url=redis_url, coalesce_seconds=0.0)


async def test_broker_metrics_follow_the_traffic_between_instances(
    redis_settings: Settings,
) -> None:
    one_settings = msgspec.structs.replace(redis_settings, instance_id="one")
    two_settings = msgspec.structs.replace(redis_settings, instance_id="two")
    with run_server(one_settings) as one, run_server(two_settings) as two:
        for server, name in ((one, "one"), (two, "two")):
            assert metric(server, "percolert_instance_info", instance=name) == 1
            assert metric(server, "percolert_broker_up") == 1
            assert metric(server, "percolert_broker_reconnects_total") == 0
        await wait_until(
            lambda: metric(one, "percolert_broker_instances") >= 2,
            what="instance one to see two live instances",
        )

        def published(server: str, kind: str) -> float:
            return metric(server, "percolert_broker_publishes_total", kind=kind)

        before = {kind: published(one, kind) for kind in ("user", "everyone", "user_message")}
        received = metric(two, "percolert_broker_received_total")
        xreads = metric(two, "percolert_broker_round_trip_seconds_count", op="xread")
        async with Shopper(one) as a, Shopper(one) as b:
            watch = await a.watch("fitbit")  # a watches_changed, published by one
            socket = await a.connect(base_url=two)
            await b.search("fitbit charge")  # served, percolated and published by one
            alert = await socket.next_alert()
            assert alert is not None
            assert alert["watch"]["id"] == watch["id"]
            async with default_watch(redis_settings, "garmin"):
                await b.search("garmin forerunner")
                assert await socket.next_alert() is not None
            await a.unwatch(watch["id"])
        assert published(one, "user") >= before["user"] + 1
        assert published(one, "everyone") == before["everyone"] + 1
        assert published(one, "user_message") >= before["user_message"] + 2
        assert metric(two, "percolert_broker_received_total") >= received + 2
        assert metric(one, "percolert_broker_round_trip_seconds_count", op="hits") >= 2
        assert metric(one, "percolert_broker_round_trip_seconds_count", op="publish") >= 2
        assert metric(two, "percolert_broker_round_trip_seconds_count", op="presence") >= 1
        assert metric(two, "percolert_broker_round_trip_seconds_count", op="xread") > xreads
        assert metric(one, "percolert_broker_round_trip_seconds_count", op="heartbeat") >= 1


def test_an_instance_without_redis_has_no_broker_metrics(catalog_settings: Settings) -> None:
    solo = msgspec.structs.replace(catalog_settings, instance_id="solo", redis_url=None)
    with run_server(solo) as server:
        assert metric(server, "percolert_instance_info", instance="solo") == 1
        text = httpx.get(f"{server}/metrics", timeout=10).text
    assert "percolert_broker_" not in text
