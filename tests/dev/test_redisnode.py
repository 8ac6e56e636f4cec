"""`percolert redis`: a real redis-server started, found again, refused politely, and stopped;
never confused with another process that got its pid."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import redis

from percolert.core.settings import Settings
from percolert.dev.redisnode import (
    MISSING_BINARY,
    RedisNode,
    RedisNodeError,
    RedisState,
    recorded_url,
)
from tests.servers import free_port


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "percolert.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)


def test_start_status_idempotent_start_ping_and_stop(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {"PERCOLERT_STATE_DIR": str(state_dir)}
    port = free_port()
    url = f"redis://127.0.0.1:{port}"

    status = cli("redis", "status", env=env)
    assert status.returncode == 3
    assert "not running" in status.stdout

    first = cli("redis", "start", "--port", str(port), env=env)
    assert first.returncode == 0, first.stderr
    assert f"dev redis started: {url}" in first.stdout
    try:
        assert recorded_url(state_dir) == url
        with client(url) as redis_client:
            assert redis_client.ping() is True
            # Loopback only, protected, nothing kept on disk (README, "What runs where").
            assert redis_client.config_get("bind") == {"bind": "127.0.0.1"}
            assert redis_client.config_get("protected-mode") == {"protected-mode": "yes"}
            assert redis_client.config_get("save") == {"save": ""}
            assert redis_client.config_get("appendonly") == {"appendonly": "no"}
            assert redis_client.config_get("dir") == {"dir": str(state_dir / "redis" / "data")}
            redis_client.set("percolert-test", "kept until stop")

        again = cli("redis", "start", "--port", str(free_port()), env=env)
        assert again.returncode == 0, again.stderr
        assert f"dev redis already running: {url}" in again.stdout  # the running one, its port
        state = RedisNode(state_dir).status()
        assert state is not None
        assert state.port == port
        with client(url) as redis_client:
            assert redis_client.get("percolert-test") == "kept until stop"  # the same server

        running = cli("redis", "status", env=env)
        assert running.returncode == 0
        assert f"running at {url}" in running.stdout
        assert str(state.pid) in running.stdout
        assert (state_dir / "redis" / "redis.log").read_text().count("Ready to accept") == 1
    finally:
        stop = cli("redis", "stop", env=env)
    assert stop.returncode == 0
    assert "dev redis stopped" in stop.stdout
    assert recorded_url(state_dir) is None
    with pytest.raises(redis.ConnectionError), client(url) as redis_client:
        redis_client.ping()
    assert "not running" in cli("redis", "stop", env=env).stdout
    assert cli("redis", "status", env=env).returncode == 3

    # Started again on the same state directory, it comes back empty: nothing is persisted.
    node = RedisNode(state_dir)
    node.start(port)
    try:
        with client(url) as redis_client:
            assert redis_client.get("percolert-test") is None
    finally:
        node.stop()


def test_session_fixture_gives_a_redis_that_answers(redis_url: str) -> None:
    with client(redis_url) as redis_client:
        assert redis_client.ping() is True


def test_missing_binary_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = Settings(redis_server=tmp_path / "no-such-redis-server", state_dir=tmp_path)
    with pytest.raises(RedisNodeError, match=r"redis-server not found at .*no-such-redis-server"):
        RedisNode.configured(configured).start(free_port())

    refused = cli(
        "redis",
        "start",
        "--port",
        str(free_port()),
        env={
            "PERCOLERT_STATE_DIR": str(tmp_path),
            "PERCOLERT_REDIS_SERVER": str(tmp_path / "no-such-redis-server"),
        },
    )
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr  # one line, no traceback
    assert "redis-server not found at" in refused.stderr
    assert "apt-get install redis-server" in refused.stderr
    assert RedisNode(tmp_path).status() is None

    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    with pytest.raises(RedisNodeError) as raised:
        RedisNode(tmp_path).start(free_port())
    assert str(raised.value) == MISSING_BINARY
    assert str(raised.value) == (
        "redis-server not found: install it (apt-get install redis-server) "
        "or set PERCOLERT_REDIS_SERVER"
    )


def test_a_stale_state_file_whose_pid_is_another_process_is_not_the_server(
    tmp_path: Path,
) -> None:
    node = RedisNode(tmp_path)
    node.home.mkdir(parents=True)
    # Another process now has the recorded pid; it even calls itself redis-server.
    impostor_argv = ["redis-server", "-c", "import time; time.sleep(120)"]
    with subprocess.Popen(impostor_argv, executable=sys.executable) as impostor:
        try:
            port = free_port()
            stale = RedisState(
                pid=impostor.pid,
                port=port,
                url=f"redis://127.0.0.1:{port}",
                log=str(node.log),
                home=str(node.home),
                started_at=0.0,
            )
            node.state_file.write_bytes(msgspec.json.encode(stale))
            assert node.status() is None
            assert recorded_url(tmp_path) is None
            assert node.stop() is None  # nothing of ours ran: the impostor is left alone
            assert impostor.poll() is None

            node.state_file.write_bytes(msgspec.json.encode(stale))
            state, started = node.start(port)
            try:
                assert started
                assert state.pid != impostor.pid
                with client(state.url) as redis_client:
                    assert redis_client.ping() is True
            finally:
                assert node.stop() == state
            assert impostor.poll() is None
        finally:
            impostor.kill()


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(RedisNodeError, match=f"port {port} on 127.0.0.1 is already in use"):
            RedisNode(tmp_path).start(port)


def test_server_that_dies_on_start_points_at_its_log(tmp_path: Path) -> None:
    real = shutil.which("redis-server")
    assert real is not None
    # A real redis-server given a config it refuses: it exits at once.
    broken = tmp_path / "redis-server"
    broken.write_text(f'#!/bin/sh\nexec {real} "$@" --no-such-directive yes\n')
    broken.chmod(0o755)
    node = RedisNode(tmp_path / "state", server=broken)
    with pytest.raises(RedisNodeError, match="exited during start") as raised:
        node.start(free_port())
    assert str(node.log) in str(raised.value)
    assert node.status() is None
    assert not node.state_file.exists()
