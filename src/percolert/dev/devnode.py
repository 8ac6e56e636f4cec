"""`percolert devnode`: a real single-node Elasticsearch 7.17 for development and tests.

The node is the Maven project in `tools/esnode/` (Elasticsearch's own jars from Maven Central,
started in one JVM). This module builds it once, starts it in the background, waits until the
cluster answers, and records pid, port and log in the state directory so that later commands,
the server and `stop` find it again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

from percolert.core import assets
from percolert.core.settings import Settings
from percolert.dev.localservice import LocalService, LocalServiceError, ServiceState

_STATE_FILE = "devnode.json"
_MAIN_CLASS = "io.percolert.esnode.EsNode"


class DevNodeError(LocalServiceError):
    """Starting or stopping the dev node failed; the message says why and what to check."""


def recorded_url(state_dir: Path) -> str | None:
    """The URL of the dev node recorded in `state_dir`, if it is running."""
    state = DevNode(state_dir).status()
    return state.url if state is not None else None


class DevNode(LocalService):
    """The dev node recorded under one state directory."""

    command = "devnode"
    process = "the node"
    port_hint = "another Elasticsearch?"
    error: ClassVar[type[LocalServiceError]] = DevNodeError

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
        super().__init__(self.state_dir / _STATE_FILE, self.home / "node.log")
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

    def _is_ours(self, state: ServiceState, cmdline: list[bytes]) -> bool:
        return _MAIN_CLASS.encode() in cmdline and state.home.encode() in cmdline

    def _answers(self, state: ServiceState) -> bool:
        """True once the cluster is at least yellow: every primary shard (of indices kept
        from an earlier run too) is ready to search."""
        health = f"{state.url}/_cluster/health?wait_for_status=yellow&timeout=1s"
        try:
            # The URL is always the loopback http:// address this module built.
            with urllib.request.urlopen(health, timeout=3) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, port: int = 9200, *, timeout: float = 180.0) -> tuple[ServiceState, bool]:
        """Start the node unless it already runs; returns its state and whether it started."""
        running = self.status()
        if running is not None:
            return running, False
        java = self._find_java()
        classpath = self._build()
        self._require_free(port)
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
        state = self._launch(java, command, port=port, url=url, home=self.home, timeout=timeout)
        return state, True

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
