"""A server that a state directory started in the background for development and tests (the
dev Elasticsearch node, the dev Redis): its recorded state, recognising its process again
(not a pid the system has since reused), starting it detached with its output in a log,
waiting until it answers, and stopping it.

Each kind of server is a subclass saying how it starts (`start`, through `_launch`), how its
process looks (`_is_ours`) and how it is asked whether it answers (`_answers`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import ClassVar

import msgspec


class LocalServiceError(Exception):
    """Starting or stopping a local server failed; the message says why and what to check."""


class ServiceState(msgspec.Struct, frozen=True):
    pid: int
    port: int
    url: str
    log: str
    home: str
    started_at: float


def last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class LocalService:
    """The server recorded in `state_file`, writing its output to `log`."""

    # The `percolert` command that manages it ("devnode", "redis"); how messages name the
    # process ("the node", "redis-server"), and what else may hold its port.
    command: ClassVar[str]
    process: ClassVar[str]
    port_hint: ClassVar[str]
    error: ClassVar[type[LocalServiceError]] = LocalServiceError
    # How often start and stop look again; how long a stop waits before SIGKILL.
    poll_seconds: ClassVar[float] = 0.1
    stop_seconds: ClassVar[float] = 30.0

    def __init__(self, state_file: Path, log: Path) -> None:
        self.state_file = state_file
        self.log = log

    def start(self, port: int) -> tuple[ServiceState, bool]:
        """Start the server unless it already runs; returns its state and whether it started."""
        raise NotImplementedError

    def _is_ours(self, state: ServiceState, cmdline: list[bytes]) -> bool:
        """Whether a live process with this command line is the server `state` records."""
        raise NotImplementedError

    def _answers(self, state: ServiceState) -> bool:
        """Whether the server is ready for use (asked once, briefly)."""
        raise NotImplementedError

    def _alive(self, state: ServiceState) -> bool:
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
        return self._is_ours(state, cmdline)

    def status(self) -> ServiceState | None:
        try:
            state = msgspec.json.decode(self.state_file.read_bytes(), type=ServiceState)
        except (FileNotFoundError, NotADirectoryError, msgspec.DecodeError):
            return None
        return state if self._alive(state) else None

    def _require_free(self, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # The servers bind with SO_REUSEADDR, so connections of one that just stopped
            # (TIME_WAIT) do not keep the port busy for them; test the same way.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise self.error(
                    f"port {port} on 127.0.0.1 is already in use ({self.port_hint}); "
                    "stop it or pass --port"
                ) from None

    def _launch(
        self, binary: str, command: list[str], *, port: int, url: str, home: Path, timeout: float
    ) -> ServiceState:
        """Start `command` detached, its output in the log, record it, and wait until it
        answers; stop it again if it does not within `timeout` seconds."""
        with self.log.open("a") as log:
            log.write(f"\n=== percolert {self.command} start, port {port}, {time.ctime()} ===\n")
            log.flush()
            # posix_spawn rather than Popen: the server outlives this process by design, and
            # a Popen object would complain about a child still running when it is collected.
            # The server inherits this process's environment (PATH, JAVA_HOME, locale).
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
        state = ServiceState(
            pid=pid, port=port, url=url, log=str(self.log), home=str(home), started_at=time.time()
        )
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_bytes(msgspec.json.encode(state))
        deadline = time.monotonic() + timeout
        while not self._answers(state):
            exited, status = os.waitpid(pid, os.WNOHANG)
            if exited:
                self.state_file.unlink(missing_ok=True)
                raise self.error(
                    f"{self.process} exited during start (exit code "
                    f"{os.waitstatus_to_exitcode(status)}): {last_line(self.log)!r}; "
                    f"full log: {self.log}"
                )
            if time.monotonic() > deadline:
                self._terminate(state)
                raise self.error(
                    f"{self.process} did not answer within {timeout:.0f} s; log: {self.log}"
                )
            time.sleep(self.poll_seconds)
        return state

    def stop(self) -> ServiceState | None:
        """Stop the server this state file records; returns it, or None if none ran."""
        state = self.status()
        self.state_file.unlink(missing_ok=True)
        if state is None:
            return None
        self._terminate(state)
        return state

    def _terminate(self, state: ServiceState) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)  # both shut down cleanly on it
        timeout = self.stop_seconds
        deadline = time.monotonic() + timeout
        while self._alive(state):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signal.SIGKILL)
                deadline += timeout
            time.sleep(self.poll_seconds)
        self.state_file.unlink(missing_ok=True)
