"""The sessions behind `./dev`: `./dev test` runs `lint`, `docs`, `tests` and `tests_redis`
(CI runs exactly that), `./dev demo` runs `demo`; `nox -s bench` and `nox -s bench_search`
measure.

Every session installs exactly what `uv.lock` says (`uv sync --locked`): a fresh clone gets
the versions the suite last passed on, never whatever is newest that day. `latest` is the one
exception, on purpose: it resolves the newest versions `pyproject.toml` allows, to see drift
before `./dev lock --upgrade` takes it (docs/development.md)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "docs", "tests", "tests_redis"]
nox.options.reuse_existing_virtualenvs = True
# Virtual environments made by uv (which ./dev installs beside nox): seconds, not minutes.
nox.options.default_venv_backend = "uv"

# None: the interpreter nox runs on (./dev makes it the first Python 3.11+ it finds), so a
# machine with only 3.12 or 3.13 needs nothing more.
PYTHON = None

STALE_LOCK = (
    "uv.lock does not match pyproject.toml. Run `./dev lock` (uv lock) and commit uv.lock; "
    "`./dev lock --upgrade` also moves every package to the newest version the ranges allow."
)


def install_locked(session: nox.Session, *groups: str) -> None:
    """The project (editable) and the named dependency groups, exactly as locked; anything
    else in the session's environment is removed."""
    try:
        session.run_install("uv", "lock", "--check", "--quiet", silent=True)
    except nox.command.CommandFailed:
        session.error(STALE_LOCK)
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--no-default-groups",
        *(f"--group={group}" for group in groups),
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        silent=True,
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Formatting, lint, types and the package's layer contracts (`lint-imports`)."""
    install_locked(session, "lint")
    lint_checks(session)


def lint_checks(session: nox.Session) -> None:
    session.run("ruff", "format", "--check", "src", "tests", "bench", "examples", "noxfile.py")
    session.run("ruff", "check", "src", "tests", "bench", "examples", "noxfile.py")
    session.run("mypy")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite against a real Elasticsearch (ELASTICSEARCH_URL, else a dev node)."""
    install_locked(session, "test")
    session.run("pytest", *session.posargs)


# What a shared broker changes: delivery, sockets, watches and product alerts as shoppers see
# them. The rest of the suite does not depend on the broker (or runs on Redis already:
# tests/broker, tests/cluster).
ON_EITHER_BROKER = [
    "tests/accounts",
    "tests/alerts",
    # Off-site delivery: its end-to-end tests, two instances among them, on a shared Redis.
    "tests/offsite",
    # The demand view: what the alerts did, counted across instances.
    "tests/insights",
    "tests/realtime",
    "tests/web",
    "tests/products",
    "tests/watches",
]


@nox.session(python=PYTHON)
def tests_redis(session: nox.Session) -> None:
    """The tests of what a shared broker changes, again with every server on the Redis
    broker (PERCOLERT_TEST_BROKER=redis): the same behaviour is expected of it. Arguments go
    to pytest; test paths among them replace the folders."""
    install_locked(session, "test")
    # Paths among the arguments choose the tests; options alone (-x, -k NAME) apply to these.
    chosen = any(arg.startswith("tests") for arg in session.posargs)
    folders = [] if chosen else ON_EITHER_BROKER
    session.run("pytest", *folders, *session.posargs, env={"PERCOLERT_TEST_BROKER": "redis"})


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Dev node, indices, sample catalog and server at http://127.0.0.1:8000; Ctrl-C stops.
    Arguments go to `percolert up` (`./dev demo --instances 2`: two servers, one dev Redis)."""
    install_locked(session)
    session.run("percolert", "up", *session.posargs)


@nox.session(python=PYTHON)
def devnode(session: nox.Session) -> None:
    """`percolert devnode ARGS` for the demo's node."""
    install_locked(session)
    session.run("percolert", "devnode", *session.posargs)


