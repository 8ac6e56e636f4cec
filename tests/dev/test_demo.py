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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from msgspec.structs import replace

from percolert.core.settings import Settings
from percolert.dev import demo
from tests.conftest import delete_indices, make_settings
from tests.servers import free_port
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


class Up:
    """`percolert up` running in a process of its own, and what it prints."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._lines: queue.Queue[str] = queue.Queue()
        stdout = process.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                self._lines.put(line)

        threading.Thread(target=read, daemon=True).start()

    def new_lines(self) -> list[str]:
        """The lines printed since the last call (the command must still be running)."""
        assert self.process.poll() is None, "percolert up exited"
        lines = []
        while not self._lines.empty():
            lines.append(self._lines.get())
        return lines


@contextmanager
def running_up(settings: Settings, *args: str) -> Iterator[Up]:
    """`percolert up ARGS` on `settings`' cluster, index prefix and state directory (its
    admin token made there, not the environment's), stopped by Ctrl-C as a person would."""
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": settings.elasticsearch_url,
        "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
        "PERCOLERT_STATE_DIR": str(settings.state_dir),
    }
    env.pop("PERCOLERT_ADMIN_TOKEN", None)
    command = [sys.executable, "-m", "percolert.cli", "up", *args]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            yield Up(process)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


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
    try:
        with running_up(settings, "--port", str(port)) as up:
            printed: list[str] = []

            def curl_printed() -> bool:
                for line in up.new_lines():
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
        await delete_indices(settings)
