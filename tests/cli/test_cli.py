"""The command line's own decisions: which cluster a command talks to."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from percolert.cli.common import cluster_line
from percolert.core.settings import DEFAULT_ELASTICSEARCH_URL, from_environment
from percolert.dev.devnode import recorded_url
from percolert.dev.localservice import ServiceState
from percolert.dev.redisnode import RedisNode
from percolert.engine import es, indices
from tests.conftest import delete_indices, make_settings, run_cli
from tests.shoppers import Shopper
from tests.waiting import wait_until


def test_admin_commands_never_use_a_dev_node_left_running(tmp_path: Path) -> None:
    """A dev node recorded in the state directory is the demo's; `serve` and the admin
    commands use ELASTICSEARCH_URL or the default, and say which."""
    home = tmp_path / "devnode"
    # A process that passes for the recorded node: the dev tooling's check reads the launcher
    # class and the node's home from its command line (no JVM needed to test the choice).
    command = [
        sys.executable,
        "-c",
        "import time; time.sleep(120)",
        "io.percolert.esnode.EsNode",
        "--home",
        str(home),
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("ELASTICSEARCH_URL", "PERCOLERT_INDEX_PREFIX")
    }
    env["PERCOLERT_STATE_DIR"] = str(tmp_path)
    with subprocess.Popen(command) as stand_in:
        try:
            node = ServiceState(
                pid=stand_in.pid,
                port=9333,
                url="http://127.0.0.1:9333",
                log=str(home / "node.log"),
                home=str(home),
                started_at=0.0,
            )
            (tmp_path / "devnode.json").write_bytes(msgspec.json.encode(node))
            assert recorded_url(tmp_path) == node.url  # the dev tooling sees it running
            listing = subprocess.run(
                [sys.executable, "-m", "percolert.cli", "watches", "list"],
                capture_output=True,
                text=True,
                env={**env, "PERCOLERT_INDEX_PREFIX": "never-made"},
                timeout=120,
                check=False,
            )
        finally:
            stand_in.kill()
    said = listing.stderr.splitlines()[0]
    assert said == (
        f"percolert: Elasticsearch at {DEFAULT_ELASTICSEARCH_URL} "
        "(the default: ELASTICSEARCH_URL is not set)"
    ), listing.stderr
    assert "9333" not in listing.stdout + listing.stderr
    explicit = {"ELASTICSEARCH_URL": "http://es.internal:9200"}
    settings = from_environment(explicit)
    assert cluster_line(settings, explicit) == (
        "Elasticsearch at http://es.internal:9200 (ELASTICSEARCH_URL)"
    )


def test_commands_before_setup_say_so_without_a_traceback(
    elasticsearch_url: str, tmp_path: Path
) -> None:
    settings = make_settings(elasticsearch_url)  # a prefix no index has
    seeds = tmp_path / "seeds.json"
    seeds.write_text('[{"terms": "kindle"}]')
    for args in (("watches", "seed", str(seeds)), ("watches", "list")):
        refused = run_cli(settings, *args)
        assert refused.returncode == 1, refused.stdout
        assert "run `percolert setup` first" in refused.stderr
        assert "Traceback" not in refused.stderr


# Ports below the kernel's ephemeral range (32768 and up, on Linux): one free when probed
# stays free until `up` binds it, where an ephemeral one can be taken meanwhile by any
# outgoing connection (`up`'s own to Elasticsearch among them).
_FIXED_PORTS = range(20_000, 32_000)


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now, below the ephemeral range."""
    chooser = random.Random()
    for _ in range(50):
        first = chooser.randrange(_FIXED_PORTS.start, _FIXED_PORTS.stop - count)
        probes = [socket.socket() for _ in range(count)]
        try:
            for offset, probe in enumerate(probes):
                probe.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise AssertionError(f"no {count} consecutive free ports")


