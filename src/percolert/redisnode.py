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

import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from percolert.settings import Settings

_STATE_FILE = "state.json"
MISSING_BINARY = (
    "redis-server not found: install it (apt-get install redis-server) "
    "or set PERCOLERT_REDIS_SERVER"
)


class RedisNodeError(Exception):
    """Starting or stopping the dev Redis failed; the message says why and what to check."""


class RedisState(msgspec.Struct, frozen=True):
    pid: int
    port: int
    url: str
    log: str
    home: str
    started_at: float


def _read_state(path: Path) -> RedisState | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=RedisState)
    except (FileNotFoundError, NotADirectoryError, msgspec.DecodeError):
        return None


def _is_our_server(state: RedisState) -> bool:
    """True while the recorded pid is alive and is the server we started (not a reused pid).

    The server runs with `set-proc-title no`, so its command line stays the one it was given,
    which names its data directory under this state directory."""
    proc = Path(f"/proc/{state.pid}")
    if not proc.exists():
        if Path("/proc/self").exists():
            return False
        try:  # no /proc: fall back to "some process has this pid"
            os.kill(state.pid, 0)
        except OSError:
            return False
        return True
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if fields[0] == "Z":  # exited; reap it if it is our child so the pid goes away
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)
        return False
    return (
        bool(cmdline)
        and os.path.basename(cmdline[0]) == b"redis-server"
        and str(Path(state.home) / "data").encode() in cmdline
    )


def recorded_url(state_dir: Path) -> str | None:
    """The URL of the dev Redis recorded in `state_dir`, if it is running."""
    state = _read_state(state_dir.resolve() / "redis" / _STATE_FILE)
    return state.url if state is not None and _is_our_server(state) else None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # redis-server binds with SO_REUSEADDR (connections of a server that just stopped do
        # not keep the port busy for it); test the same way.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(port: int) -> bool:
    """True once the server answers PING (not while it is still loading or refusing)."""
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
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


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class RedisNode:
    """The dev Redis recorded under one state directory."""

    def __init__(self, state_dir: Path, *, server: Path | None = None) -> None:
        """`server`: the redis-server binary (default: `redis-server` on the PATH)."""
        self.state_dir = state_dir.resolve()
        self.home = self.state_dir / "redis"
        self.data = self.home / "data"
        self.log = self.home / "redis.log"
        self.state_file = self.home / _STATE_FILE
        self._server = server

    @classmethod
    def configured(cls, settings: Settings, state_dir: Path | None = None) -> RedisNode:
        """The dev Redis with the settings' binary, under `state_dir` (default: the settings'
        state directory)."""
        return cls(
            settings.state_dir if state_dir is None else state_dir,
            server=settings.redis_server,
        )

    def status(self) -> RedisState | None:
        state = _read_state(self.state_file)
        if state is None or not _is_our_server(state):
            return None
        return state

    def start(self, port: int = 6379, *, timeout: float = 30.0) -> tuple[RedisState, bool]:
        """Start the server unless it already runs; returns its state and whether it started."""
        running = self.status()
        if running is not None:
            return running, False
        binary = self._find_server()
        if not _port_is_free(port):
            raise RedisNodeError(
                f"port {port} on 127.0.0.1 is already in use (another Redis, or the system's "
                "redis-server service?); stop it or pass --port"
            )
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
            "",  # stdout, which is the log file below
            # Keep the command line as given: it is how `status` recognises this server.
            "--set-proc-title",
            "no",
        ]
        with self.log.open("a") as log:
            log.write(f"\n=== percolert redis start, port {port}, {time.ctime()} ===\n")
            log.flush()
            # posix_spawn rather than Popen: the server outlives this process by design.
            pid = os.posix_spawn(
                binary,
                command,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                    (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
                ],
                setsid=True,
            )
        state = RedisState(
            pid=pid,
            port=port,
            url=f"redis://127.0.0.1:{port}",
            log=str(self.log),
            home=str(self.home),
            started_at=time.time(),
        )
        self.state_file.write_bytes(msgspec.json.encode(state))
        deadline = time.monotonic() + timeout
        while not _answers(port):
            exited, status = os.waitpid(pid, os.WNOHANG)
            if exited:
                self.state_file.unlink(missing_ok=True)
                raise RedisNodeError(
                    "redis-server exited during start (exit code "
                    f"{os.waitstatus_to_exitcode(status)}): {_last_line(self.log)!r}; "
                    f"full log: {self.log}"
                )
            if time.monotonic() > deadline:
                self._terminate(state)
                raise RedisNodeError(
                    f"redis-server did not answer within {timeout:.0f} s; log: {self.log}"
                )
            time.sleep(0.05)
        return state, True

    def stop(self, *, timeout: float = 10.0) -> RedisState | None:
        """Stop the server this state directory started; returns it, or None if none ran."""
        state = self.status()
        self.state_file.unlink(missing_ok=True)
        if state is None:
            return None
        self._terminate(state, timeout=timeout)
        return state

    def _terminate(self, state: RedisState, *, timeout: float = 10.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            # With nothing to save, SIGTERM is an immediate clean shutdown.
            os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_our_server(state):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signal.SIGKILL)
                deadline += timeout
            time.sleep(0.05)
        self.state_file.unlink(missing_ok=True)

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
