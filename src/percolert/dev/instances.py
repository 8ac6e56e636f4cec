"""Several instances of the server on one machine, as `percolert up --instances N` runs them:
one `percolert serve` process each (one per core, as a deployment would run them), on
consecutive ports, sharing one Redis and the same indices; stopped together.

Each instance runs in a process session of its own, so a Ctrl-C in the terminal reaches only
this process, which then stops each instance exactly once (SIGINT: uvicorn's graceful
shutdown, which drains the sockets; a second signal would cut it short).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

import msgspec

from percolert.core.settings import Settings, default_instance_id

# How long the instances get to drain and stop before they are killed.
STOP_SECONDS = 20.0
_POLL_SECONDS = 0.2


class Instance(msgspec.Struct, frozen=True):
    id: str
    url: str


def plan(settings: Settings, count: int) -> list[tuple[Instance, Settings]]:
    """The instances to run: ports from `settings.port` on, each with an id of its own."""
    planned = []
    for number in range(count):
        port = settings.port + number
        mine = msgspec.structs.replace(settings, port=port)
        instance_id = default_instance_id(mine)
        planned.append(
            (
                Instance(id=instance_id, url=f"http://{settings.host}:{port}"),
                msgspec.structs.replace(mine, instance_id=instance_id),
            )
        )
    return planned


def _environment(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """What an instance's process reads its settings from: the caller's environment, plus
    what this command decided (the cluster, the Redis, the state directory, its id)."""
    assert settings.redis_url is not None
    assert settings.instance_id is not None
    decided = {"PERCOLERT_ADMIN_TOKEN": settings.admin_token} if settings.admin_token else {}
    return {
        **base,
        **decided,
        "ELASTICSEARCH_URL": settings.elasticsearch_url,
        "PERCOLERT_REDIS_URL": settings.redis_url,
        "PERCOLERT_INSTANCE_ID": settings.instance_id,
        "PERCOLERT_STATE_DIR": str(settings.state_dir),
        "PERCOLERT_HOST": settings.host,
        "PERCOLERT_PORT": str(settings.port),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(planned: list[tuple[Instance, Settings]], environ: Mapping[str, str] | None = None) -> int:
    """Run the planned instances until Ctrl-C or SIGTERM (then 0) or until one of them exits
    on its own (then 1, after stopping the others). `environ`: what they start from (default:
    this process's environment)."""
    base = os.environ if environ is None else environ
    processes: list[subprocess.Popen[bytes]] = []
    # A supervisor's or `kill`'s SIGTERM stops them as Ctrl-C does, not leaving them orphaned;
    # and Ctrl-C (SIGINT) does, even when started with it ignored (as a shell's background job
    # is, which Python then leaves ignored).
    previous = {
        signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        for _, settings in planned:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "percolert.cli", "serve"],
                    env=_environment(settings, base),
                    start_new_session=True,
                )
            )
        while True:
            for (instance, _), process in zip(planned, processes, strict=True):
                if process.poll() is not None:
                    print(
                        f"instance {instance.id} exited ({process.returncode}): "
                        "stopping the others",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(_POLL_SECONDS)
    except KeyboardInterrupt:  # Ctrl-C is how the demo ends
        return 0
    finally:
        _stop(processes)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_SECONDS
    try:
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    except KeyboardInterrupt:  # impatient: no more draining
        for process in running:
            process.kill()
            process.wait()
        raise
