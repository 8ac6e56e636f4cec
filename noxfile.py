"""One command per job: `nox -s lint tests` checks everything (CI runs exactly that),
`nox -s demo` runs the whole product locally, `nox -s bench_search` measures search."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("-e", ".[test,dev]")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "noxfile.py")
    session.run("ruff", "check", "src", "tests", "bench", "noxfile.py")
    session.run("mypy")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite against a real Elasticsearch (ELASTICSEARCH_URL, else a dev node)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Dev node, indices, sample catalog and server at http://127.0.0.1:8000; Ctrl-C stops."""
    session.install("-e", ".")
    session.run("percolert", "up", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Search-to-alert, Percolert beside the seed design; `nox -s bench -- --quick` < 3 min.
    Writes docs/benchmarks/results.{json,md} and latency_vs_rate.png. Needs Go (the load
    client in tools/wsload is built on first use)."""
    session.install("-e", ".[test,bench]")
    session.run("python", "bench/harness.py", *session.posargs, env={"PYTHONPATH": "."})


@nox.session(python=PYTHON)
def bench_search(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run(
        "python",
        "bench/search_latency.py",
        "--report",
        "docs/benchmarks/search.json",
        *session.posargs,
        env={"PYTHONPATH": "."},
    )
