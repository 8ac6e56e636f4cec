"""`percolert devnode`: a real single-node Elasticsearch 7.17 for development and tests.

The node is the Maven project in `tools/esnode/` (Elasticsearch's own jars from Maven Central,
started in one JVM). This module builds it once, starts it in the background, waits until the
cluster answers, and records pid, port and log in the state directory so that later commands,
the server and `stop` find it again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec

from percolert import assets
from percolert.settings import Settings

_STATE_FILE = "devnode.json"
_MAIN_CLASS = "io.percolert.esnode.EsNode"


class DevNodeError(Exception):
    """Starting or stopping the dev node failed; the message says why and what to check."""


class NodeState(msgspec.Struct, frozen=True):
    pid: int
    port: int
    url: str
    log: str
    home: str
    started_at: float


def _state_path(state_dir: Path) -> Path:
    return state_dir / _STATE_FILE


def _read_state(state_dir: Path) -> NodeState | None:
    try:
        return msgspec.json.decode(_state_path(state_dir).read_bytes(), type=NodeState)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def _is_our_node(state: NodeState) -> bool:
    """True while the recorded pid is alive and is the node we started (not a reused pid)."""
    proc = Path(f"/proc/{state.pid}")
    if not proc.exists():
        if os.name == "posix" and Path("/proc/self").exists():
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
    return _MAIN_CLASS.encode() in cmdline and state.home.encode() in cmdline


def recorded_url(state_dir: Path) -> str | None:
    """The URL of the dev node recorded in `state_dir`, if it is running."""
    state = _read_state(state_dir)
    return state.url if state is not None and _is_our_node(state) else None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Elasticsearch binds with SO_REUSEADDR, so connections of a node that just stopped
        # (TIME_WAIT) do not keep the port busy for it; test the same way.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(url: str) -> bool:
    """True once the cluster is at least yellow: every primary shard (of indices kept from an
    earlier run too) is ready to search."""
    health = f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s"
    try:
        # The URL is always the loopback http:// address this module built.
        with urllib.request.urlopen(health, timeout=3) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class DevNode:
    """The dev node recorded under one state directory."""

    def __init__(
        self,
        state_dir: Path,
        *,
        project: Path | None = None,
        heap: str = "512m",
        java: str | None = None,
        java_home: Path | None = None,
    ) -> None:
        """`project`: the launcher's Maven project (default: tools/esnode of the source
        checkout); `java`: the java binary, else the one in `java_home`, else on the PATH."""
        self.state_dir = state_dir.resolve()
        self.home = self.state_dir / "devnode"
        self.log = self.home / "node.log"
        self.maven_log = self.state_dir / "maven.log"
        self.heap = heap
        self._project = project
        self._java = java
        self._java_home = java_home

    @classmethod
    def configured(
        cls, settings: Settings, state_dir: Path | None = None, *, heap: str = "512m"
    ) -> DevNode:
        """The dev node with the settings' launcher project and JDK, under `state_dir`
        (default: the settings' state directory)."""
        return cls(
            settings.state_dir if state_dir is None else state_dir,
            project=settings.esnode_dir,
            heap=heap,
            java_home=settings.java_home,
        )

    def status(self) -> NodeState | None:
        state = _read_state(self.state_dir)
        if state is None or not _is_our_node(state):
            return None
        return state

    def start(self, port: int = 9200, *, timeout: float = 180.0) -> tuple[NodeState, bool]:
        """Start the node unless it already runs; returns its state and whether it started."""
        running = self.status()
        if running is not None:
            return running, False
        java = self._find_java()
        classpath = self._build()
        if not _port_is_free(port):
            raise DevNodeError(
                f"port {port} on 127.0.0.1 is already in use (another Elasticsearch?); "
                "stop it or pass --port"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{port}"
        command = [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8",
            "-Dlog4j2.disable.jmx=true",
            "-Dlog4j.shutdownHookEnabled=false",
            "-XX:-OmitStackTraceInFastThrow",
            "-cp",
            classpath,
            _MAIN_CLASS,
            "--http-port",
            str(port),
            "--home",
            str(self.home),
        ]
        with self.log.open("a") as log:
            log.write(f"\n=== percolert devnode start, port {port}, {time.ctime()} ===\n")
            log.flush()
            # posix_spawn rather than Popen: the node outlives this process by design, and a
            # Popen object would complain about a child still running when it is collected.
            # The JVM inherits this process's environment (PATH, JAVA_HOME, locale).
            pid = os.posix_spawn(
                java,
                command,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                    (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
                ],
                setsid=True,
            )
        state = NodeState(
            pid=pid,
            port=port,
            url=url,
            log=str(self.log),
            home=str(self.home),
            started_at=time.time(),
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _state_path(self.state_dir).write_bytes(msgspec.json.encode(state))
        deadline = time.monotonic() + timeout
        while not _answers(url):
            exited, status = os.waitpid(pid, os.WNOHANG)
            if exited:
                _state_path(self.state_dir).unlink(missing_ok=True)
                raise DevNodeError(
                    f"the node exited during start (exit code {os.waitstatus_to_exitcode(status)})"
                    f": {_last_line(self.log)!r}; full log: {self.log}"
                )
            if time.monotonic() > deadline:
                self._terminate(state)
                raise DevNodeError(
                    f"the node did not answer within {timeout:.0f} s; log: {self.log}"
                )
            time.sleep(0.2)
        return state, True

    def stop(self, *, timeout: float = 30.0) -> NodeState | None:
        """Stop the node this state directory started; returns it, or None if none ran."""
        state = self.status()
        _state_path(self.state_dir).unlink(missing_ok=True)
        if state is None:
            return None
        self._terminate(state, timeout=timeout)
        return state

    def _terminate(self, state: NodeState, *, timeout: float = 30.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)  # the node's shutdown hook closes it cleanly
        deadline = time.monotonic() + timeout
        while _is_our_node(state):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signal.SIGKILL)
                deadline += timeout
            time.sleep(0.1)
        _state_path(self.state_dir).unlink(missing_ok=True)

    def _find_java(self) -> str:
        if self._java:
            return self._java
        if self._java_home is not None and (self._java_home / "bin" / "java").is_file():
            return str(self._java_home / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise DevNodeError(
                "Java 17+ is needed for the dev node: install a JDK or set JAVA_HOME"
            )
        return java

    def _project_dir(self) -> Path:
        if self._project is not None:
            return self._project
        root = assets.source_root()
        if root is None or not (root / "tools" / "esnode" / "pom.xml").is_file():
            raise DevNodeError(
                "the dev node needs a source checkout (tools/esnode); set PERCOLERT_ESNODE_DIR"
            )
        return root / "tools" / "esnode"

    def _build(self) -> str:
        """Compile the launcher and resolve its jars (Maven caches them after the first run)."""
        project = self._project_dir()
        target = project / "target"
        jar = target / "esnode-1.0.0.jar"
        classpath_file = target / "classpath.txt"
        sources = [project / "pom.xml", *project.joinpath("src").rglob("*.java")]
        newest_source = max(path.stat().st_mtime for path in sources)
        up_to_date = (
            jar.is_file()
            and classpath_file.is_file()
            and min(jar.stat().st_mtime, classpath_file.stat().st_mtime) >= newest_source
        )
        if not up_to_date:
            mvn = shutil.which("mvn")
            if mvn is None:
                raise DevNodeError("Maven (mvn) is needed to build the dev node: install maven")
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with self.maven_log.open("w") as log:
                result = subprocess.run(
                    [
                        mvn,
                        "-B",
                        "-q",
                        "-f",
                        str(project / "pom.xml"),
                        "package",
                        "dependency:build-classpath",
                        f"-Dmdep.outputFile={classpath_file}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
            if result.returncode != 0:
                raise DevNodeError(
                    f"Maven could not build the dev node (exit code {result.returncode}); "
                    f"log: {self.maven_log}"
                )
        return f"{jar}{os.pathsep}{classpath_file.read_text().strip()}"
