"""`percolert devnode`: a real node started, found again, refused politely, and stopped — and
what the server answers while it is down."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from percolert.dev.devnode import DevNode, DevNodeError, recorded_url
from tests.conftest import ROOT, make_settings
from tests.servers import free_port, run_server


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`percolert ARGS` as a developer without ELASTICSEARCH_URL runs it (even when the test
    session points at an outside cluster), unless `env` sets it."""
    merged = {key: value for key, value in os.environ.items() if key != "ELASTICSEARCH_URL"}
    merged.update(env)
    return subprocess.run(
        [sys.executable, "-m", "percolert.cli", *args],
        capture_output=True,
        text=True,
        env=merged,
        timeout=300,
        check=False,
    )


def test_start_status_idempotent_start_and_stop(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {"PERCOLERT_STATE_DIR": str(state_dir)}
    port = free_port()

    status = cli("devnode", "status", env=env)
    assert status.returncode == 3
    assert "not running" in status.stdout

    started_at = time.monotonic()
    first = cli("devnode", "start", "--port", str(port), env=env)
    seconds = time.monotonic() - started_at
    assert first.returncode == 0, first.stderr
    assert f"dev node started: http://127.0.0.1:{port}" in first.stdout
    print(f"dev node start took {seconds:.1f} s")
    try:
        assert recorded_url(state_dir) == f"http://127.0.0.1:{port}"
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()["version"]["number"]

        again = cli("devnode", "start", "--port", str(port), env=env)
        assert again.returncode == 0
        assert "already running" in again.stdout
        node = DevNode(state_dir)
        state = node.status()
        assert state is not None
        assert state.port == port

        running = cli("devnode", "status", env=env)
        assert running.returncode == 0
        assert f"running at http://127.0.0.1:{port}" in running.stdout
        assert str(state.pid) in running.stdout

        # The other commands use ELASTICSEARCH_URL only; start says what to set it to.
        assert f"export ELASTICSEARCH_URL=http://127.0.0.1:{port}" in first.stdout
        setup = cli(
            "setup",
            env={
                **env,
                "PERCOLERT_INDEX_PREFIX": "devnode-test",
                "ELASTICSEARCH_URL": f"http://127.0.0.1:{port}",
            },
        )
        assert setup.returncode == 0, setup.stderr
        assert "devnode-test-products -> devnode-test-products-v1: created" in setup.stdout
        own = httpx.get(f"http://127.0.0.1:{port}/_alias/devnode-test-products", timeout=10)
        assert own.status_code == 200  # on this node, not on a cluster the session points at
    finally:
        stop = cli("devnode", "stop", env=env)
    assert stop.returncode == 0
    assert "dev node stopped" in stop.stdout
    assert recorded_url(state_dir) is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert "not running" in cli("devnode", "stop", env=env).stdout


def test_busy_port_is_a_clear_error(tmp_path: Path, elasticsearch_url: str) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DevNodeError, match=f"port {port} on 127.0.0.1 is already in use"):
            DevNode(tmp_path).start(port)


def test_node_that_dies_on_start_points_at_its_log(tmp_path: Path) -> None:
    node = DevNode(tmp_path, heap="1k")  # the JVM refuses a heap this small and exits
    with pytest.raises(DevNodeError, match="exited during start") as raised:
        node.start(free_port(), timeout=60)
    assert str(node.log) in str(raised.value)
    assert node.status() is None


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(DevNodeError, match="Java 17\\+ is needed"):
        DevNode(tmp_path).start(free_port())


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "esnode"
    shutil.copytree(ROOT / "tools" / "esnode", project, ignore=shutil.ignore_patterns("target"))
    java = shutil.which("java")
    assert java is not None
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevNodeError, match="Maven \\(mvn\\) is needed"):
        DevNode(tmp_path / "state", project=project, java=java).start(free_port())


def test_server_answers_503_while_the_node_is_down_and_recovers(tmp_path: Path) -> None:
    node = DevNode(tmp_path / "state")
    port = free_port()
    node.start(port)
    settings = make_settings(f"http://127.0.0.1:{port}")
    try:
        with run_server(settings) as server:
            not_set_up = httpx.get(f"{server}/api/search", params={"q": "kindle"}, timeout=10)
            assert not_set_up.status_code == 503
            assert not_set_up.json()["error"]["code"] == "not_set_up"
            assert httpx.get(f"{server}/readyz", timeout=10).status_code == 503

            node.stop()
            started = time.monotonic()
            down = httpx.get(f"{server}/api/search", params={"q": "kindle"}, timeout=30)
            elapsed = time.monotonic() - started
            assert down.status_code == 503
            assert down.headers["retry-after"]
            error = down.json()["error"]
            assert error["code"] == "elasticsearch_unavailable"
            assert f"127.0.0.1:{port}" not in error["message"]  # the log names it, not clients
            assert elapsed < settings.elasticsearch_timeout
            ready = httpx.get(f"{server}/readyz", timeout=30)
            assert ready.status_code == 503
            assert httpx.get(f"{server}/healthz", timeout=10).status_code == 200

            node.start(port)  # same data directory: the cluster comes back as it was
            back = httpx.get(f"{server}/api/search", params={"q": "kindle"}, timeout=30)
            assert back.status_code == 503
            assert back.json()["error"]["code"] == "not_set_up"  # reachable again, no restart
    finally:
        node.stop()
