"""Redis as operators run it for failover, made of Debian's `redis-server` for the tests that
need it: a Redis Cluster of three primaries, each with a replica, and a primary with a
replica watched by three Sentinels. Every process is the test's own, on free loopback ports,
with nothing saved to disk; `kill_primary` SIGKILLs the process serving a key (as a crashed
machine) and waits until a replica has taken its place, `fail_over` does it as planned. Each
deployment is a context manager that stops its processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.netproxy import DroppableProxy
from tests.servers import free_port
from tests.waiting import wait_until_sync

_BINARY = os.environ.get("PERCOLERT_REDIS_SERVER", "redis-server")
# A primary not answering for this long is failed over (a Cluster's node timeout, Sentinel's
# down-after): short, so that the tests spend seconds on it, not the defaults' 15 to 30.
_DOWN_AFTER_MS = 1_000


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        port=port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def _info(port: int, section: str) -> dict[str, str]:
    client = _client(port)
    try:
        return {key: str(value) for key, value in client.info(section).items()}
    finally:
        client.close()


def _command(port: int, *arguments: str) -> Any:
    """One command's reply, as redis-py parses it."""
    client = _client(port)
    try:
        return client.execute_command(*arguments)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _answers(port: int) -> bool:
    try:
        client = _client(port)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


@dataclass
class _Process:
    port: int
    popen: subprocess.Popen[bytes]


@dataclass
class _Processes:
    home: Path
    running: dict[int, _Process] = field(default_factory=dict)

    def start(self, name: str, *arguments: str, port: int | None = None) -> int:
        port = port or free_port()
        folder = self.home / f"{name}-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        # argv[0] must end in redis-server: Debian's binary picks its role from it.
        with (folder / "out.log").open("ab") as log:
            popen = subprocess.Popen(
                [_BINARY, *arguments, "--port", str(port), "--bind", "127.0.0.1",
                 "--dir", str(folder), "--save", "", "--appendonly", "no",
                 "--daemonize", "no", "--logfile", ""],
                stdout=log,
                stderr=log,
            )  # fmt: skip
        self.running[port] = _Process(port, popen)
        wait_until_sync(lambda: _answers(port), what=f"redis {name} on port {port} to answer")
        return port

    def kill(self, port: int) -> None:
        process = self.running.pop(port)
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(timeout=10)

    def stop_all(self) -> None:
        for port in list(self.running):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(port)


