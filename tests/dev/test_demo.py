"""`percolert up` gives the demo an admin API: a token made once in the state directory, and
the exact curl command (a cheaper product) printed once the server is ready, which works as
printed and alerts a shopper watching the product."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from msgspec.structs import replace

from percolert.dev import demo
from tests.conftest import delete_indices, make_settings
from tests.servers import free_port
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


def test_the_demo_token_is_made_once_and_the_environment_wins(tmp_path: Path) -> None:
    settings = make_settings("http://127.0.0.1:1", state_dir=tmp_path / "state")
    first = demo.admin_token(settings)
    assert len(first) >= 32
    assert demo.admin_token(settings) == first
    assert (tmp_path / "state" / "admin_token").stat().st_mode & 0o077 == 0
    assert demo.admin_token(replace(settings, admin_token="x" * 20)) == "x" * 20


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_up_prints_a_curl_that_puts_a_cheaper_product(
    elasticsearch_url: str, tmp_path: Path
) -> None:
    settings = make_settings(elasticsearch_url, state_dir=tmp_path / "state")
    port = free_port()
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": elasticsearch_url,
        "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
        "PERCOLERT_STATE_DIR": str(settings.state_dir),
    }
    env.pop("PERCOLERT_ADMIN_TOKEN", None)
    lines: queue.Queue[str] = queue.Queue()
    command = [sys.executable, "-m", "percolert.cli", "up", "--port", str(port)]
    try:
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        ) as up:
            assert up.stdout is not None
            stdout = up.stdout

            def read() -> None:
                for line in stdout:
                    lines.put(line)

            threading.Thread(target=read, daemon=True).start()
            try:
                printed: list[str] = []

                def curl_printed() -> bool:
                    assert up.poll() is None, "percolert up exited"
                    while not lines.empty():
                        line = lines.get()
                        if line.startswith("curl ") or (printed and printed[-1].endswith("\\\n")):
                            printed.append(line)
                    return bool(printed) and not printed[-1].endswith("\\\n")

                await wait_until(curl_printed, timeout=120, what="the curl command")
                url = f"http://127.0.0.1:{port}"
                assert httpx.get(f"{url}/readyz").status_code == 200
                token = (settings.state_dir / "admin_token").read_text().strip()
                assert token in printed[1]
                async with Shopper(url) as shopper:
                    await shopper.watch("kindle")
                    curl = subprocess.run(
                        ["bash", "-c", "".join(printed)],
                        capture_output=True,
                        text=True,
                        timeout=30,
                        check=True,
                    )
                    answer = httpx.Response(200, content=curl.stdout).json()
                    assert answer["events"] == ["price_drop"]
                    assert answer["alerts"] == 1
            finally:
                up.send_signal(signal.SIGINT)
                up.wait(timeout=60)
    finally:
        await delete_indices(settings)
