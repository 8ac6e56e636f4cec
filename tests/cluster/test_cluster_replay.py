"""Replay across instances: what one instance sent but has not yet written to the alert log
is replayed by another, and what an instance killed with SIGKILL never wrote still reaches
its pages (real servers, one of them a real `percolert serve` process, real Redis and
Elasticsearch, real WebSocket clients)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from percolert.core.settings import Settings
from percolert.engine import es, indices
from tests.conftest import SAMPLE_CATALOG, delete_indices, make_settings, prepare_indices
from tests.servers import answering, free_port, metric, run_server, serve_process
from tests.shoppers import Shopper, Socket
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

NEVER = 3600.0  # an alert-log flush interval no test outlasts: sendings stay unwritten


@pytest.fixture(scope="module")
def settings(elasticsearch_url: str, redis_url: str) -> Iterator[Settings]:
    """No coalescing (each search alerts each owner once, at once), one secret for every
    instance (a session opened on one is valid on the other)."""
    settings = make_settings(
        elasticsearch_url,
        redis_url=redis_url,
        coalesce_seconds=0.0,
        secret=secrets.token_urlsafe(32),
    )
    prepare_indices(settings, catalog=SAMPLE_CATALOG)
    try:
        yield settings
    finally:
        asyncio.run(delete_indices(settings))


def _keys(settings: Settings) -> str:
    return f"percolert:{{{settings.index_prefix}}}"


async def _logged(settings: Settings, watch_id: str, after: int) -> list[int]:
    """Positions after `after` of the log's sendings through `watch_id`, in order."""
    client = es.create_client(settings)
    try:
        found = await client.search(
            index=indices.alias_for(settings, "alerts"),
            query={"range": {"seq": {"gt": after}}},
            source_includes=["seq", "alert.watches"],
            sort=[{"seq": "asc"}],
            size=1000,
        )
    finally:
        await client.close()
    return [
        hit["_source"]["seq"]
        for hit in found["hits"]["hits"]
        if any(w["id"] == watch_id for w in hit["_source"]["alert"].get("watches", {}).values())
    ]


async def test_an_alert_another_instance_has_not_yet_written_is_replayed(
    settings: Settings,
) -> None:
    slow = msgspec.structs.replace(
        settings, alert_log_flush_seconds=NEVER, instance_id=f"slow-{uuid.uuid4().hex[:6]}"
    )
    quick = msgspec.structs.replace(settings, instance_id=f"quick-{uuid.uuid4().hex[:6]}")
    raw = redis.Redis.from_url(settings.redis_url or "")
    with run_server(slow) as one, run_server(quick) as two:
        async with Shopper(one) as a, Shopper(one) as b:
            watch = await a.watch("kindle")
            away = await a.connect()
            last_seq = away.hello["last_seq"]
            await away.close()
            await b.search("Kindle Paperwhite")  # alerts A (away, within the grace) on 1
            await wait_until(
                lambda: metric(one, "percolert_alerts_created_total") >= 1,
                what="instance 1 to alert A",
            )
            assert await _logged(settings, watch["id"], last_seq) == []  # not written
            resumed = await a.connect(after=last_seq, base_url=two)
            alert = await resumed.next_alert()
            assert alert is not None
            assert alert["watch"]["id"] == watch["id"]
            # The greeting's position covers the replay: the newest of A's alerts it holds.
            assert last_seq < alert["seq"] == resumed.hello["last_seq"]
            assert await a.alerts_before_marker(resumed, b) == []  # nothing twice
            # A sending leaves its maker's mirror once its maker has written it.
            await b.http.get(f"{two}/api/search", params={"q": "Kindle Oasis"})
            live = await resumed.next_alert()
            assert live is not None
            mirror = f"{_keys(settings)}:log:{quick.instance_id}"
            await wait_until(lambda: raw.xlen(mirror) == 0, what="instance 2's mirror to empty")
            assert raw.xlen(f"{_keys(settings)}:log:{slow.instance_id}") > 0
            await a.unwatch(watch["id"])
    raw.close()