class _Deployment:
    """Redis processes started together (`_start`) and stopped together, also when starting
    fails part way; a context manager that stops them at its end."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._processes = _Processes(home)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._processes.stop_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exception: object) -> None:
        self.stop()


class RedisClusterNodes(_Deployment):
    """Three primaries and three replicas in one Redis Cluster."""

    def _start(self) -> None:
        options = [
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-node-timeout", str(_DOWN_AFTER_MS)),
            # A replica takes over however long it was cut off (the default refuses a
            # replica out of touch for long, leaving the slots down).
            *("--cluster-replica-validity-factor", "0"),
        ]
        self.ports = [
            self._processes.start("cluster", *options, "--cluster-port", str(free_port()))
            for _ in range(6)
        ]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        wait_until_sync(self._settled, timeout=30, what="the cluster to be ok on every node")
        self.url = "redis+cluster://127.0.0.1:{}?{}".format(
            self.ports[0], "&".join(f"addr=127.0.0.1:{port}" for port in self.ports[1:3])
        )

    def _settled(self) -> bool:
        """Every live node says the cluster is ok, and every replica is in sync."""
        for port in self._processes.running:
            if _info(port, "cluster").get("cluster_enabled") != "1":
                return False
            if "cluster_state:ok" not in _text(_command(port, "CLUSTER", "INFO")):
                return False
            replication = _info(port, "replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def pids(self) -> list[int]:
        """The running nodes' processes (a benchmark reads their CPU)."""
        return [process.popen.pid for process in self._processes.running.values()]

    def primaries(self) -> list[int]:
        """The ports of the nodes serving slots now."""
        port = next(iter(self._processes.running))
        return [int(primary[1]) for _start, _end, primary, *_ in _command(port, "CLUSTER", "SLOTS")]

    def primary_of(self, key: str) -> int:
        """The port of the primary serving `key`'s slot."""
        port = next(iter(self._processes.running))
        slot = int(_command(port, "CLUSTER", "KEYSLOT", key))
        for start, end, primary, *_replicas in _command(port, "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"no primary serves slot {slot}")

    def kill_primary(self, key: str) -> int:
        """SIGKILL the primary serving `key`; return once its replica serves the slot."""
        old = self.primary_of(key)
        self._processes.kill(old)
        wait_until_sync(
            lambda: self._promoted(key, old), timeout=30, what=f"a replica to serve {key!r}"
        )
        return old

    def fail_over(self, key: str) -> int:
        """A planned failover of `key`'s slot (`CLUSTER FAILOVER` on its primary's replica,
        as an operator moves a primary off a machine); return once the replica serves it."""
        old = self.primary_of(key)
        [replica] = [
            port
            for port in self._processes.running
            if _info(port, "replication").get("master_port") == str(old)
        ]
        _command(replica, "CLUSTER", "FAILOVER")
        wait_until_sync(
            lambda: self._promoted(key, old), timeout=30, what=f"{replica} to serve {key!r}"
        )
        return old

    def _promoted(self, key: str, old: int) -> bool:
        try:
            return (
                self.primary_of(key) != old
                and _info(self.primary_of(key), "replication").get("role") == "master"
            )
        except (redis.RedisError, OSError):
            return False


class RedisSentinels(_Deployment):
    """A primary named `primary`, its replica, and three Sentinels (quorum two)."""

    name = "primary"
    _link: DroppableProxy | None = None  # the replica's way to the primary, once started

    def _start(self) -> None:
        self.primary = self._processes.start("data")
        # The replica follows through a proxy, so that a test can hold the stream back.
        link = self._link = DroppableProxy(self.primary)
        self.replica = self._processes.start("data", "--replicaof", "127.0.0.1", str(link.port))
        wait_until_sync(
            lambda: _info(self.replica, "replication").get("master_link_status") == "up",
            what="the replica to sync",
        )
        self.sentinels = [self._sentinel() for _ in range(3)]
        wait_until_sync(self._watching, what="every Sentinel to know the replica and the others")
        self.url = "redis+sentinel://127.0.0.1:{}?{}&sentinel_master_name={}".format(
            self.sentinels[0],
            "&".join(f"addr=127.0.0.1:{port}" for port in self.sentinels[1:]),
            self.name,
        )

    def _sentinel(self) -> int:
        port = free_port()
        folder = self._home / f"sentinel-{port}"
        folder.mkdir(parents=True)
        config = folder / "sentinel.conf"  # Sentinel rewrites its config: one of its own
        config.write_text(
            f"sentinel monitor {self.name} 127.0.0.1 {self.primary} 2\n"
            f"sentinel down-after-milliseconds {self.name} {_DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {self.name} 10000\n"
        )
        return self._processes.start("sentinel", str(config), "--sentinel", port=port)

    def _watching(self) -> bool:
        for port in self.sentinels:
            reply = _command(port, "SENTINEL", "MASTER", self.name)
            state = {_text(field): _text(value) for field, value in reply.items()}
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def current_primary(self) -> int:
        _host, port = _command(self.sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(port)

    def hold_replication(self) -> None:
        """From now on the replica gets nothing more of what the primary writes (held on
        the way, as on a congested link): a failover then loses that tail."""
        assert self._link is not None
        self._link.hang()

    def kill_primary(self) -> int:
        """SIGKILL the primary; return once the Sentinels name its replica, promoted (what
        the link held is dropped)."""
        old = self.current_primary()
        self._processes.kill(old)
        wait_until_sync(
            lambda: (
                self.current_primary() != old
                and _info(self.current_primary(), "replication").get("role") == "master"
            ),
            timeout=60,
            what="the Sentinels to promote the replica",
        )
        assert self._link is not None
        self._link.close()
        return old

    def stop(self) -> None:
        super().stop()
        if self._link is not None:
            self._link.close()
