"""The benchmark rig that bench/harness.py and bench/cluster.py (and the smaller scripts)
run on: the server under test in its own process, the users it serves, the Go load client
(tools/wsload: the subscriber sockets, and the open-loop search driver) and the probes read
around each step (the server's /metrics, Elasticsearch's own clocks, CPU time). It knows
nothing of what a benchmark reports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import httpx
import psutil

from bench.cpu_budget import CpuBudget
from bench.reconnect import DroppedSocket, read_record
from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.watches.store import WatchStore
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
REPORT_DIR = ROOT / "docs" / "benchmarks"
PREFIX = "bench"
WSLOAD_SOURCE = ROOT / "tools" / "wsload"
WSLOAD = ROOT / ".percolert" / "bin" / "wsload"
CLOSED_MARK = "!closed"  # wsload's record line for a socket the server closed
# Reconnect rounds (wsload's spec `reconnect`): a round starts on this signal.
RECONNECT_SIGNAL = signal.SIGUSR1
# The connect storm (wsload subscribe): handshakes and greetings in flight at once, and new
# sockets a second: 10k sockets in ~10 s, below what the server greets (each greeting reads
# watches and history from Elasticsearch) on the shared machine.
CONNECT_CONCURRENCY = 64
CONNECT_RATE = 1_000.0
GREET_TIMEOUT_SECONDS = 30.0
# Designs whose users each register one watch word (alerts-off: the same, not percolated).
PER_USER = {
    "percolert-per-user",
    "percolert-alerts-off",
    "percolert-redis-1",
    "percolert-redis-2",
    "centrifugo-per-user",
}
# Designs whose one default watch reaches every socket.
BROADCAST = {"percolert-broadcast", "centrifugo-broadcast"}
# Per-user mode: subscribers are spread over these words; a search names one of them.
GROUP_WORDS = [
    "sony",
    "apple",
    "samsung",
    "bose",
    "kindle",
    "anker",
    "lenovo",
    "garmin",
    "canon",
    "jbl",
    "dell",
    "asus",
    "google",
    "nintendo",
    "beats",
    "sonos",
    "fujifilm",
    "nikon",
    "microsoft",
    "amazon",
    "headphones",
    "laptop",
    "charger",
    "camera",
    "speaker",
    "tablet",
    "watch",
    "earbuds",
    "tv",
    "soundbar",
    "controller",
    "router",
    "vacuum",
    "thermostat",
    "doorbell",
    "mouse",
    "keyboard",
    "drone",
    "lens",
    "ring",
]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 2)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 2)}


class Served:
    """A process a benchmark starts and waits for (a server under test, or its peer): its
    output in a log, for the tail printed when something fails."""

    name: str
    url: str
    ready_path: str
    log: Path
    process: subprocess.Popen[bytes]
    ps: psutil.Process

    def start(
        self,
        command: list[str],
        env: dict[str, str],
        scratch: Path,
        *,
        cwd: Path = ROOT,
        ready_seconds: float = 60.0,
    ) -> None:
        """Run `command` (its output in scratch/<name>.log) and wait until `ready_path`
        answers; a process that does not is killed, and the run ends with its log's tail."""
        self.log = scratch / f"{self.name}.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
            )
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + ready_seconds
        while True:
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()
                raise SystemExit(f"{self.name} did not start:\n{self.tail_of_log()}")
            time.sleep(0.2)

    def routine(self, line: str) -> bool:
        """Whether a line of its log is routine (info), left out of tail_of_log."""
        return '"level":"info"' in line

    def tail_of_log(self, lines: int = 30) -> str:
        """The last lines of its log that are not routine (info) ones."""
        unusual = [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if not self.routine(line)
        ]
        return "\n".join(unusual[-lines:])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Server(Served):
    """The server under test, in its own process."""

    def __init__(
        self,
        design: str,
        node_url: str,
        scratch: Path,
        *,
        redis_url: str | None = None,
        name: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.design = design
        self.name = name or design  # names its files in the scratch directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "ELASTICSEARCH_URL": node_url,
            "PERCOLERT_INDEX_PREFIX": PREFIX,
            "PERCOLERT_STATE_DIR": str(scratch / "app"),
            "PERCOLERT_COALESCE_SECONDS": "0",
            "PERCOLERT_MAX_WATCHES_PER_USER": "1000",
            # Steady state at once: past its restart window, a server alerts only owners who
            # are connected (nobody disconnects during a run, so the grace's length does
            # not matter otherwise; the default is 10 minutes, the restart window 1 minute).
            "PERCOLERT_RECONNECT_GRACE_SECONDS": "5",
            # The load client is one address driving hundreds of searches a second and
            # thousands of sessions and sockets: far past any shopper's limits.
            "PERCOLERT_RATE_LIMITS": "off",
            # Every search of the broadcast designs matches the one default watch, and each
            # of the per-user designs' few words: broad by design, never paused (a watch
            # matching over 20 % of 200 searches otherwise pauses, and alerts nobody).
            "PERCOLERT_BROAD_WATCH_SHARE": "1",
            "PRODUCTS_INDEX": f"{PREFIX}-products",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),  # this checkout
        }
        env.update(extra_env or {})
        if design == "percolert-alerts-off":
            env["PERCOLERT_ALERTS"] = "off"
        if redis_url is not None:
            env["PERCOLERT_REDIS_URL"] = redis_url
            env["PERCOLERT_INSTANCE_ID"] = self.name
        if design.startswith("baseline"):
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.baseline:app",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ]
            self.ready_path = "/search?q=ready"
        else:
            command = [sys.executable, "-m", "percolert.cli", "serve", "--port", str(self.port)]
            self.ready_path = "/readyz"
        self.start(command, env, scratch)

    def routine(self, line: str) -> bool:
        # Its own JSON log lines, and uvicorn's ("INFO:     ...").
        return super().routine(line) or line.startswith("INFO:")


