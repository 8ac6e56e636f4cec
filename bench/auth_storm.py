"""What a shop's token costs a socket's connect: storms of N anonymous sockets (a session
cookie) beside storms of N sockets that authenticate with a JWT first, HS256 and RS256 (a
JWKS), in turns within one run, each storm from idle.

A deployment takes one kind of key, so two servers run side by side on one Elasticsearch
node: one with a shared secret (HS256), one with a JWKS URL (RS256: a 2048-bit RSA key,
its JWKS served over plain http from this process). The equal-work comparison is each
server's token storm against its own anonymous storm in the same round: the same process,
the same settings, as many users with as many watches; only the socket's way in differs.
Each round runs the four storms with the servers' order and the pairs' order alternating.

Every storm brings new users (two tabs each, as the harness's users), each with one watch
of the harness's per-user words, bulk-loaded beforehand; cookies and tokens are minted
beforehand too (minting is the shop's cost, not Percolert's; a token lives for two hours,
past the run). A token socket opens `/ws?auth=token` and sends `{"type":"auth",...}` first
(`wsload`'s `auth_tokens`), an anonymous one carries its cookie. Per storm: the greeting
time from dial to hello (for a token socket the auth message and its check included; paced
as the harness paces its storms: CONNECT_CONCURRENCY in flight, CONNECT_RATE a second), the
storm's wall time, CPU per connect of the server (psutil, from the first dial until every
socket had its hello), of Elasticsearch (own node only) and of the load client, and the
sockets that never got a hello. Then the sockets close and the server goes idle again.

    PYTHONPATH=. python -m bench.auth_storm --quick
    PYTHONPATH=. python -m bench.auth_storm --sockets 5000 --rounds 3 \\
        --report docs/benchmarks/auth-storm.json

Uses ELASTICSEARCH_URL when set (index prefix `authstorm`, set up afresh; Elasticsearch's
CPU is then not read), else a fresh dev node. Needs Go (the load client is built on first
use).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil

from bench.harness import SPARE_FILES, log_warnings, raise_file_limit
from bench.rig import (
    CONNECT_CONCURRENCY,
    CONNECT_RATE,
    GREET_TIMEOUT_SECONDS,
    GROUP_WORDS,
    ROOT,
    WSLOAD,
    Server,
    build_wsload,
    cpu_seconds,
)
from percolert.accounts.ids import account_user_id
from percolert.accounts.tokens import Tokens
from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings, from_environment
from percolert.core.text import TextNormalizer
from percolert.dev.devnode import DevNode
from percolert.engine import es, indices
from percolert.watches.store import WatchStore
from percolert.web.middleware.sessions import SessionSigner
from tests.accounts.shop_keys import JwksEndpoint, ShopKey, jwks_server
from tests.servers import free_port

PREFIX = "authstorm"
TABS = 2
SECRET = "auth-storm-bench-session-secret"  # the servers' session secret: cookies minted here
TOKEN_SECONDS = 2 * 3600  # past the run: no token_expiring, no expiry while measuring
LOG_DIR = ROOT / ".percolert" / "auth-storm-logs"  # the servers' logs of the last run
WARM_SOCKETS = 200  # per kind and server, before anything is recorded
IDLE_PERCENT = 10.0  # of a core: a process this quiet counts as idle
IDLE_WAIT_SECONDS = 30.0  # at most, for the server and Elasticsearch to be that quiet
# The four storms of a round, by server: its anonymous storm and its token storm, labelled
# as the report names them.
STORMS = {
    "HS256": ("anonymous (HS256 server)", "HS256 token"),
    "RS256": ("anonymous (RS256 server)", "RS256 token"),
}


@dataclass
class Storm:
    label: str
    server: str  # which server: HS256 or RS256
    token: bool
    round: int
    sockets: int
    greet_ms: dict[str, float] = field(default_factory=dict)
    handshake_ms: dict[str, float] = field(default_factory=dict)
    greets_over_1s: int = 0
    connect_seconds: float = 0.0  # first dial to the last hello (the load client's clock)
    greeted_per_s: float = 0.0
    failed: int = 0  # sockets that never got a hello (after the load client's retries)
    errors: list[str] = field(default_factory=list)
    dial_retries: int = 0
    server_cpu_ms_per_connect: float = 0.0
    es_cpu_ms_per_connect: float | None = None
    client_cpu_ms_per_connect: float = 0.0
    server_log_warnings: int = 0
    load_average: float = 0.0  # the machine's 1-minute load average as the storm began
    # The server's and Elasticsearch's CPU (% of a core) in the second before the storm.
    idle_cpu_percent: dict[str, float] = field(default_factory=dict)


@dataclass
class Users:
    """One storm's users: what each socket presents (a cookie, or a token), and the user
    ids whose watches are loaded beforehand."""

    cookies: list[str | None]
    tokens: list[str]
    ids: list[str]


class Shop:
    """The shop's keys, and its tokens for its customers (`sub`), minted here."""

    def __init__(self, endpoint: JwksEndpoint) -> None:
        self.secret = secrets.token_hex(32)
        self.key = ShopKey("auth-storm-1")
        endpoint.keys = [self.key]
        self.mint_seconds = {"HS256": 0.0, "RS256": 0.0}
        self.minted = {"HS256": 0, "RS256": 0}

    def token(self, algorithm: str, subject: str) -> str:
        started = time.perf_counter()
        if algorithm == "RS256":
            token = self.key.token(subject, expires_in=TOKEN_SECONDS)
        else:
            now = int(time.time())
            claims = {"sub": subject, "iat": now, "exp": now + TOKEN_SECONDS}
            token = jwt.encode(claims, self.secret, algorithm="HS256")
        self.mint_seconds[algorithm] += time.perf_counter() - started
        self.minted[algorithm] += 1
        return token


