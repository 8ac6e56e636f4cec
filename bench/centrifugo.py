"""Centrifugo v6 as a peer of Percolert's delivery tier (issue 26): built from the Go module
proxy on first use (like the load client), started with a generated config (HMAC connection
tokens, a `personal` namespace of user-limited channels `personal:#<user>` with history and
recovery, optionally two nodes on its Redis engine) and fed through its server HTTP API, one
`broadcast` per event. The load client's Centrifugo mode (tools/wsload, `"protocol":
"centrifugo"`) holds the sockets and records each publication as it records Percolert's alerts.

    PYTHONPATH=. python bench/centrifugo.py --smoke [--sockets N] [--events M] [--nodes 2]

The smoke run connects N sockets (two tabs per user), broadcasts M events open loop, each to a
random subset of users' personal channels, and prints delivered/expected, fan-out latency
(broadcast call -> receipt), Centrifugo's CPU per 1,000 messages and its RSS per idle socket.
Config keys are Centrifugo v6's (internal/configtypes/types.go and namespace.go at v6.9.1)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil

from bench.cpu_budget import CpuBudget
from bench.rig import (
    CONNECT_CONCURRENCY,
    CONNECT_RATE,
    GREET_TIMEOUT_SECONDS,
    ROOT,
    Served,
    Subscribers,
    build_wsload,
    cpu_seconds,
    percentiles,
    split_numbering,
)
from percolert.realtime.centrifugo import personal_channel
from tests.servers import free_port

MODULE = "github.com/centrifugal/centrifugo/v6"
VERSION = "6.9.1"
CENTRIFUGO = ROOT / ".percolert" / "bin" / "centrifugo"
NAMESPACE = "personal"  # the channels percolert.realtime.centrifugo publishes to
DEFAULT_REDIS = "redis://127.0.0.1:6379"
# Its own key prefix on a Redis shared with Percolert's broker (and with earlier runs).
REDIS_PREFIX = "percolert-bench-centrifugo"
# (arrival epoch s, seq) by event, as rig.Subscribers.arrivals reads a record.
Arrivals = dict[str, list[tuple[float, int]]]


def installed_version() -> str | None:
    """The version `centrifugo version` reports ("Centrifugo v6.9.1 (Go version: ...)")."""
    if not CENTRIFUGO.exists():
        return None
    shown = subprocess.run(
        [str(CENTRIFUGO), "version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.split()
    return shown[1].removeprefix("v") if len(shown) > 1 else None


def build_centrifugo() -> Path:
    """Centrifugo VERSION in .percolert/bin, built once from the Go module proxy."""
    if installed_version() == VERSION:
        return CENTRIFUGO
    go = shutil.which("go")
    if go is None:
        raise SystemExit(
            f"the Centrifugo peer is built from source ({MODULE}@v{VERSION}): it needs Go"
            " (https://go.dev/doc/install)"
        )
    CENTRIFUGO.parent.mkdir(parents=True, exist_ok=True)
    # Stamped as its release builds are: a plain build reports 0.0.0 and warns on start that
    # it is a development build.
    stamp = f"-X {MODULE}/internal/build.Version={VERSION}"
    print(f"building Centrifugo {VERSION} (first use: a few minutes)", flush=True)
    subprocess.run(
        [go, "install", "-ldflags", stamp, f"{MODULE}@v{VERSION}"],
        env={**os.environ, "GOBIN": str(CENTRIFUGO.parent)},
        check=True,
    )
    if installed_version() != VERSION:
        raise SystemExit(f"{CENTRIFUGO} does not report version {VERSION} after the build")
    return CENTRIFUGO


def namespace_config(history_size: int, history_ttl: str, server_side: bool) -> dict[str, Any]:
    """The `personal` namespace: user-limited channels, history and recovery when sized."""
    namespace: dict[str, Any] = {
        "name": NAMESPACE,
        # personal:#u1 may be subscribed by u1 only, without a subscription token.
        "allow_user_limited_channels": True,
    }
    if history_size > 0:
        namespace |= {
            "history_size": history_size,
            "history_ttl": history_ttl,
            # Each channel's epoch and offset (default 30 days): an hour outlives a run
            # without leaving thousands of keys in a Redis shared with Percolert's broker.
            "history_meta_ttl": "1h",
            # Server-side subscriptions recover only when forced; client-side ones may ask.
            "force_recovery": server_side,
            "allow_recovery": True,
        }
    return namespace


def centrifugo_config(
    *,
    port: int,
    secret: str,
    api_key: str,
    origin: str,
    history_size: int = 100,
    history_ttl: str = "300s",
    server_side: bool = True,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """A Centrifugo v6 config: one node in memory, or with `redis_url` one of several nodes
    on its Redis engine (the same secret, API key and prefix on every node)."""
    config: dict[str, Any] = {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "info"},
        "health": {"enabled": True},
        "usage_stats": {"disabled": True},  # no phoning home from a benchmark
        "http_api": {"key": api_key},
        "client": {
            "token": {"hmac_secret_key": secret},
            "allowed_origins": [origin],
            # The server subscribes each user to personal:#<user> on connect, as
            # Percolert's hub routes to a user without a subscription round.
            "subscribe_to_user_personal_channel": {
                "enabled": server_side,
                "personal_channel_namespace": NAMESPACE,
            },
        },
        "channel": {"namespaces": [namespace_config(history_size, history_ttl, server_side)]},
    }
    if redis_url is not None:
        config["engine"] = {
            "type": "redis",
            "redis": {"address": [redis_url], "prefix": REDIS_PREFIX},
        }
    return config


class Centrifugo(Served):
    """One Centrifugo node in its own process (a rig.Target: the load client's server)."""

    design = "centrifugo"
    ready_path = "/health"

    def __init__(
        self,
        scratch: Path,
        *,
        name: str = "centrifugo",
        secret: str | None = None,
        api_key: str | None = None,
        redis_url: str | None = None,
        history_size: int = 100,
        server_side: bool = True,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/connection/websocket"
        # Nodes of one cluster share these: pass the first node's to the others.
        self.secret = secret or secrets.token_hex(32)
        self.api_key = api_key or secrets.token_hex(16)
        self.config = scratch / f"{name}.json"
        self.config.write_text(
            json.dumps(
                centrifugo_config(
                    port=self.port,
                    secret=self.secret,
                    api_key=self.api_key,
                    origin=self.url,
                    history_size=history_size,
                    server_side=server_side,
                    redis_url=redis_url,
                ),
                indent=2,
            )
        )
        self._http: httpx.AsyncClient | None = None
        self.start(
            [str(build_centrifugo()), "--config", str(self.config)],
            dict(os.environ),
            scratch,
            cwd=scratch,
            ready_seconds=30,
        )

    def routine(self, line: str) -> bool:
        # Its JSON log lines, and its console ones ("... INF ...").
        return super().routine(line) or " INF " in line

    def token(self, user: str) -> str:
        """A connection token for `user` (HS256, no expiry: a run outlasts none)."""
        return jwt.encode({"sub": user}, self.secret, algorithm="HS256")

    async def api(self, method: str, body: str) -> dict[str, Any]:
        """A server API call (`POST /api/<method>`): its answer, which has failed when it
        holds an `error`."""
        if self._http is None:
            limits = httpx.Limits(max_connections=64)
            self._http = httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits)
        response = await self._http.post(
            f"/api/{method}",
            content=body,
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        if "error" in answer:
            raise RuntimeError(f"{self.name} {method} failed: {answer['error']}")
        return answer

    async def warm(self) -> None:
        """The API client made and connected before an open loop: making it (its TLS
        context, although unused) held the first event up ~130 ms."""
        await self.api("info", "{}")

    async def broadcast(self, channels: Sequence[str], data: dict[str, Any]) -> None:
        """One server API `broadcast`: `data` published to every channel of `channels`."""
        # Compact, so that the load client reads the alert without decoding it.
        body = json.dumps({"channels": list(channels), "data": data}, separators=(",", ":"))
        answer = await self.api("broadcast", body)
        failed = [reply["error"] for reply in answer["result"]["responses"] if "error" in reply]
        if failed:
            raise RuntimeError(f"{self.name} broadcast failed: {failed[0]}")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


class CentrifugoSockets(Subscribers):
    """Subscriber sockets on one Centrifugo node over its client protocol, one per token:
    subscribed by the server to their user's personal channel, or with `channels` each to
    its own line. Arrivals are read, and `reconnect` rounds run (`numbering`: the sockets'
    numbers in a split run), as rig.Subscribers does for Percolert's (a dropped socket
    resumes with `recover` from its last offset). With `budget`, the load client runs
    inside it (bench/cpu_budget.py)."""

    def __init__(
        self,
        server: Centrifugo,
        tokens: list[str],
        scratch: Path,
        channels: list[str] | None = None,
        reconnect: dict[str, float] | None = None,
        numbering: tuple[int, int] = (0, 1),
        budget: CpuBudget | None = None,
    ) -> None:
        tokens_file = scratch / f"{server.name}-tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        spec: dict[str, Any] = {
            "url": server.ws_url,
            "origin": server.url,
            "protocol": "centrifugo",
            "auth_tokens": str(tokens_file),
            "concurrency": CONNECT_CONCURRENCY,
            "connect_rate": CONNECT_RATE,
            "greet_timeout_s": GREET_TIMEOUT_SECONDS,
            "dial_retries": 3,
        }
        if reconnect:
            spec["reconnect"] = reconnect
        spec |= split_numbering(numbering)
        if channels is not None:
            spec["channels"] = str(scratch / f"{server.name}-channels.txt")
            Path(spec["channels"]).write_text("\n".join(channels) + "\n")
        spec_file = scratch / f"{server.name}-sockets.json"
        spec_file.write_text(json.dumps(spec))
        self.record = scratch / f"{server.name}-record.txt"
        self.scratch = scratch
        self.connect = self.start(server, spec_file, len(tokens), budget)

    def start(
        self, server: Centrifugo, spec: Path, sockets: int, budget: CpuBudget | None = None
    ) -> dict[str, Any]:
        """Run `wsload subscribe` and wait for its ready file (every socket greeted)."""
        ready = Path(f"{self.record}.ready")
        self.record.unlink(missing_ok=True)
        ready.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [str(build_wsload()), "subscribe", str(spec), str(self.record)],
            preexec_fn=None if budget is None else budget.join,
        )
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 300 + 3 * sockets / CONNECT_RATE
        while not ready.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()
                raise SystemExit(
                    "the load client did not connect its sockets; Centrifugo's log:\n"
                    + server.tail_of_log()
                )
            time.sleep(0.2)
        connected: dict[str, Any] = json.loads(ready.read_text())
        return connected