async def make_users(
    base: str, users: int, design: str, settings: Settings | None = None
) -> list[tuple[str | None, str | None]]:
    """(cookie, group word) per user; per-user mode also registers each user's watch: with
    `settings`, all of them in one bulk load (WatchStore.add_many, as `watches seed` does),
    else one POST /api/watches each, which refreshes the watches index every time (~600 ms
    at 100k watches on a busy machine: 5,000 users took ~13 minutes)."""
    if design.startswith("baseline"):
        return [(None, None)] * users
    limits = httpx.Limits(max_connections=50)
    semaphore = asyncio.Semaphore(50)
    one_by_one = settings is None

    async def one(number: int) -> tuple[str | None, str | None]:
        word = GROUP_WORDS[number % len(GROUP_WORDS)] if design in PER_USER else None
        if not one_by_one:
            # POST /api/session starts a session for a request without a cookie. A request
            # built here and sent as it is carries none from the shared client's jar.
            async with semaphore:
                issued = await shared.send(httpx.Request("POST", f"{base}/api/session", json={}))
            cookie = issued.cookies.get(COOKIE_NAME)
            assert cookie is not None, issued.headers
            return cookie, word
        async with semaphore, httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            await http.post("/api/session", json={})  # as the page does, first
            if word is not None:
                for attempt in range(5):
                    response = await http.post("/api/watches", json={"terms": word})
                    # As a page would: Elasticsearch too slow for once (a busy shared
                    # machine) is a 503 with Retry-After, not the end of the run.
                    if response.status_code != 503 or attempt == 4:
                        break
                    print(f"  user {number}: 503 {response.text[:200]}, retrying", flush=True)
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                response.raise_for_status()
            return http.cookies[COOKIE_NAME], word

    # One client for every session: a client each (its own TLS context, although unused)
    # cost the harness ~35 ms of CPU per user, 11 users/s on the busy machine.
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as shared:
        made = list(await asyncio.gather(*(one(number) for number in range(users))))
    if settings is not None and design in PER_USER:
        client = es.create_client(settings)
        try:
            store = WatchStore(
                client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=10**9
            )
            await store.add_many(
                (user_of(cookie), WatchSpec(terms=word))
                for cookie, word in made
                if cookie is not None and word is not None
            )
        finally:
            await client.close()
    return made


def user_of(cookie: str) -> str:
    """The user id a session cookie carries: its signed value is "<user>.<started ms>"
    (sessions.SessionSigner; a user id is URL-safe base64, without dots)."""
    return cookie.split(".", 1)[0]