def _serve_process(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`percolert serve` in its own process, as deployed: one instance of `settings`."""
    return serve_process(
        settings,
        port,
        log,
        {
            "PERCOLERT_REDIS_URL": settings.redis_url or "",
            "PERCOLERT_INSTANCE_ID": settings.instance_id or "",
            "PERCOLERT_SECRET": settings.secret or "",
            "PERCOLERT_COALESCE_SECONDS": str(settings.coalesce_seconds),
            "PERCOLERT_ALERT_LOG_FLUSH_SECONDS": str(settings.alert_log_flush_seconds),
            "PERCOLERT_MAX_SOCKETS_PER_USER": "1000",
        },
    )


async def _collect(socket: Socket, watch_id: str, into: list[int]) -> None:
    """The positions of the alerts through `watch_id` the socket gets, until it closes."""
    with contextlib.suppress(ConnectionClosed):
        while (message := await socket.receive(timeout=30)) is not None:
            if message["type"] == "alert" and message["watch"]["id"] == watch_id:
                into.append(message["seq"])


async def _collect_until(
    socket: Socket, watch_id: str, into: list[int], *, count: int, above: int = 0
) -> None:
    """Collect alerts through `watch_id` until `count` of them are above `above`."""
    deadline = time.monotonic() + 30
    while len([seq for seq in into if seq > above]) < count:
        message = await socket.receive(timeout=deadline - time.monotonic())
        assert message is not None, f"only {into} came"
        if message["type"] == "alert" and message["watch"]["id"] == watch_id:
            into.append(message["seq"])


async def _search_steadily(b: Shopper, urls: list[str], stop: anyio.Event) -> None:
    """B searches every 50 ms, in turn on each instance still answering."""
    n = 0
    while not stop.is_set():
        n += 1
        for url in urls[n % len(urls) :] + urls[: n % len(urls)]:
            try:
                response = await b.http.get(f"{url}/api/search", params={"q": f"kindle {n}"})
            except httpx.TransportError:
                continue  # that instance is gone: the next one
            if response.status_code == 200:
                break
        await anyio.sleep(0.05)


async def test_a_page_resumes_on_the_other_instance_after_a_sigkill_with_nothing_lost_or_repeated(
    settings: Settings, tmp_path: Path
) -> None:
    """Instance 1 (a real process, which never writes its alert log by itself) is killed
    with SIGKILL while B searches on both instances and A's page is on 1. A resumes on 2 with
    its last position and gets exactly A's sendings after it (from 2's log, 2's mirror and
    the dead instance's mirror); 1 stops counting within seconds; once it is reaped, a
    survivor writes what it never wrote, and the log then holds exactly what A received."""
    doomed = msgspec.structs.replace(
        settings, alert_log_flush_seconds=NEVER, instance_id=f"doomed-{uuid.uuid4().hex[:6]}"
    )
    survivor = msgspec.structs.replace(settings, instance_id=f"survivor-{uuid.uuid4().hex[:6]}")
    port = free_port()
    log = tmp_path / "instance-1.log"
    process = _serve_process(doomed, port, log)
    one = f"http://127.0.0.1:{port}"
    raw = redis.Redis.from_url(settings.redis_url or "")
    keys = _keys(settings)
    try:
        await wait_until(
            lambda: answering(process, one, log), what="instance 1 to serve", timeout=60
        )
        with run_server(survivor) as two:
            # A's page (its socket) is on instance 1; its requests go to 2, which outlives 1.
            async with Shopper(two) as a, Shopper(two) as b:
                watch = await a.watch("kindle")
                page = await a.connect(base_url=one)
                first = page.hello["last_seq"]
                before_kill: list[int] = []
                after_kill: list[int] = []
                stop = anyio.Event()

                # Instance 1 stops counting within a few seconds: its beat lapses.
                def lapsed() -> bool:
                    expiry = raw.zscore(f"{keys}:inst", doomed.instance_id or "")
                    return expiry is not None and expiry < time.time() * 1000

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_search_steadily, b, [one, two], stop)
                    await _collect_until(page, watch["id"], before_kill, count=6)
                    process.send_signal(signal.SIGKILL)
                    await _collect(page, watch["id"], before_kill)  # until the socket drops
                    last = max(before_kill)
                    await wait_until(lapsed, what="instance 1 to lapse", timeout=10)
                    # A, away meanwhile, counts as reconnecting: B's searches still alert A.
                    created = metric(two, "percolert_alerts_created_total")
                    await wait_until(
                        lambda: metric(two, "percolert_alerts_created_total") >= created + 3,
                        what="alerts for A while A is away",
                    )
                    resumed = await a.connect(after=last)
                    cut = resumed.hello["last_seq"]
                    await _collect_until(resumed, watch["id"], after_kill, above=cut, count=5)
                    stop.set()
                after_kill += [
                    alert["seq"]
                    for alert in await a.alerts_before_marker(resumed, b)
                    if alert["watch"]["id"] == watch["id"]
                ]
                assert before_kill == sorted(set(before_kill))
                assert after_kill == sorted(set(after_kill))  # in order, none twice
                assert min(after_kill) > last
                # Another tab of A's, away since before the first alert, gets everything on
                # instance 2, though 1 wrote none of its sendings to the log.
                tab = await a.connect(after=first)
                everything = [
                    alert["seq"]
                    for alert in await a.alerts_before_marker(tab, b)
                    if alert["watch"]["id"] == watch["id"]
                ]
                # Reaped (as 30 s after the kill): a survivor writes its mirror to the log.
                raw.zadd(f"{keys}:inst", {doomed.instance_id or "": time.time() * 1000 - 60_000})
                await wait_until(
                    lambda: not raw.exists(f"{keys}:log:{doomed.instance_id}"),
                    what="the dead instance's unwritten sendings to be written",
                )
                await wait_until(
                    lambda: raw.xlen(f"{keys}:log:{survivor.instance_id}") == 0,
                    what="instance 2 to write its sendings",
                )
                logged = await _logged(settings, watch["id"], first)
                assert before_kill + after_kill == logged  # nothing lost, nothing twice
                cut_replay = [seq for seq in after_kill if seq <= cut]
                assert cut_replay == [seq for seq in logged if last < seq <= cut]
                assert len(cut_replay) >= 3
                assert everything == [seq for seq in logged if seq <= tab.hello["last_seq"]]
                await a.unwatch(watch["id"])
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        raw.close()