def alert(event: str) -> dict[str, Any]:
    """An event's data, in the fields and order of Percolert's alert that the load client
    reads: `at` names the event, `seq` is the broadcast call's time in microseconds."""
    return {"type": "alert", "seq": time.time_ns() // 1000, "at": event}


async def publish(nodes: Sequence[Centrifugo], plan: dict[str, list[str]], rate: float) -> None:
    """Open loop: event i is broadcast at start + i / rate whatever happened to earlier
    ones, through the nodes in turn, to its users' personal channels."""
    for node in nodes:
        await node.warm()
    start = time.monotonic()
    calls = []
    for number, (event, users) in enumerate(plan.items()):
        await asyncio.sleep(max(0.0, start + number / rate - time.monotonic()))
        node = nodes[number % len(nodes)]
        channels = [personal_channel(user) for user in users]
        calls.append(asyncio.create_task(node.broadcast(channels, alert(event))))
    try:
        await asyncio.gather(*calls)
    finally:
        for node in nodes:
            await node.aclose()


def arrivals(sockets: Sequence[CentrifugoSockets]) -> tuple[Arrivals, int]:
    """(arrival epoch s, seq) by event over every load client, and the sockets closed."""
    merged: Arrivals = {}
    closed = 0
    for subscribers in sockets:
        received, closings = subscribers.arrivals()
        closed += len(closings)
        for event, times in received.items():
            merged.setdefault(event, []).extend(times)
    return merged, closed


def delivered(received: Arrivals, expected: dict[str, int]) -> int:
    return sum(min(len(received.get(event, [])), count) for event, count in expected.items())


def smoke(args: argparse.Namespace) -> None:
    """One node (or two on Redis): connect, broadcast, measure, print."""
    build_centrifugo()
    build_wsload()
    scratch = Path(tempfile.mkdtemp(prefix="centrifugo-smoke-"))
    redis_url = args.redis if args.nodes > 1 else None
    server_side = args.subscribe == "server"
    nodes: list[Centrifugo] = []
    sockets: list[CentrifugoSockets] = []
    try:
        for number in range(args.nodes):
            nodes.append(
                Centrifugo(
                    scratch,
                    name="centrifugo" if number == 0 else f"centrifugo-{number + 1}",
                    # One cluster: every node takes the first node's keys.
                    secret=nodes[0].secret if nodes else None,
                    api_key=nodes[0].api_key if nodes else None,
                    redis_url=redis_url,
                    history_size=args.history_size,
                    server_side=server_side,
                )
            )
        run_smoke(args, nodes, sockets, scratch, server_side)
    finally:
        for subscribers in sockets:
            subscribers.stop()
        for node in nodes:
            node.stop()
    print(f"logs: {scratch}")


def run_smoke(
    args: argparse.Namespace,
    nodes: list[Centrifugo],
    sockets: list[CentrifugoSockets],
    scratch: Path,
    server_side: bool,
) -> None:
    users = [f"u{number}" for number in range(max(1, args.sockets // 2))]
    # Two tabs per user, as the harness's sockets; socket i on node i % nodes, so that with
    # two nodes a user's tabs are on both and every event crosses Redis.
    owners = [users[number // 2 % len(users)] for number in range(args.sockets)]
    rss_before = sum(node.ps.memory_info().rss for node in nodes)
    for index, node in enumerate(nodes):
        mine = owners[index :: len(nodes)]
        channels = None if server_side else [personal_channel(user) for user in mine]
        sockets.append(
            CentrifugoSockets(node, [node.token(user) for user in mine], scratch, channels)
        )
        print(f"{node.name}: {json.dumps(sockets[-1].connect)}", flush=True)
    time.sleep(2)  # idle: let the connect storm's garbage be collected
    rss_idle = sum(node.ps.memory_info().rss for node in nodes)

    rng = random.Random(26)
    per_event = max(1, round(args.reach * len(users)))
    plan = {f"e{number}": rng.sample(users, per_event) for number in range(args.events)}
    tabs = Counter(owners)
    expected = {event: sum(tabs[user] for user in chosen) for event, chosen in plan.items()}
    cpu_before = sum(cpu_seconds(node.ps) for node in nodes)
    began = time.monotonic()
    asyncio.run(publish(nodes, plan, args.rate))
    deadline = time.monotonic() + 10
    received, closed = arrivals(sockets)
    while delivered(received, expected) < sum(expected.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        received, closed = arrivals(sockets)
    cpu = sum(cpu_seconds(node.ps) for node in nodes) - cpu_before
    if closed:
        print(f"{closed} sockets were closed by the server")
    report(args, nodes, received, expected, cpu, time.monotonic() - began, rss_idle - rss_before)


def report(
    args: argparse.Namespace,
    nodes: list[Centrifugo],
    received: Arrivals,
    expected: dict[str, int],
    cpu: float,
    seconds: float,
    rss_grown: int,
) -> None:
    got = delivered(received, expected)
    total = sum(expected.values())
    extra = sum(len(times) for times in received.values()) - got
    latencies = [
        (at - seq / 1e6) * 1000 for event in expected for at, seq in received.get(event, [])
    ]
    spread = percentiles(latencies)
    print(
        f"Centrifugo {VERSION}, {len(nodes)} node(s)"
        f"{' on Redis' if len(nodes) > 1 else ''}, {args.sockets} sockets, {args.events} events"
        f" at {args.rate:g}/s, history {args.history_size}, {args.subscribe}-side subscriptions"
    )
    print(f"delivered {got} / {total} expected ({extra} extra)")
    print(
        f"fan-out latency (broadcast call -> receipt): p50 {spread.get('p50')} ms,"
        f" p99 {spread.get('p99')} ms, max {spread.get('max')} ms"
    )
    print(
        f"Centrifugo CPU: {1000 * 1000 * cpu / max(1, got):.1f} ms per 1,000 messages"
        f" ({cpu:.2f} s over {seconds:.1f} s)"
    )
    print(f"RSS per idle socket: {rss_grown / 1024 / max(1, args.sockets):.1f} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description="Centrifugo v6 as the benchmark's peer")
    parser.add_argument("--smoke", action="store_true", help="build, connect, broadcast, measure")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="events a second")
    parser.add_argument(
        "--reach", type=float, default=0.025, help="the share of users each event reaches"
    )
    parser.add_argument("--history-size", type=int, default=100, help="0: history off")
    parser.add_argument("--subscribe", choices=["server", "client"], default="server")
    parser.add_argument("--nodes", type=int, choices=[1, 2], default=1)
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="the Redis engine's (2 nodes)")
    args = parser.parse_args()
    if not args.smoke:
        parser.error("nothing to do: --smoke")
    smoke(args)


if __name__ == "__main__":
    main()