def node_process(node_url: str) -> psutil.Process | None:
    """The process listening on the node's port, if this user may see it."""
    port = urlsplit(node_url).port or 9200
    try:
        for connection in psutil.net_connections("tcp"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr
                and connection.laddr.port == port
                and connection.pid
            ):
                return psutil.Process(connection.pid)
    except psutil.Error:
        return None
    return None


def build_wsload() -> Path:
    """The Go load client (tools/wsload), built once and again when its source changes."""
    sources = [*WSLOAD_SOURCE.glob("*.go"), WSLOAD_SOURCE / "go.mod", WSLOAD_SOURCE / "go.sum"]
    newest = max(source.stat().st_mtime for source in sources)
    if WSLOAD.exists() and WSLOAD.stat().st_mtime >= newest:
        return WSLOAD
    if shutil.which("go") is None:
        raise SystemExit("the benchmark's load client needs Go (https://go.dev/doc/install)")
    WSLOAD.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["go", "build", "-o", str(WSLOAD), "."], cwd=WSLOAD_SOURCE, check=True)
    return WSLOAD


class Target(Protocol):
    """What the subscriber sockets need of a server: a Server, or a test's own."""

    url: str
    name: str
    design: str

    def tail_of_log(self, lines: int = 30) -> str: ...


class Subscribers:
    """The subscriber sockets, held open by one `wsload subscribe` process.

    The connect storm is paced (CONNECT_CONCURRENCY handshakes and greetings in flight,
    CONNECT_RATE new sockets a second) so that 10k sockets measure the server, not the
    accept queue; `connect` holds wsload's account of it (seconds, greeting times).
    With `reconnect` (wsload's spec: share, delay_s, spread_s, away_s), `drop_some` starts
    a round that drops that share of the sockets and resumes them (bench/reconnect.py).
    `numbering` (first, step): these are the run's sockets first, first + step, ... of a
    run split over several load clients (bench/nodes.py); rounds and the record go by
    those numbers. With `budget`, the process runs inside it (bench/cpu_budget.py)."""

    def __init__(
        self,
        server: Target,
        cookies: list[str | None],
        scratch: Path,
        reconnect: dict[str, float] | None = None,
        numbering: tuple[int, int] = (0, 1),
        budget: CpuBudget | None = None,
    ) -> None:
        spec = scratch / f"{server.name}-sockets.json"
        spec.write_text(
            json.dumps(
                {
                    "url": server.url.replace("http://", "ws://") + "/ws",
                    "origin": server.url,
                    "cookies": cookies,
                    "hello": not server.design.startswith("baseline"),
                    "concurrency": CONNECT_CONCURRENCY,
                    "connect_rate": CONNECT_RATE,
                    "greet_timeout_s": GREET_TIMEOUT_SECONDS,
                    "dial_retries": 3,
                    **({"reconnect": reconnect} if reconnect else {}),
                    **split_numbering(numbering),
                }
            )
        )
        self.record = scratch / f"{server.name}-record.txt"
        self.scratch = scratch  # where `drive` writes what each search's answer said
        ready = Path(str(self.record) + ".ready")
        # A design runs once per configuration: the files of the last one must not pass for
        # this one's (a stale ready file once hid a load client that never connected).
        self.record.unlink(missing_ok=True)
        ready.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [str(WSLOAD), "subscribe", str(spec), str(self.record)],
            preexec_fn=None if budget is None else budget.join,
        )
        self.ps = psutil.Process(self.process.pid)
        # Paced: the storm itself takes len(cookies) / CONNECT_RATE seconds.
        deadline = time.monotonic() + 300 + 3 * len(cookies) / CONNECT_RATE
        while not ready.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()
                raise SystemExit(
                    "the load client did not connect its sockets; the server's log:\n"
                    + server.tail_of_log()
                )
            time.sleep(0.2)
        self.connect: dict[str, Any] = json.loads(ready.read_text())

    def alive(self) -> bool:
        """False once the load client has exited (all its sockets gone with it)."""
        return self.process.poll() is None

    def arrivals(self) -> tuple[dict[str, list[tuple[float, int]]], list[float]]:
        """What has arrived so far: (arrival time in epoch seconds, seq) by search id, and
        the times at which the server closed a socket. A Percolert alert names its search
        by when it was made, as the search's answer did (`drive`'s result files)."""
        rids = searches_by_time(self.scratch)
        received: dict[str, list[tuple[float, int]]] = defaultdict(list)
        closed: list[float] = []
        for line in self.record.read_text().splitlines():
            # A dropped socket's lines say which socket and connection (bench/reconnect.py).
            search, at, seq, *_ = line.split()
            if search == CLOSED_MARK:
                closed.append(float(at))
            elif not search.startswith("!"):
                received[rids.get(search, search)].append((float(at), int(seq)))
        return received, closed

    def drop_some(self) -> int:
        """Start a reconnect round; returns where the record ends now (await_round's
        start)."""
        ends = self.record.stat().st_size
        self.process.send_signal(RECONNECT_SIGNAL)
        return ends

    def await_round(self, since: int, timeout: float) -> bool:
        """Wait until the round started at record offset `since` has dropped its sockets and
        each is back or gave up; False when `timeout` seconds pass first. Reads only what
        the record gained: by then it may hold millions of alerts."""
        deadline = time.monotonic() + timeout
        dropped, done, rest = None, 0, b""
        with self.record.open("rb") as record:
            record.seek(since)
            while dropped is None or done < dropped:
                if time.monotonic() > deadline or not self.alive():
                    return False
                chunk = record.read()
                if not chunk:
                    time.sleep(0.2)
                    continue
                *whole, rest = (rest + chunk).split(b"\n")
                for line in whole:
                    if line.startswith((b"!resumed ", b"!unresumed ")):
                        done += 1
                    elif line.startswith(b"!round "):
                        dropped = int(line.split()[2])
        return True

    def dropped(self) -> dict[int, DroppedSocket]:
        """The sockets reconnect rounds drop, as the record tells them."""
        with self.record.open() as lines:
            sockets, _ = read_record(lines, searches_by_time(self.scratch))
        return sockets

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def split_numbering(numbering: tuple[int, int]) -> dict[str, int]:
    """wsload's `first_socket` and `socket_step`, left out for a run's only load client."""
    first, step = numbering
    return {} if (first, step) == (0, 1) else {"first_socket": first, "socket_step": step}


