"""The search log's days on a real node: made from the template, written in bulk by the
writer (counted by text and by watch, bounded in memory), deleted whole past the retention."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import AlertWatch
from percolert.core.records import AlertRecord
from percolert.core.settings import Settings
from percolert.engine import es, indices
from percolert.insights import activity, searchlog
from percolert.insights.activity import ActivityLog
from percolert.insights.queries import read_insights
from percolert.insights.view import InvalidWindow, window_seconds
from percolert.insights.visits import MAX_PER_WATCH, REMEMBER_SECONDS, VisitsSeen
from tests.conftest import delete_indices, make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def log_settings(elasticsearch_url: str) -> Iterator[Settings]:
    settings = make_settings(elasticsearch_url, instance_id="instance-a")
    yield settings
    asyncio.run(delete_indices(settings))


@pytest.fixture
async def client(log_settings: Settings) -> AsyncIterator[AsyncElasticsearch]:
    client = es.create_client(log_settings)
    await searchlog.ensure_template(client, log_settings)
    try:
        yield client
    finally:
        await client.close()


async def entries(client: AsyncElasticsearch, settings: Settings) -> list[dict[str, Any]]:
    await client.indices.refresh(index=searchlog.pattern(settings))
    response = await client.search(
        index=searchlog.pattern(settings), size=1000, sort=[{"at": "asc"}]
    )
    return [hit["_source"] for hit in response.body["hits"]["hits"]]


def test_days_past_the_retention_are_named() -> None:
    settings = Settings(index_prefix="shop", search_log_days=30)
    today = date(2026, 12, 7)
    names = [
        searchlog.index_of_day(settings, today - timedelta(days=days)) for days in (0, 30, 31, 400)
    ]
    assert searchlog.expired(
        [*names, "shop-searchlog-junk", "other-searchlog-2020.01.01"], settings, today
    ) == [
        "shop-searchlog-2025.11.02",
        "shop-searchlog-2026.11.06",
    ]


async def test_old_days_are_deleted_whole(
    client: AsyncElasticsearch, log_settings: Settings
) -> None:
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    old, kept = now.date() - timedelta(days=31), now.date() - timedelta(days=29)
    for day in (old, kept, now.date()):
        await searchlog.create_day(client, searchlog.index_of_day(log_settings, day))
    await searchlog.create_day(client, searchlog.index_of_day(log_settings, old))  # again: fine
    assert await searchlog.delete_expired(client, log_settings, now) == 1
    left = await client.indices.get(index=searchlog.pattern(log_settings))
    assert sorted(left.body) == [
        searchlog.index_of_day(log_settings, day) for day in (kept, now.date())
    ]
    # Made from the template: mapped strictly, not by guess.
    mapping = left.body[searchlog.index_of_day(log_settings, kept)]["mappings"]
    assert mapping["dynamic"] == "strict"


async def test_searches_and_alerts_are_counted_before_they_are_written(
    client: AsyncElasticsearch, log_settings: Settings
) -> None:
    log = ActivityLog(client, log_settings, lambda: (3, 5))
    for text in ["Kindle", "kindle ", "KINDLE", "lamp"]:
        log.searched(text, results=4)
    log.searched("zzqx", results=0)
    watch = AlertWatch(id="default-0123456789abcdef", terms="kindle", max_price=100.0)
    record = AlertRecord(seq=1, at="", earliest_ms=0, everyone=watch)
    log.published([record, msgspec.structs.replace(record, seq=2)])
    log.delivered(watch, True, 7)
    log.visited(watch, default=True)
    log.roll_up()
    await log.flush()
    assert (log.written, log.dropped, log.buffered) == (6, 0, 0)
    found = await entries(client, log_settings)
    searches = {doc["text"]: doc for doc in found if doc["kind"] == "search"}
    assert {text: doc["count"] for text, doc in searches.items()} == {
        "kindle": 3,
        "lamp": 1,
        "zzqx": 1,
    }
    assert searches["zzqx"]["results"] == 0
    [alert] = [doc for doc in found if doc["kind"] == "alert"]
    assert alert == {
        "kind": "alert",
        "at": alert["at"],
        "watch_id": watch.id,
        "label": "kindle under 100",
        "default": True,
        "alerts": 2,
        "shoppers": 7,
        "instance": "instance-a",
    }
    [presence] = [doc for doc in found if doc["kind"] == "presence"]
    assert (presence["shoppers"], presence["sockets"]) == (3, 5)
    assert [doc["count"] for doc in found if doc["kind"] == "visit"] == [1]


PERSONAL = AlertWatch(id="w-0123456789abcdef0123", terms="kindle")


async def test_a_shoppers_watch_is_logged_by_its_words_never_its_id(
    client: AsyncElasticsearch, log_settings: Settings
) -> None:
    log = ActivityLog(client, log_settings, lambda: (0, 0))
    mine = AlertWatch(id="w-aaaaaaaaaaaaaaaaaaaa", terms="Kindle  CASE")
    theirs = AlertWatch(id="w-bbbbbbbbbbbbbbbbbbbb", terms="kindle case")
    lamp = AlertWatch(id="w-cccccccccccccccccccc", terms="lamp jane@example.com")
    for watch in (mine, theirs, lamp):
        log.visited(watch, default=False)
    for _ in range(2):  # a watch's words are worked out once, then found again
        for watch in (mine, theirs, lamp):
            log.delivered(watch, False, 1)
    log.roll_up()
    await log.flush()
    found = await entries(client, log_settings)
    alerts = {doc["label"]: doc for doc in found if doc["kind"] == "alert"}
    # The two watches of the same words count as one; the address is not kept.
    assert {label: doc["shoppers"] for label, doc in alerts.items()} == {
        "kindle case": 4,
        "lamp [email]": 2,
    }
    assert all(doc["watch_id"].startswith("words-") for doc in alerts.values())
    visits = sorted(doc["watch_id"] for doc in found if doc["kind"] == "visit")
    assert visits == sorted(
        [alerts["kindle case"]["watch_id"]] * 2 + [alerts["lamp [email]"]["watch_id"]]
    )
    logged = json.dumps(found)
    assert "jane" not in logged
    assert not any(watch.id in logged for watch in (mine, theirs, lamp))


async def test_a_full_buffer_drops_its_oldest_and_counts_them(
    client: AsyncElasticsearch, log_settings: Settings
) -> None:
    log = ActivityLog(client, log_settings, lambda: (0, 0))
    for _ in range(activity.MAX_BUFFERED + 3):
        log.visited(PERSONAL, default=False)
    assert (log.buffered, log.dropped) == (activity.MAX_BUFFERED, 3)


async def test_no_log_is_kept_when_its_retention_is_zero(
    client: AsyncElasticsearch, log_settings: Settings
) -> None:
    log = ActivityLog(
        client, msgspec.structs.replace(log_settings, search_log_days=0), lambda: (1, 1)
    )
    log.searched("kindle", results=3)
    log.visited(PERSONAL, default=False)
    log.roll_up()
    assert log.buffered == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h", 3_600),
        ("24h", 86_400),
        ("7d", 604_800),
        ("90m", 5_400),
        ("1w", 604_800),
        ("3600", 3_600),
    ],
)
def test_windows(text: str, seconds: float) -> None:
    assert window_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "30s", "91d", "1y", "-1h", "nan", "inf", "24 hours"])
def test_windows_refused(text: str) -> None:
    with pytest.raises(InvalidWindow):
        window_seconds(text)


def test_a_visit_counts_once_per_shopper_and_alert_a_day() -> None:
    now = [0.0]
    seen = VisitsSeen(clock=lambda: now[0])
    assert seen.first("shopper-a", "w-1", "alert:1")
    assert not seen.first("shopper-a", "w-1", "alert:1")
    assert seen.first("shopper-b", "w-1", "alert:1")
    assert seen.first("shopper-a", "w-1", "alert:2")
    assert seen.first("shopper-a", "w-2", "alert:1")  # another watch's
    # Made-up alert ids raise a watch's visits by MAX_PER_WATCH a day at most.
    made_up = [seen.first("shopper-c", "w-1", f"alert:{n}") for n in range(3 * MAX_PER_WATCH)]
    assert made_up.count(True) == MAX_PER_WATCH
    now[0] = REMEMBER_SECONDS + 1
    assert seen.first("shopper-a", "w-1", "alert:1")


async def test_the_trend_and_the_timeline_count_each_window(
    client: AsyncElasticsearch, log_settings: Settings
) -> None:
    await indices.setup(client, log_settings)  # the view reads watches and the catalog too
    # A moment on a whole 2-minute bucket (the 1h window's), so the window is the hour.
    end = math.floor(time.time() / 120) * 120
    moment = [0.0]
    log = ActivityLog(client, log_settings, lambda: (0, 0), clock=lambda: moment[0])
    for at, text, results, times in [
        (end - 5_400, "kindle", 4, 6),  # the hour before: 6
        (end - 1_800, "kindle", 4, 3),  # this hour: 3
        (end - 1_800, "zzqx", 0, 2),
        (end - 60, "zzqx", 0, 1),
        (end - 4_000, "zzqx", 0, 1),
    ]:
        moment[0] = at
        for _ in range(times):
            log.searched(text, results=results)
        log.roll_up(presence=False)
    await log.flush()
    await client.indices.refresh(index=searchlog.pattern(log_settings))

    hour = await read_insights(client, log_settings, [], since=3_600, now=end)
    assert (hour.totals.searches, hour.totals.no_results) == (6, 3)
    assert (hour.totals.previous_searches, hour.totals.previous_no_results) == (7, 1)
    top = {row.text: (row.count, row.previous) for row in hour.top_searches}
    assert top == {"kindle": (3, 6), "zzqx": (3, 1)}
    assert {row.text: row.count for row in hour.no_result_searches} == {"zzqx": 3}
    assert hour.timeline_bucket_seconds == 120
    assert len(hour.timeline) == 31  # from the window's start to the bucket of now
    counted = {point.at: point.searches for point in hour.timeline if point.searches}
    assert counted == {end - 1_800: 5, end - 120: 1}

    # A window that runs from a whole bucket to now (1.5 buckets): the previous one (one
    # bucket) is counted as if it were as long.
    minute = await read_insights(client, log_settings, [], since=60, now=end - 30)
    assert minute.totals.searches == 1  # end - 60, in [end - 120, end - 30)
    assert minute.totals.previous_searches == 0
    late = await read_insights(client, log_settings, [], since=60, now=end + 30)
    # [end - 60, end + 30): the search at end - 60; before it, [end - 120, end - 60): none.
    assert (late.totals.searches, late.totals.previous_searches) == (1, 0)
    earlier = await read_insights(client, log_settings, [], since=60, now=end - 1_770)
    # [end - 1_860, end - 1_770) holds the 5 of end - 1_800; [end - 1_920, end - 1_860) none.
    assert (earlier.totals.searches, earlier.totals.previous_searches) == (5, 0)
    after = await read_insights(client, log_settings, [], since=60, now=end - 1_710)
    # [end - 1_800, end - 1_710): the 5 again; the bucket before it, [end - 1_860, end -
    # 1_800): none; the 5 are in neither's previous.
    assert (after.totals.searches, after.totals.previous_searches) == (5, 0)
    scaled = await read_insights(client, log_settings, [], since=60, now=end - 1_650)
    # [end - 1_740, end - 1_650) holds nothing; the previous bucket [end - 1_800, end -
    # 1_740) holds the 5, counted as if 90 s long: 7.5, rounded to 8.
    assert (scaled.totals.searches, scaled.totals.previous_searches) == (0, 8)
