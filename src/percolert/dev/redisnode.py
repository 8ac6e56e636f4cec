"""`percolert redis`: a real local `redis-server` for development, the demo and tests.

The Redis counterpart of `devnode`: Debian's `redis-server` binary started in the background,
bound to 127.0.0.1 only, waited for until it answers PING, and recorded (pid, port, log) in
`STATE_DIR/redis/` so that later commands and `stop` find it again.

It keeps nothing on disk: no RDB snapshots, no append-only file. Redis is not Percolert's
record (the alert log in Elasticsearch is), so a restart that comes back empty is a case the
service must handle anyway; a dev instance that forgets on restart exercises it instead of
hiding it. The data directory still exists so that a manual SAVE writes there, not into the
working directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import ClassVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from percolert.core.settings import Settings
from percolert.dev.localservice import LocalService, LocalServiceError, ServiceState

_STATE_FILE = "state.json"
MISSING_BINARY = (
    "redis-server not found: install it (apt-get install redis-server) "
    "or set PERCOLERT_REDIS_SERVER"
)

RedisState = ServiceState


class RedisNodeError(LocalServiceError):
    """Starting or stopping the dev Redis failed; the message says why and what to check."""


def recorded_url(state_dir: Path) -> str | None:
    """The URL of the dev Redis recorded in `state_dir`, if it is running."""
    state = RedisNode(state_dir).status()
    return state.url if state is not None else None


class RedisNode(LocalService):
    """The dev Redis recorded under one state directory."""

    command = "redis"
    process = "redis-server"
    port_hint = "another Redis, or the system's redis-server service?"
    error: ClassVar[type[LocalServiceError]] = RedisNodeError
    poll_seconds = 0.05
    stop_seconds = 10.0  # with nothing to save, SIGTERM is an immediate clean shutdown

    def __init__(self, state_dir: Path, *, server: Path | None = None) -> None:
        """`server`: the redis-server binary (default: `redis-server` on the PATH)."""
        self.state_dir = state_dir.resolve()
        self.home = self.state_dir / "redis"
        self.data = self.home / "data"
        super().__init__(self.home / _STATE_FILE, self.home / "redis.log")
        self._server = server

    @classmethod
    def configured(cls, settings: Settings, state_dir: Path | None = None) -> RedisNode:
        """The dev Redis with the settings' binary, under `state_dir` (default: the settings'
        state directory)."""
        return cls(
            settings.state_dir if state_dir is None else state_dir,
            server=settings.redis_server,
        )

    def _is_ours(self, state: ServiceState, cmdline: list[bytes]) -> bool:
        """The server runs with `set-proc-title no`, so its command line stays the one it was
        given, which names its data directory under this state directory."""
        return (
            bool(cmdline)
            and os.path.basename(cmdline[0]) == b"redis-server"
            and str(Path(state.home) / "data").encode() in cmdline
        )

    def _answers(self, state: ServiceState) -> bool:
        """True once the server answers PING (not while it is still loading or refusing)."""
        client = redis.Redis(
            host="127.0.0.1",
            port=state.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # the caller's loop retries, and watches the process
        )
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def start(self, port: int = 6379, *, timeout: float = 30.0) -> tuple[RedisState, bool]:
        """Start the server unless it already runs; returns its state and whether it started."""
        running = self.status()
        if running is not None:
            return running, False
        binary = self._find_server()
        self._require_free(port)
        self.data.mkdir(parents=True, exist_ok=True)
        command = [
            # argv[0] must end in redis-server: Debian's binary is also redis-check-rdb and
            # picks its role from the name it is called by.
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",  # stdout, which the start points at the log file
            # Keep the command line as given: it is how `status` recognises this server.
            "--set-proc-title",
            "no",
        ]
        state = self._launch(
            binary,
            command,
            port=port,
            url=f"redis://127.0.0.1:{port}",
            home=self.home,
            timeout=timeout,
        )
        return state, True

    def _find_server(self) -> str:
        if self._server is not None:
            if not (self._server.is_file() and os.access(self._server, os.X_OK)):
                raise RedisNodeError(
                    f"redis-server not found at {self._server} (PERCOLERT_REDIS_SERVER): install "
                    "it (apt-get install redis-server) or set PERCOLERT_REDIS_SERVER to its path"
                )
            return str(self._server)
        found = shutil.which("redis-server")
        if found is None:
            raise RedisNodeError(MISSING_BINARY)
        return found