def scrape_metrics(base: str) -> dict[str, float]:
    """Percolert's percolate and search histograms so far (sums, counts, and how many took
    longer than 100 ms), from its /metrics."""
    answer = httpx.get(f"{base}/metrics", timeout=10)
    answer.raise_for_status()  # else every figure read from it would pass as zero
    text = answer.text
    values = {}
    for line in text.splitlines():
        if line.startswith(
            (
                "percolert_percolate_",
                "percolert_search_seconds",
                "percolert_gc_pause_seconds",
                "percolert_event_loop_lag_seconds",
            )
        ):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)

    def over(histogram: str, bound: str = "0.1") -> float:
        total = values.get(f"{histogram}_count", 0.0)
        return total - values.get(f'{histogram}_bucket{{le="{bound}"}}', 0.0)

    return {
        "percolate_seconds": values.get("percolert_percolate_seconds_sum", 0.0),
        "percolates": values.get("percolert_percolate_seconds_count", 0.0),
        "events": values.get("percolert_percolate_batch_size_sum", 0.0),
        "slow_percolates": over("percolert_percolate_seconds"),
        "slow_searches": over("percolert_search_seconds"),
        "lags_over_25ms": over("percolert_event_loop_lag_seconds", "0.025"),
        "lags_over_100ms": over("percolert_event_loop_lag_seconds"),
        "full_gcs": values.get('percolert_gc_pause_seconds_count{generation="2"}', 0.0),
        "full_gc_seconds": values.get('percolert_gc_pause_seconds_sum{generation="2"}', 0.0),
    }


def es_stats(node_url: str) -> dict[str, float]:
    """Elasticsearch's own clocks so far: JVM collections, and per index (`bench-` dropped)
    the time spent indexing, querying, refreshing and merging."""
    nodes = httpx.get(f"{node_url}/_nodes/_local/stats/jvm", timeout=10).json()["nodes"]
    collectors = next(iter(nodes.values()))["jvm"]["gc"]["collectors"]
    values = {
        "young_gc_ms": float(collectors["young"]["collection_time_in_millis"]),
        "old_gcs": float(collectors["old"]["collection_count"]),
    }
    stats = httpx.get(
        f"{node_url}/{PREFIX}-*/_stats/indexing,search,refresh,merge", timeout=10
    ).json()["indices"]
    for name, index in stats.items():
        short = name.removeprefix(f"{PREFIX}-").split("-v")[0]
        totals = index["primaries"]
        for clock, value in [
            ("index", totals["indexing"]["index_time_in_millis"]),
            ("query", totals["search"]["query_time_in_millis"]),
            ("fetch", totals["search"]["fetch_time_in_millis"]),
            ("refresh", totals["refresh"]["total_time_in_millis"]),
            ("merge", totals["merges"]["total_time_in_millis"]),
        ]:
            key = f"{short} {clock}"
            values[key] = values.get(key, 0.0) + float(value)
    return values


