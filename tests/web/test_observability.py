"""Metrics in Prometheus format, only for the scraper and the load balancer; structured logs
without secrets."""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Iterator

import anyio
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from percolert.core.metrics import Metrics
from percolert.core.settings import Settings
from percolert.web.logs import JsonFormatter
from tests.servers import run_server
from tests.shoppers import Shopper
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


METRICS_TOKEN = "metrics-token-for-the-tests-0123456789"
# Clients on another machine, as a trusted proxy on this one says they are.
ELSEWHERE = {"X-Forwarded-For": "203.0.113.9"}


@pytest.fixture(scope="module")
def server(catalog_settings: Settings) -> Iterator[str]:
    with run_server(msgspec.structs.replace(catalog_settings, coalesce_seconds=5.0)) as url:
        yield url


def scrape(server: str) -> dict[str, float]:
    response = httpx.get(f"{server}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


async def test_metrics_follow_what_happens(server: str) -> None:
    before = scrape(server)
    async with Shopper(server) as a, Shopper(server) as b:
        watch = await a.watch("fitbit")
        socket_a = await a.connect()
        await a.connect()
        during = scrape(server)
        assert during["percolert_connected_sockets"] == before["percolert_connected_sockets"] + 2
        # Each greeting searched the watches and alerts, in requests of one or more reads.
        reads = "percolert_greeting_reads_total{kind=search}"
        requests = "percolert_greeting_read_requests_total{kind=search}"
        assert during[reads] >= before[reads] + 2
        assert (
            before[requests] < during[requests] <= before[requests] + during[reads] - before[reads]
        )
        await b.search("fitbit charge 6")
        assert await socket_a.next_alert() is not None
        await b.search("fitbit inspire")  # within the window: coalesced
        coalesced = "percolert_alerts_coalesced_total"
        await wait_until(
            lambda: scrape(server)[coalesced] > before[coalesced],
            what="the second search to be percolated and coalesced",
        )
        after = scrape(server)
        await a.unwatch(watch["id"])
    assert after["percolert_search_seconds_count"] == before["percolert_search_seconds_count"] + 2
    assert after["percolert_alerts_sent_total"] >= before["percolert_alerts_sent_total"] + 2
    assert (
        after["percolert_alerts_coalesced_total"] == before["percolert_alerts_coalesced_total"] + 1
    )
    assert after["percolert_percolate_seconds_count"] > before["percolert_percolate_seconds_count"]
    assert "percolert_percolate_batch_size_count" in after
    assert "percolert_alerts_dropped_slow_socket_total" in after


def test_garbage_collections_are_timed(server: str) -> None:
    full = "percolert_gc_pause_seconds_count{generation=2}"
    before = scrape(server).get(full, 0.0)
    gc.collect()  # the test server runs in this process
    after = scrape(server)
    assert after[full] == before + 1
    assert after["percolert_gc_pause_seconds_sum{generation=2}"] > 0


async def test_logs_are_one_json_line_per_event_without_secrets(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Shopper(server) as a:
        await a.search("kindle")
        socket = await a.connect()
        await socket.close()
        cookie = a.cookie
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    entries = [json.loads(line) for line in lines]
    requests = [entry for entry in entries if entry["message"] == "request"]
    search = next(entry for entry in requests if entry["path"] == "/api/search")
    assert search["status"] == 200
    assert search["method"] == "GET"
    assert search["ms"] >= 0
    assert len(search["user"]) == 10
    assert "kindle" not in lines[entries.index(search)]  # no query strings
    opened = [entry for entry in entries if entry["message"] == "socket_open"]
    assert opened
    assert opened[0]["user"] == search["user"]
    for line in lines:
        assert cookie not in line
        assert cookie.split(".")[0] not in line  # nor the raw user id


async def test_a_blocked_event_loop_shows_as_lag() -> None:
    metrics = Metrics("test")

    def timed() -> float:
        return metrics.registry.get_sample_value("percolert_event_loop_lag_seconds_count") or 0

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(metrics.watch_event_loop, 0.01)
        await wait_until(lambda: timed() >= 2, what="the watcher to time the loop")
        before_block = timed()
        time.sleep(0.08)  # everything on the loop waits behind this
        await wait_until(lambda: timed() > before_block, what="the late timer to be observed")
        tasks.cancel_scope.cancel()
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in metrics.registry.collect()
        if family.name == "percolert_event_loop_lag_seconds"
        for sample in family.samples
    }
    count = samples[("percolert_event_loop_lag_seconds_count", None)]
    assert count >= 3
    assert samples[("percolert_event_loop_lag_seconds_bucket", "0.05")] < count
    assert samples[("percolert_event_loop_lag_seconds_sum", None)] >= 0.07


def assert_unauthorized(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"]["code"] == "unauthorized"
    assert "percolert_" not in answer.text


def test_without_a_token_metrics_and_readiness_answer_only_this_machine(
    catalog_settings: Settings,
) -> None:
    """The load balancer's probe and the dev tooling poll from this machine; a client
    elsewhere (or one a proxy forwarded, trusted or not) gets 401. /healthz is for anyone."""
    proxied = msgspec.structs.replace(catalog_settings, trusted_proxies=("127.0.0.1",))
    with run_server(proxied) as url:
        for path in ("/metrics", "/readyz"):
            assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
            assert_unauthorized(httpx.get(f"{url}{path}", headers=ELSEWHERE, timeout=10))
            # Another client of this machine's, forwarded by the proxy: still from elsewhere.
            forwarded = {"X-Forwarded-For": "127.0.0.1"}
            assert_unauthorized(httpx.get(f"{url}{path}", headers=forwarded, timeout=10))
        assert httpx.get(f"{url}/healthz", headers=ELSEWHERE, timeout=10).status_code == 200
    with run_server(catalog_settings) as url:  # no trusted proxy: the header says forwarded
        assert_unauthorized(httpx.get(f"{url}/metrics", headers=ELSEWHERE, timeout=10))


def test_with_a_token_metrics_and_readiness_need_it_from_everyone(
    catalog_settings: Settings,
) -> None:
    settings = msgspec.structs.replace(catalog_settings, metrics_token=METRICS_TOKEN)
    with run_server(settings) as url:
        for path in ("/metrics", "/readyz"):
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token-wrong-token-wrong"},
                {"Authorization": f"Bearer {METRICS_TOKEN}x"},
                {"Authorization": f"Basic {METRICS_TOKEN}"},
            ):
                assert_unauthorized(httpx.get(f"{url}{path}", headers=headers, timeout=10))
        authorised = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        scraped = httpx.get(f"{url}/metrics", headers={**authorised, **ELSEWHERE}, timeout=10)
        assert scraped.status_code == 200
        assert "percolert_connected_sockets" in scraped.text
        ready = httpx.get(f"{url}/readyz", headers=authorised, timeout=10)
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}


def test_refused_scrapes_are_rate_limited_per_address_but_the_tokens_holder_never_is(
    catalog_settings: Settings,
) -> None:
    """Today's /readyz answered 400 requests at 176 a second, each may ask Elasticsearch."""
    settings = msgspec.structs.replace(
        catalog_settings,
        metrics_token=METRICS_TOKEN,
        rate_limits_enabled=True,
        rate_limit_storage="async+memory://",
        limit_monitoring_refusals_per_address="3/10 years",
    )
    with run_server(settings) as url:
        answers = [httpx.get(f"{url}/readyz", timeout=10) for _ in range(4)]
        assert [answer.status_code for answer in answers] == [401, 401, 401, 429]
        assert answers[3].json()["error"]["code"] == "rate_limited"
        assert int(answers[3].headers["retry-after"]) > 0
        authorised = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        for _ in range(5):
            assert httpx.get(f"{url}/readyz", headers=authorised, timeout=10).status_code == 200
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 429
