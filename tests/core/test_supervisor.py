"""Background work outlives its failures: a batch that raises or never finishes is given up
(counted, logged) and later searches still alert; a loop that crashes is restarted, and
readiness says which loop is down meanwhile.

The faults are injected through the app's `percolator_type`: a percolator subclass that
fails on cue, talking to the real Elasticsearch otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import anyio
import httpx
import msgspec
import pytest

from percolert.core.settings import Settings
from percolert.watches.percolator import Audience, Match, Percolator, SearchEvent
from percolert.web.app import create_app
from tests.alerts.test_recovery import best_hit, first_found
from tests.servers import metric, run_server
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

RAISE = "fault raise"  # a search whose batch raises an unexpected error
HANG = "fault hang"  # a search whose batch never finishes


class Faults:
    """Switches the test flips; the server's percolator (in the server's thread) obeys."""

    def __init__(self) -> None:
        self.crashing = threading.Event()  # the percolate loop crashes, and again at restart
        self.hanging = threading.Event()  # set by the percolator once a batch hangs


def faulty_percolator(faults: Faults) -> type[Percolator]:
    class FaultyPercolator(Percolator):
        async def percolate(
            self, events: list[SearchEvent], *, audience: Audience = "searches"
        ) -> list[list[Match]]:
            texts = {event.text for event in events}
            if RAISE in texts:
                raise RuntimeError("injected: a bug while percolating")
            if HANG in texts:
                faults.hanging.set()
                await anyio.sleep_forever()
            return await super().percolate(events, audience=audience)

        async def run(self) -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(super().run)
                while not faults.crashing.is_set():  # set from the test's thread
                    await anyio.sleep(0.01)
                raise RuntimeError("injected: the percolate loop crashed")

    return FaultyPercolator


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def server(catalog_settings: Settings, faults: Faults) -> Iterator[str]:
    settings = msgspec.structs.replace(
        catalog_settings, coalesce_seconds=0.0, percolate_timeout=1.0
    )
    app = create_app(settings, percolator_type=faulty_percolator(faults))
    with run_server(settings, app=app) as url:
        yield url


async def test_a_batch_that_raises_is_counted_logged_and_skipped(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="percolert")
    failed = "percolert_percolate_batches_failed_total"
    before = metric(server, failed)
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("kindle")
        socket_a = await a.connect()
        await b.search(RAISE)
        await wait_until(
            lambda: metric(server, failed) == before + 1,
            timeout=20,
            what="the failed batch counted",
        )
        oasis = await best_hit(b, "kindle oasis")
        alert = await socket_a.next_alert(timeout=10)
        assert first_found(alert) == oasis
        await a.unwatch(watch["id"])
    logged = [r for r in caplog.records if r.name == "percolert.watches.percolator" and r.exc_info]
    assert logged, "the failure is logged with its traceback"
    assert "injected: a bug while percolating" in str(logged[0].exc_info[1])  # type: ignore[index]


async def test_a_batch_that_never_finishes_is_given_up(server: str, faults: Faults) -> None:
    failed = "percolert_percolate_batches_failed_total"
    before = metric(server, failed)
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("kindle")
        socket_a = await a.connect()
        await b.search(HANG)
        await wait_until(faults.hanging.is_set, timeout=20, what="the batch to hang")
        # Percolated beside the hung batch, handed on after it in search order: once the
        # hung one is given up (percolate_timeout), not never.
        scribe = await best_hit(b, "kindle scribe")
        alert = await socket_a.next_alert(timeout=10)
        assert first_found(alert) == scribe
        assert metric(server, failed) == before + 1
        await a.unwatch(watch["id"])


async def test_a_crashed_loop_restarts_and_readiness_says_so_while_down(
    server: str, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="percolert")
    assert httpx.get(f"{server}/readyz", timeout=10).status_code == 200
    restarts = "percolert_background_restarts_total"
    faults.crashing.set()  # crashes now, and at every restart until cleared
    answers: list[httpx.Response] = []

    def not_ready() -> bool:
        answers.append(httpx.get(f"{server}/readyz", timeout=10))
        return answers[-1].status_code == 503

    await wait_until(not_ready, timeout=20, what="readiness to name the crashed loop")
    assert answers[-1].json()["error"]["code"] == "background_down"
    assert "percolator" in answers[-1].json()["error"]["message"]
    assert metric(server, restarts, loop="percolator") >= 1
    crashes = [r for r in caplog.records if r.name == "percolert.core.supervisor" and r.exc_info]
    assert crashes, "the crash is logged with its traceback"

    faults.crashing.clear()
    await wait_until(
        lambda: httpx.get(f"{server}/readyz", timeout=10).status_code == 200,
        timeout=20,
        what="readiness back",
    )
    # The restarted loop percolates again.
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("kindle")
        socket_a = await a.connect()
        paperwhite = await best_hit(b, "kindle paperwhite")
        alert = await socket_a.next_alert(timeout=10)
        assert first_found(alert) == paperwhite
        await a.unwatch(watch["id"])
