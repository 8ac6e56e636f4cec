"""The command line's own decisions: which cluster a command talks to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec

from percolert.cli import load_settings
from percolert.devnode import NodeState
from percolert.settings import DEFAULT_ELASTICSEARCH_URL, from_environment
from tests.conftest import make_settings, run_cli


def test_without_elasticsearch_url_commands_use_the_running_dev_node(tmp_path: Path) -> None:
    home = tmp_path / "devnode"
    # A process that passes for the recorded node: the check reads the launcher class and
    # the node's home from its command line (no JVM needed to test the CLI's choice).
    command = [
        sys.executable,
        "-c",
        "import time; time.sleep(120)",
        "io.percolert.esnode.EsNode",
        "--home",
        str(home),
    ]
    env = {"PERCOLERT_STATE_DIR": str(tmp_path)}
    with subprocess.Popen(command) as stand_in:
        try:
            node = NodeState(
                pid=stand_in.pid,
                port=9333,
                url="http://127.0.0.1:9333",
                log=str(home / "node.log"),
                home=str(home),
                started_at=0.0,
            )
            (tmp_path / "devnode.json").write_bytes(msgspec.json.encode(node))
            assert load_settings(env).elasticsearch_url == node.url
            explicit = {**env, "ELASTICSEARCH_URL": "http://es.internal:9200"}
            assert load_settings(explicit).elasticsearch_url == "http://es.internal:9200"
            # Settings alone never look for a dev node.
            assert from_environment(env).elasticsearch_url == DEFAULT_ELASTICSEARCH_URL
        finally:
            stand_in.kill()
    assert load_settings(env).elasticsearch_url == DEFAULT_ELASTICSEARCH_URL  # not running


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