def searches_by_time(scratch: Path) -> dict[str, str]:
    """Search ids by when the server made each search (its answer's `at`), from every
    result file `drive` wrote in `scratch`."""
    rids: dict[str, str] = {}
    for result in scratch.glob("*-searches.txt"):
        for line in result.read_text().splitlines():
            rid, _, _, _, made = line.split()
            if made != "-":
                rids[made] = rid
    return rids


def search_path(design: str, number: int, rid: str) -> tuple[str, str]:
    """(path, group word) of search `number`; the baseline echoes `rid` in its notification,
    Percolert's alerts name the search by when it was made (`searches_by_time`)."""
    if design.startswith("baseline"):
        return "/search?" + urlencode({"q": "kindle", "rid": rid}), "kindle"
    word = GROUP_WORDS[number % len(GROUP_WORDS)] if design in PER_USER else "kindle"
    return "/api/search?" + urlencode({"q": f"{word} {rid}"}), word


def drive(
    server: Target,
    rate: float,
    seconds: float,
    tag: str,
    scratch: Path,
    *,
    also: Sequence[Target] | None = None,
    budget: CpuBudget | None = None,
) -> tuple[dict[str, float], dict[str, str], list[float], int]:
    """Open-loop searches by `wsload search`: send times and words by search id, search
    latencies (ms) and the number of failed searches. With `also`, the searches alternate
    between `server` and those (one session: the cookie is the host's, whatever the port).
    With `budget`, the driver runs inside it, beside the load client's sockets."""
    targets = [server, *(also or [])]
    words: dict[str, str] = {}
    requests = []
    for number in range(int(rate * seconds)):
        rid = f"{tag}-{number}"
        path, words[rid] = search_path(server.design, number, rid)
        if also:
            path = targets[number % len(targets)].url + path
        requests.append({"rid": rid, "path": path})
    plan, result = scratch / f"{tag}-plan.json", scratch / f"{tag}-searches.txt"
    # One session for all: the page's own call for it (the page itself starts none).
    warmup = "" if server.design.startswith("baseline") else "/api/watches"
    base = server.url
    if also:  # wsload requests base + path: the paths carry their instance's address
        base, warmup = "", server.url + warmup
    plan.write_text(
        json.dumps({"base": base, "warmup": warmup, "rate": rate, "requests": requests})
    )
    subprocess.run(
        [str(WSLOAD), "search", str(plan), str(result)],
        check=True,
        preexec_fn=None if budget is None else budget.join,
    )
    sent: dict[str, float] = {}
    latencies: list[float] = []
    errors = 0
    for line in result.read_text().splitlines():
        rid, at, ms, status, _ = line.split()
        sent[rid] = float(at)
        if status == "200":
            latencies.append(float(ms))
        else:
            errors += 1
    return sent, words, latencies, errors


def warm_up(node: psutil.Process, node_url: str, scratch: Path, seconds: float) -> None:
    """Searches and percolations through a Percolert server until Elasticsearch has warmed
    up: a fresh JVM spends most of a core compiling its hot code for minutes (seen here: the
    C2 compiler thread used more CPU than the searches), which a long-running cluster does
    not. Unrecorded; prints Elasticsearch's CPU per chunk so the warm-up can be judged."""
    server = Server("percolert-per-user", node_url, scratch)
    try:
        chunk, done = 10.0, 0.0
        while done < seconds:
            before, started = cpu_seconds(node), time.monotonic()
            drive(server, 50.0, chunk, f"warmup{int(done)}", scratch)
            busy = 100 * (cpu_seconds(node) - before) / (time.monotonic() - started)
            print(
                f"  warm-up {done:g}-{done + chunk:g} s: Elasticsearch CPU {busy:.0f}%", flush=True
            )
            done += chunk
    finally:
        server.stop()


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system