@nox.session(python=PYTHON)
def stop(session: nox.Session) -> None:
    """Stop the dev node and the dev Redis left running (`./dev stop`, `./dev reset`)."""
    install_locked(session)
    session.run("percolert", "devnode", "stop")
    session.run("percolert", "redis", "stop")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Search-to-alert, Percolert beside the seed design; `nox -s bench -- --quick` < 3 min.
    Writes docs/benchmarks/results.{json,md} and latency_vs_rate.png. Needs Go (the load
    client in tools/wsload is built on first use). `-- --configs 1000000:10000`: 1M watches
    and 10k sockets, after a 100k reference with the same sockets (`--es-heap`, `--reference`;
    the harness raises its open-file limit for the sockets). `-- --instances 2 [--quick]`: one
    instance versus two sharing one Redis (docs/benchmarks/multi-instance-results.md).
    `-- --peer centrifugo [--quick]`: beside Centrifugo (docs/benchmarks/peer-results.md); each
    design that alerts ends with a reconnect step; `--peer-nodes 2` (or `1,2`) runs it on two
    nodes sharing a Redis. Its `--quick` (10k watches, 1k sockets): about 8 minutes."""
    install_locked(session, "test", "bench")
    session.run("python", "bench/harness.py", *session.posargs, env={"PYTHONPATH": "."})


@nox.session(python=PYTHON)
def bench_ingest(session: nox.Session) -> None:
    """Catalog changes: change-detecting ingest with product alerts beside a plain ingest of
    the same file, and admin price drop to socket latency; `-- --quick` about 2 minutes.
    Writes docs/benchmarks/product-alerts-results.{json,md}."""
    install_locked(session, "test", "bench")
    session.run("python", "bench/ingest_changes.py", *session.posargs, env={"PYTHONPATH": "."})


@nox.session(python=PYTHON)
def bench_offsite(session: nox.Session) -> None:
    """Off-site delivery: one price drop watched by 10k away customers, to the last webhook
    and e-mail at local receivers, on the node of ELASTICSEARCH_URL (default the dev node);
    `-- --quick` (1,000 customers) about a minute. Writes docs/benchmarks/offsite-delivery.*"""
    install_locked(session, "test", "bench")
    session.run("python", "bench/offsite_delivery.py", *session.posargs, env={"PYTHONPATH": "."})


@nox.session(python=PYTHON)
def bench_insights(session: nox.Session) -> None:
    """The admin's demand view under load: search latency at 100 searches/s with the search
    log off and on, and with the admin page refreshing every 5 s (cached, and the cache off),
    in interleaved turns, on the node of ELASTICSEARCH_URL (default the dev node) with a
    7-day search log history; `-- --quick` about 4 minutes. Writes
    docs/benchmarks/insights-load.*"""
    install_locked(session, "test", "bench")
    session.run(
        "python", "bench/insights_load.py", "--report", *session.posargs, env={"PYTHONPATH": "."}
    )


@nox.session(python=PYTHON)
def bench_routing(session: nox.Session) -> None:
    """Per-user Pub/Sub channels versus per-instance inbox streams, on a real redis-server
    (docs/design/multi-instance.md §2)."""
    install_locked(session, "test", "bench")
    session.run("python", "bench/broker_routing.py", *session.posargs, env={"PYTHONPATH": "."})


@nox.session(python=PYTHON)
def bench_search(session: nox.Session) -> None:
    install_locked(session, "test")
    session.run(
        "python",
        "bench/search_latency.py",
        "--report",
        "docs/benchmarks/search.json",
        *session.posargs,
        env={"PYTHONPATH": "."},
    )


@nox.session(python=PYTHON)
def latest(session: nox.Session) -> None:
    """Lint and the whole suite on the newest versions the ranges in pyproject.toml allow,
    ignoring the lock (not part of CI): drift shows here first, on purpose. Arguments go to
    pytest. When it passes, `./dev lock --upgrade` takes the new versions."""
    session.run_install(
        "uv",
        "pip",
        "install",
        "--upgrade",
        "--refresh",
        "--resolution=highest",
        "-e",
        ".",
        "--group=lint",
        env={"VIRTUAL_ENV": session.virtualenv.location},
    )
    session.run("uv", "pip", "list", "--format=freeze", silent=False)
    lint_checks(session)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The docs site, built strict (a broken link or anchor fails): site/. Arguments are
    not passed on: `./dev test ARGS` gives them to pytest."""
    install_locked(session, "docs")
    # Material's notice about MkDocs 2 is advice to maintainers, not about this site.
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