def make_users(shop: Shop, sockets: int, algorithm: str | None, tag: str) -> Users:
    """Users enough for `sockets` (TABS sockets each): sessions of their own (algorithm
    None) or the shop's customers, each token for both of its user's tabs."""
    signer = SessionSigner(SECRET)
    cookies: list[str | None] = []
    tokens: list[str] = []
    ids: list[str] = []
    for number in range((sockets + TABS - 1) // TABS):
        if algorithm is None:
            user, cookie = signer.issue()
            cookies += [cookie] * TABS
        else:
            subject = f"customer-{tag}-{number}"
            user = account_user_id(subject)
            tokens += [shop.token(algorithm, subject)] * TABS
        ids.append(user)
    return Users(cookies[:sockets], tokens[:sockets], ids)


async def load_watches(settings: Settings, users: list[str]) -> None:
    """One watch per user (the harness's per-user words), in one bulk load."""
    client = es.create_client(settings)
    try:
        store = WatchStore(
            client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=10**9
        )
        await store.add_many(
            (user, WatchSpec(terms=GROUP_WORDS[number % len(GROUP_WORDS)]))
            for number, user in enumerate(users)
        )
        await client.indices.refresh(index=indices.alias_for(settings, "watches"))
    finally:
        await client.close()


def open_sockets(server: Server) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("percolert_connected_sockets"):
            return float(line.split()[-1])
    return float("nan")


def wait_idle(server: Server, node: psutil.Process | None, settle: float) -> dict[str, float]:
    """Until the server counts no socket, `settle` seconds more, then until the server and
    Elasticsearch each use under IDLE_PERCENT of a core over a second (what the last storm's
    sockets left, their closing and lease writes, done), for at most IDLE_WAIT_SECONDS.
    Returns the last second's CPU percentages, as the storm starts from them."""
    deadline = time.monotonic() + 120
    while open_sockets(server) != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{server.name}: sockets still open after 2 minutes")
        time.sleep(0.2)
    time.sleep(settle)
    processes = {"server": server.ps, **({} if node is None else {"elasticsearch": node})}
    deadline = time.monotonic() + IDLE_WAIT_SECONDS
    while True:
        before = {name: cpu_seconds(process) for name, process in processes.items()}
        time.sleep(1.0)
        busy = {
            name: round(100 * (cpu_seconds(process) - before[name]), 1)
            for name, process in processes.items()
        }
        if max(busy.values()) < IDLE_PERCENT or time.monotonic() > deadline:
            return busy


def storm(
    server: Server,
    users: Users,
    scratch: Path,
    name: str,
    *,
    node: psutil.Process | None,
    settle: float,
    count_failures: bool = True,
) -> dict[str, Any]:
    """One connect storm from idle: the load client's account of it, and CPU per connect.
    Its sockets are closed again before it returns."""
    spec = scratch / f"{name}-spec.json"
    record = scratch / f"{name}-record.txt"
    ready = Path(f"{record}.ready")
    record.unlink(missing_ok=True)
    ready.unlink(missing_ok=True)
    content: dict[str, Any] = {
        "url": server.url.replace("http://", "ws://") + "/ws",
        "origin": server.url,
        "cookies": [] if users.tokens else users.cookies,
        "hello": True,
        "concurrency": CONNECT_CONCURRENCY,
        "connect_rate": CONNECT_RATE,
        "greet_timeout_s": GREET_TIMEOUT_SECONDS,
        "dial_retries": 3,
        "count_failures": count_failures,
    }
    if users.tokens:
        tokens = scratch / f"{name}-tokens.txt"
        tokens.write_text("\n".join(users.tokens) + "\n")
        content["auth_tokens"] = str(tokens)
    spec.write_text(json.dumps(content))
    sockets = len(users.tokens or users.cookies)
    idle = wait_idle(server, node, settle)
    _, log_start = log_warnings(server, 0)
    load_average = os.getloadavg()[0]
    server_before = cpu_seconds(server.ps)
    node_before = None if node is None else cpu_seconds(node)
    client = subprocess.Popen([str(WSLOAD), "subscribe", str(spec), str(record)])
    client_ps = psutil.Process(client.pid)
    # As the harness waits for its storms (rig.Subscribers): the paced storm, and then some.
    deadline = time.monotonic() + 300 + 3 * sockets / CONNECT_RATE
    try:
        while not ready.exists():
            if time.monotonic() > deadline or client.poll() is not None:
                raise SystemExit(
                    f"{name}: the load client did not connect its sockets; the server's log:\n"
                    + server.tail_of_log()
                )
            time.sleep(0.05)
        server_cpu = cpu_seconds(server.ps) - server_before
        node_cpu = None if node is None or node_before is None else cpu_seconds(node) - node_before
        client_cpu = cpu_seconds(client_ps)
        warnings, _ = log_warnings(server, log_start)
    finally:
        if client.poll() is None:
            client.send_signal(signal.SIGTERM)
        client.wait(timeout=60)
    connect: dict[str, Any] = json.loads(ready.read_text())
    per = 1000 / sockets
    return {
        "sockets": sockets,
        "greet_ms": connect["greet_ms"],
        "handshake_ms": connect["handshake_ms"],
        "greets_over_1s": connect["greets_over_1s"],
        "connect_seconds": round(connect["connect_seconds"], 2),
        "greeted_per_s": round(connect["sockets"] / max(connect["connect_seconds"], 1e-9), 1),
        "failed": connect.get("failed", 0),
        "errors": connect.get("errors") or [],
        "dial_retries": connect["dial_retries"],
        "server_cpu_ms_per_connect": round(server_cpu * per, 3),
        "es_cpu_ms_per_connect": None if node_cpu is None else round(node_cpu * per, 3),
        "client_cpu_ms_per_connect": round(client_cpu * per, 3),
        "server_log_warnings": warnings,
        "load_average": round(load_average, 2),
        "idle_cpu_percent": idle,
    }


async def verify_alone(settings: Settings, tokens: list[str]) -> float:
    """Microseconds per `Tokens.verify` in this process (the server's check, nothing else),
    the median of five passes over `tokens`."""
    checker = Tokens(settings)
    try:
        await checker.verify(tokens[0])  # the JWKS read, once
        passes = []
        for _ in range(5):
            started = time.perf_counter()
            for token in tokens:
                await checker.verify(token)
            passes.append((time.perf_counter() - started) / len(tokens) * 1e6)
        return round(statistics.median(passes), 1)
    finally:
        await checker.close()


@contextmanager
def elasticsearch(scratch: Path) -> Iterator[tuple[str, psutil.Process | None]]:
    """ELASTICSEARCH_URL (its CPU not read), else a fresh dev node and its process."""
    url = os.environ.get("ELASTICSEARCH_URL")
    if url:
        yield url, None
        return
    node = DevNode.configured(from_environment(), scratch / "node", heap="1g")
    state, _ = node.start(free_port())
    try:
        yield state.url, psutil.Process(state.pid)
    finally:
        node.stop()


def median_of(storms: list[Storm], value: str) -> float | None:
    values = [_read(storm, value) for storm in storms]
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _read(storm: Storm, value: str) -> float | None:
    if value.startswith("greet_"):
        return storm.greet_ms.get(value.removeprefix("greet_"))
    result = getattr(storm, value)
    return None if result is None else float(result)


# What is compared, and its column: greeting times in ms, CPU in ms per connect.
COMPARED = [
    ("greet_p50", "greet p50"),
    ("greet_p99", "greet p99"),
    ("greet_max", "greet max"),
    ("server_cpu_ms_per_connect", "server CPU"),
    ("es_cpu_ms_per_connect", "ES CPU"),
    ("client_cpu_ms_per_connect", "client CPU"),
    ("connect_seconds", "storm s"),
]


def summarize(storms: list[Storm]) -> dict[str, Any]:
    """Per label the medians over rounds; per server, token ÷ anonymous: the median of each
    round's ratio (the two storms of one round ran side by side), with the rounds' range,
    and the median difference in CPU ms per connect."""
    labels = [label for pair in STORMS.values() for label in pair]
    medians = {
        label: {key: median_of([s for s in storms if s.label == label], key) for key, _ in COMPARED}
        | {"failed": sum(s.failed for s in storms if s.label == label)}
        for label in labels
    }
    ratios: dict[str, Any] = {}
    for anonymous, token in STORMS.values():
        by_round = {
            s.round: s for s in storms if s.label == anonymous
        }  # the same round's anonymous storm on the same server
        paired = [
            (by_round[s.round], s) for s in storms if s.label == token and s.round in by_round
        ]
        entry: dict[str, Any] = {}
        for key, _ in COMPARED:
            per_round = []
            for before, after in paired:
                a, b = _read(before, key), _read(after, key)
                if a is not None and b is not None and a > 0:
                    per_round.append(b / a)
            if per_round:
                entry[key] = {
                    "median": round(statistics.median(per_round), 3),
                    "rounds": [round(r, 3) for r in per_round],
                }
        differences = [
            after.server_cpu_ms_per_connect - before.server_cpu_ms_per_connect
            for before, after in paired
        ]
        if differences:
            entry["server_cpu_ms_per_connect_difference"] = round(statistics.median(differences), 3)
        ratios[f"{token} ÷ anonymous"] = entry
    return {"medians": medians, "ratios": ratios}


def print_summary(summary: dict[str, Any], sockets: int, rounds: int) -> None:
    print(
        f"\nEqual work, side by side: {sockets} sockets a storm, {rounds} rounds, medians "
        "(token ÷ anonymous: the median of each round's ratio, on the same server); greeting "
        "times in ms from dial to hello, CPU in ms per connect",
        flush=True,
    )
    header = f"{'':26s}" + "".join(f"{title:>11s}" for _, title in COMPARED) + f"{'failed':>8s}"
    print(header)
    for anonymous, token in STORMS.values():
        for label in (anonymous, token):
            row = summary["medians"][label]
            cells = "".join(
                f"{'-' if row[key] is None else format(row[key], '.2f'):>11s}"
                for key, _ in COMPARED
            )
            print(f"{label:26s}{cells}{row['failed']:>8d}")
        ratio = summary["ratios"][f"{token} ÷ anonymous"]
        cells = "".join(
            f"{format(ratio[key]['median'], '.2f') + 'x' if key in ratio else '-':>11s}"
            for key, _ in COMPARED
        )
        print(f"{'  ' + token + ' ÷ anonymous':26s}{cells}")
        if "server_cpu_ms_per_connect_difference" in ratio:
            print(
                f"{'':26s}server CPU per connect, token - anonymous: "
                f"{ratio['server_cpu_ms_per_connect_difference']:+.3f} ms "
                f"(ratios by round: {ratio['server_cpu_ms_per_connect']['rounds']}; "
                f"greeting p99 by round: {ratio.get('greet_p99', {}).get('rounds')})"
            )


def print_storm(storm: Storm) -> None:
    greet = storm.greet_ms
    es_cpu = "-" if storm.es_cpu_ms_per_connect is None else f"{storm.es_cpu_ms_per_connect:.2f}"
    print(
        f"  round {storm.round} {storm.label:26s} {storm.sockets} sockets in "
        f"{storm.connect_seconds:.1f} s ({storm.greeted_per_s:.0f}/s): greeting p50 "
        f"{greet.get('p50')} p99 {greet.get('p99')} max {greet.get('max')} ms; CPU ms/connect "
        f"server {storm.server_cpu_ms_per_connect:.2f}, Elasticsearch {es_cpu}, client "
        f"{storm.client_cpu_ms_per_connect:.2f}; {storm.failed} failed, {storm.dial_retries} "
        f"retried, {storm.server_log_warnings} server warnings (load {storm.load_average}; "
        f"CPU % of a core before it: {storm.idle_cpu_percent})",
        flush=True,
    )
    for error in storm.errors:
        print(f"    {error}", flush=True)


def keep_logs(scratch: Path) -> None:
    """The servers' logs, kept in LOG_DIR for a look at what went wrong."""
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    for log in scratch.glob("*.log"):
        shutil.copy(log, LOG_DIR / log.name)


def git_commit() -> str:
    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        return run.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (with uncommitted changes)" if changed else head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=5_000, help="sockets a storm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 sockets a storm, 2 rounds")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before a storm")
    parser.add_argument("--report", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args()
    if args.quick:
        args.sockets, args.rounds = 1_000, 2
    build_wsload()
    raise_file_limit(args.sockets + SPARE_FILES)
    began, load_at_start = time.monotonic(), os.getloadavg()
    storms: list[Storm] = []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="percolert-auth-")))
        stack.callback(keep_logs, scratch)
        url, node = stack.enter_context(elasticsearch(scratch))
        endpoint = stack.enter_context(jwks_server(JwksEndpoint()))
        shop = Shop(endpoint)
        env = {**os.environ, "ELASTICSEARCH_URL": url, "PERCOLERT_INDEX_PREFIX": PREFIX}
        subprocess.run(
            [sys.executable, "-m", "percolert.cli", "setup", "--recreate"],
            env=env,
            check=True,
            capture_output=True,
        )
        settings = Settings(elasticsearch_url=url, index_prefix=PREFIX, elasticsearch_timeout=120)
        # Every storm's users (and the warm-up's), minted and their watches loaded first.
        plan: list[tuple[int, str, str, bool, Users]] = []
        for number in range(args.rounds + 1):  # round 0: the warm-up, not recorded
            sockets = WARM_SOCKETS if number == 0 else args.sockets
            for server, (anonymous, token) in STORMS.items():
                plan.append((number, server, anonymous, False, make_users(shop, sockets, None, "")))
                plan.append(
                    (
                        number,
                        server,
                        token,
                        True,
                        make_users(shop, sockets, server, f"{number}-{server}"),
                    )
                )
        users = [user for *_, made in plan for user in made.ids]
        started = time.monotonic()
        asyncio.run(load_watches(settings, users))
        print(
            f"{len(users)} users' watches loaded in {time.monotonic() - started:.1f} s; tokens "
            f"minted (the shop's cost, not measured): "
            + ", ".join(
                f"{algorithm} {1e6 * shop.mint_seconds[algorithm] / shop.minted[algorithm]:.0f} "
                "µs each"
                for algorithm in shop.minted
            ),
            flush=True,
        )
        common = {"PERCOLERT_INDEX_PREFIX": PREFIX, "PERCOLERT_SECRET": SECRET}
        # A deployment takes a secret or a JWKS, not both: one server each.
        keys = {
            "HS256": {"PERCOLERT_JWT_SECRET": shop.secret},
            "RS256": {"PERCOLERT_JWKS_URL": endpoint.url, "PERCOLERT_JWKS_ALLOW_HTTP": "true"},
        }
        servers: dict[str, Server] = {}
        for algorithm, key in keys.items():
            servers[algorithm] = Server(
                "percolert-per-user",
                url,
                scratch,
                name=f"auth-{algorithm.lower()}",
                extra_env={**common, **key},
            )
            stack.callback(servers[algorithm].stop)
        verify_us = {
            "HS256": asyncio.run(
                verify_alone(
                    Settings(jwt_secret=shop.secret),
                    [shop.token("HS256", f"verify-{n}") for n in range(200)],
                )
            ),
            "RS256": asyncio.run(
                verify_alone(
                    Settings(jwks_url=endpoint.url, jwks_allow_http=True),
                    [shop.key.token(f"verify-{n}", expires_in=600) for n in range(200)],
                )
            ),
        }
        print(
            "Tokens.verify alone, in this process: "
            + ", ".join(f"{algorithm} {us} µs" for algorithm, us in verify_us.items()),
            flush=True,
        )
        for number in range(args.rounds + 1):
            # Which server goes first, and on each which of its two storms, alternate round
            # by round: neither kind always follows the other.
            servers_order = list(STORMS) if number % 2 == 0 else list(STORMS)[::-1]
            for server_name in servers_order:
                position = list(STORMS).index(server_name)
                pair = [entry for entry in plan if entry[0] == number and entry[1] == server_name]
                if (number + position) % 2:
                    pair.reverse()
                for _, _, label, by_token, made in pair:
                    name = f"r{number}-{label.split()[0]}-{server_name}"
                    measured = storm(
                        servers[server_name],
                        made,
                        scratch,
                        name,
                        node=node,
                        settle=args.settle,
                        # The warm-up must not fail: a failure there is a broken setup.
                        count_failures=number > 0,
                    )
                    if number == 0:
                        print(
                            f"  warm-up {label}: {measured['sockets']} sockets, greeting p50 "
                            f"{measured['greet_ms'].get('p50')} ms",
                            flush=True,
                        )
                        continue
                    result = Storm(
                        label=label, server=server_name, token=by_token, round=number, **measured
                    )
                    storms.append(result)
                    print_storm(result)
    summary = summarize(storms)
    print_summary(summary, args.sockets, args.rounds)
    command = "PYTHONPATH=. python -m bench.auth_storm " + shlex.join(sys.argv[1:])
    about = {
        "command": command.strip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cores": os.cpu_count(),
        "sockets": args.sockets,
        "rounds": args.rounds,
        "tabs": TABS,
        "connect_concurrency": CONNECT_CONCURRENCY,
        "connect_rate": CONNECT_RATE,
        "elasticsearch": "ELASTICSEARCH_URL" if node is None else "own dev node (1g heap)",
        "minutes": round((time.monotonic() - began) / 60, 1),
        "load_average_start": [round(value, 2) for value in load_at_start],
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "mint_us_per_token": {
            algorithm: round(1e6 * shop.mint_seconds[algorithm] / shop.minted[algorithm], 1)
            for algorithm in shop.minted
        },
        "verify_us_alone": verify_us,
    }
    print(f"{about['minutes']} minutes; {command}", flush=True)
    if args.report is not None:
        path = args.report if args.report.is_absolute() else ROOT / args.report
        report = {"run": about, **summary, "storms": [asdict(s) for s in storms]}
        path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