def metric_labels(base_url: str, name: str) -> dict[str, str]:
    """The labels of the one sample `name` on the server's /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return dict(sample.labels)
    raise AssertionError(f"no sample {name} on {base_url}/metrics")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).is_success
    except httpx.TransportError:
        return False


@pytest.mark.anyio
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_up_runs_two_instances_that_alert_each_other_and_ctrl_c_stops_all(
    elasticsearch_url: str, tmp_path: Path, stop: signal.Signals
) -> None:
    settings = make_settings(elasticsearch_url, state_dir=tmp_path / "state")
    port = consecutive_free_ports(3)  # two instances, then their Redis
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": elasticsearch_url,  # no dev node: this cluster
        "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
        "PERCOLERT_STATE_DIR": str(settings.state_dir),
        "PERCOLERT_COALESCE_SECONDS": "0",
    }
    env.pop("PERCOLERT_REDIS_URL", None)  # the dev Redis of the state directory
    command = [sys.executable, "-m", "percolert.cli", "up", "--instances", "2"]
    command += ["--port", str(port), "--redis-port", str(port + 2)]
    one, two = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    try:
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as up:
            try:

                def ready() -> bool:
                    if up.poll() is not None:
                        assert up.stderr is not None
                        raise AssertionError(f"percolert up exited: {up.stderr.read()}")
                    return answers(f"{one}/readyz") and answers(f"{two}/readyz")

                await wait_until(ready, timeout=120, what="both instances to be ready")
                assert RedisNode(settings.state_dir).status() is not None
                ids = {
                    metric_labels(url, "percolert_instance_info")["instance"] for url in (one, two)
                }
                assert len(ids) == 2
                async with Shopper(one) as a, Shopper(one) as b:
                    watch = await a.watch("fitbit")
                    socket = await a.connect(base_url=two)  # A listens on instance 2
                    await b.search("fitbit charge")  # B searches on instance 1
                    alert = await socket.next_alert()
                    assert alert is not None
                    assert alert["watch"]["id"] == watch["id"]
                    # The sample's default watches were seeded once, for both.
                    assert any(
                        w["terms"] == "kindle"
                        for w in (await a.http.get("/api/watches")).json()["watches"]
                    )
            finally:
                up.send_signal(stop)
                stdout, stderr = up.communicate(timeout=60)
        assert up.returncode == 0, stderr
        for instance_id in ids:
            assert f"instance {instance_id} at http://127.0.0.1:" in stdout
        assert "two shoppers: open" in stdout
        assert not answers(f"{one}/healthz")
        assert not answers(f"{two}/healthz")
        assert RedisNode(settings.state_dir).status() is None  # it stopped the Redis it started
    finally:
        await delete_indices(settings)


def test_setup_reports_stored_products_with_bad_text_and_still_succeeds(
    elasticsearch_url: str,
) -> None:
    """Products stored before the catalog checked its text (written here straight to the
    index): `setup` names how many, a few skus and what to do, and does its work all the same."""
    settings = make_settings(elasticsearch_url)
    try:
        first = run_cli(settings, "setup")
        assert first.returncode == 0, first.stderr
        assert "warning" not in first.stderr

        async def store_bad_products() -> None:
            client = es.create_client(settings)
            alias = indices.alias_for(settings, "products")
            product = {"product_name": "Speaker", "price": 500.0, "brand": "Acme"}
            try:
                for sku, category in [
                    ("FORGED-1", "audio\x1f0000000001"),
                    ("FORGED-2", "audio\x1e"),
                    ("CASED-1", "Audio"),
                    ("GOOD-1", "audio"),
                ]:
                    await client.index(
                        index=alias, id=sku, document={**product, "sku": sku, "category": category}
                    )
                await client.indices.refresh(index=alias)
            finally:
                await client.close()

        asyncio.run(store_bad_products())
        again = run_cli(settings, "setup")
        assert again.returncode == 0, again.stderr
        assert "up to date" in again.stdout
        warnings = [line for line in again.stderr.splitlines() if "warning" in line]
        assert len(warnings) == 2, again.stderr
        alias = indices.alias_for(settings, "products")
        assert warnings[0].startswith(f"percolert: warning: 2 products in {alias} hold control")
        assert "'FORGED-1' (category)" in warnings[0]
        assert "'FORGED-2' (category)" in warnings[0]
        assert "ingest it again" in warnings[0]
        assert "\x1f" not in again.stderr  # named by escape, never written to the terminal
        assert warnings[1].startswith(f"percolert: warning: categories in {alias} not trimmed")
        assert "'Audio'" in warnings[1]
    finally:
        asyncio.run(delete_indices(settings))
