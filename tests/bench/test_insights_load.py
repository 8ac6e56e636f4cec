"""The demand view benchmark's own checks (bench/insights_load.py), without a node or a
clock: its open-loop schedule and turn order, the searches and the search log history it
makes, its statistics, its load client against a stub server, and the report's shape."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import msgspec
from aiohttp import web

from bench.insights_load import (
    NO_RESULT_SHARE,
    NOT_SOLD,
    PAGE_REQUESTS,
    VARIANTS,
    HistoryWatch,
    Planned,
    Report,
    Turn,
    catalog_products,
    compare,
    drive,
    history,
    history_texts,
    load_texts,
    median,
    page_ticks,
    plan_searches,
    ranges_overlap,
    ratio,
    send_offsets,
    summarize_variant,
    turn_order,
    write_report,
    zipf_cumulative,
)
from bench.rig import ROOT, percentiles
from percolert.core.settings import Settings
from percolert.insights import searchlog
from percolert.web.middleware.sessions import COOKIE_NAME

DAY_MS = 86_400_000


def test_the_schedule_is_open_loop_at_the_rate() -> None:
    offsets = send_offsets(100.0, 15.0)
    assert len(offsets) == 1_500
    assert offsets[:3] == [0.0, 0.01, 0.02]
    assert offsets[-1] == 14.99
    # The admin page: at once, then every 5 s while the turn lasts.
    assert page_ticks(15.0) == [0.0, 5.0, 10.0]
    assert page_ticks(60.0) == [5.0 * tick for tick in range(12)]
    assert page_ticks(16.0) == [0.0, 5.0, 10.0, 15.0]


def test_every_turn_runs_every_variant_once_the_order_rotated() -> None:
    order = turn_order(["a", "b", "c", "d"], 3)
    assert ["".join(key for turn, key in order if turn == n) for n in range(3)] == [
        "abcd",
        "bcda",
        "cdab",
    ]
    assert turn_order(["a", "b"], 3) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]


def test_zipf_weights_favour_the_first_ranks() -> None:
    weights = zipf_cumulative(4)
    assert weights == [1.0, 1.5, 1.5 + 1 / 3, 1.5 + 1 / 3 + 0.25]
    assert weights == sorted(weights)


def test_the_searches_are_the_same_for_the_same_seed_and_spread_as_planned() -> None:
    products = catalog_products()
    texts = load_texts(products)
    assert len(texts) == len(set(texts)) > 500
    assert "kindle" in texts
    plan = plan_searches(texts, NOT_SOLD, 300, 100.0, 30.0, seed=1)
    assert plan == plan_searches(texts, NOT_SOLD, 300, 100.0, 30.0, seed=1)
    assert plan != plan_searches(texts, NOT_SOLD, 300, 100.0, 30.0, seed=2)
    assert [planned.offset for planned in plan] == send_offsets(100.0, 30.0)
    assert {planned.session for planned in plan} <= set(range(300))
    assert len({planned.session for planned in plan}) > 250
    not_sold = sum(1 for planned in plan if planned.text in NOT_SOLD)
    assert abs(not_sold / len(plan) - NO_RESULT_SHARE) < 0.02
    counts = Counter(planned.text for planned in plan)
    # The most searched text is the first rank; hundreds of others are searched too.
    assert counts.most_common(1)[0][0] == texts[0]
    assert len(counts) > 300


def test_the_history_is_the_log_the_writer_leaves_within_its_days() -> None:
    products = catalog_products()
    texts = history_texts(load_texts(products), products, 2_000)
    assert len(texts) == len(set(texts)) == 2_000
    now_ms = 1_750_000_000_000
    watches = [HistoryWatch("w1", "kindle", True), HistoryWatch("w2", "sony tv", False)]
    entries = list(
        history(
            now_ms,
            days=2,
            searches_per_day=5_000,
            texts=texts,
            no_result=NOT_SOLD,
            watches=watches,
        )
    )
    kinds = Counter(entry.kind for entry in entries)
    assert kinds["search"] == 10_000
    assert kinds["alert"] == 500
    assert kinds["visit"] == 100
    assert kinds["presence"] == 2 * 1_440 * 2  # two instances, once a minute
    assert all(now_ms - 2 * DAY_MS <= entry.at < now_ms for entry in entries)
    searches = [entry for entry in entries if entry.kind == "search"]
    assert abs(sum(1 for e in searches if e.results == 0) / len(searches) - 0.1) < 0.02
    assert all(e.count and e.count >= 1 and e.text for e in searches)
    assert {e.watch_id for e in entries if e.kind == "alert"} == {"w1", "w2"}
    # Every field is one the search log's strict mapping has.
    mapping = json.loads((ROOT / "mappings" / "searchlog.json").read_text())
    fields = set(mapping["mappings"]["properties"])
    assert all(set(msgspec.to_builtins(entry)) <= fields for entry in entries)
    # Two days before a moment that is not midnight: three days' indices.
    settings = Settings(index_prefix="bench-x")
    assert len({searchlog.index_at(settings, entry.at) for entry in entries}) == 3


def test_percentiles_medians_and_ratios() -> None:
    values = [float(number) for number in range(1, 101)]
    assert percentiles(values) == {"p50": 51.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {}
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0]) == 1.5
    assert median([]) is None
    assert ratio(15.0, 10.0) == 1.5
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ranges_overlap([10.0, 12.0], [11.0, 20.0])
    assert not ranges_overlap([10.0, 12.0], [12.5, 20.0])
    assert not ranges_overlap([], [1.0])


def test_the_client_sends_every_search_and_counts_what_failed() -> None:
    seen: list[tuple[str, str | None]] = []
    admin: list[str] = []

    async def search(request: web.Request) -> web.Response:
        seen.append((request.query["q"], request.cookies.get(COOKIE_NAME)))
        if request.query["q"] == "broken":
            return web.Response(status=500)
        total = 0 if request.query["q"] == "nothing" else 3
        return web.json_response({"total": total, "products": []})

    async def admin_view(request: web.Request) -> web.Response:
        assert request.headers["Authorization"].startswith("Bearer ")
        admin.append(request.path_qs)
        return web.json_response({})

    async def run() -> tuple[list[float], dict[str, int], int, dict[str, list[float]]]:
        app = web.Application()
        app.router.add_get("/api/search", search)
        app.router.add_get("/api/admin/insights", admin_view)
        app.router.add_get("/api/admin/live", admin_view)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            plan = [
                Planned(0.0, "kindle", 0),
                Planned(0.001, "broken", 1),
                Planned(0.002, "nothing", 1),
                Planned(0.003, "sony tv", 2),
            ]
            load = await drive(f"http://127.0.0.1:{port}", plan, ["c0", "c1", "c2"], page=True)
        finally:
            await runner.cleanup()
        return load.latencies_ms, dict(load.errors), load.no_results, load.admin_ms

    latencies, errors, no_results, admin_ms = asyncio.run(run())
    assert sorted(seen) == [
        ("broken", "c1"),
        ("kindle", "c0"),
        ("nothing", "c1"),
        ("sony tv", "c2"),
    ]
    assert len(latencies) == 3
    assert all(value > 0 for value in latencies)
    assert errors == {"500": 1}
    assert no_results == 1
    # One refresh of the page (the turn is shorter than its period): each request once.
    assert sorted(admin) == sorted(path for _, path in PAGE_REQUESTS)
    assert set(admin_ms) == {label for label, _ in PAGE_REQUESTS}


def _turn(variant: str, turn: int, p99: float, cpu: float) -> Turn:
    return Turn(
        variant=variant,
        turn=turn,
        searches=100,
        answered=100,
        errors={},
        search_ms={"p50": p99 / 4, "p90": p99 / 2, "p99": p99, "max": p99 * 2},
        search_ms_mean=p99 / 3,
        no_results=10,
        new_cookies=0,
        late_ms_max=0.5,
        admin_ms={"live": [20.0, 30.0]} if variant.startswith("page") else {},
        admin_errors={},
        server_cpu_seconds=cpu,
        elasticsearch_cpu_seconds=cpu * 2,
        client_cpu_seconds=0.1,
        others_cpu_seconds=0.2,
        server={
            "search_ms_mean": 3.0,
            "searches_over_100ms": 0.0,
            "lags_over_25ms": 1.0,
            "lags_over_100ms": 0.0,
            "log_written": 0.0 if variant == "off" else 60.0,
            "log_dropped": 0.0,
            "log_write_failures": 0.0,
            "elasticsearch_errors": 0.0,
        },
        log_query_ms=12.0,
        log_queries=4.0,
        load_average=1.5,
    )


def test_the_report_leads_with_the_equal_work_comparisons(tmp_path: Path) -> None:
    p99s = {"off": (10.0, 12.0), "on": (11.0, 13.0), "page": (20.0, 22.0), "page-nocache": (40, 44)}
    turns = [
        _turn(variant.key, turn, float(p99s[variant.key][turn]), 1.0 + turn)
        for turn in range(2)
        for variant in VARIANTS
    ]
    results = {
        variant.key: summarize_variant(
            variant, [turn for turn in turns if turn.variant == variant.key], [1.0, 2.0]
        )
        for variant in VARIANTS
    }
    assert results["on"].p99_ms == 12.0
    assert results["on"].p99_turns == [11.0, 13.0]
    assert results["on"].p50_ms == 3.0
    assert results["on"].server_cpu_seconds == 1.5
    assert results["on"].server_cpu_ms_per_search == 15.0
    assert results["page"].admin == {
        "live": {"count": 4.0, "p50": 30.0, "p90": 30.0, "p99": 30.0, "max": 30.0}
    }
    comparisons = compare(results)
    assert [(c.variant, c.reference) for c in comparisons] == [
        ("on", "off"),
        ("page", "on"),
        ("page-nocache", "on"),
    ]
    log, page, nocache = comparisons
    assert (log.p99_ratio, log.within_spread) == (round(12 / 11, 3), True)
    assert (page.p99_ratio, page.within_spread) == (round(21 / 12, 3), False)
    assert nocache.p99_ratio == 3.5
    report = Report(
        command="python bench/insights_load.py --quick",
        commit="abc1234",
        cores=2,
        node="http://127.0.0.1:9200",
        node_version="7.17.29",
        load_average_start=[1.0, 1.0, 1.0],
        rate=100.0,
        seconds=15.0,
        turns=2,
        order=[turn.variant for turn in turns],
        sessions=500,
        texts=1_000,
        page_requests=[path for _, path in PAGE_REQUESTS],
        page_every_seconds=5.0,
        cache_seconds=10.0,
        log_days=7.0,
        log_per_day=30_000,
        log_entries_written=242_760,
        log_docs_before=243_000,
        log_docs_after=250_000,
        log_store_mb=16.8,
        log_indices=8,
        watches={"default": 6, "shoppers": 1_200},
        setup_seconds=60.0,
        comparisons=comparisons,
        variants=list(results.values()),
        turn_results=turns,
        log_answered=10_000,
        log_counted=10_000,
        log_entries_per_second=63.5,
    )
    write_report(report, tmp_path / "insights.json")
    written = json.loads((tmp_path / "insights.json").read_text())
    assert [c["variant"] for c in written["comparisons"]] == ["on", "page", "page-nocache"]
    assert len(written["turn_results"]) == 8
    assert written["variants"][0]["key"] == "off"
    text = (tmp_path / "insights.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# The demand view under load (results)"
    # The comparisons come before the tables.
    assert text.index("**search log on vs off**") < text.index("| variant |")
    assert "search p99 1.09x (12.0 vs 11.0 ms" in text
    assert "within the turn-to-turn spread" in text
    assert "search p99 3.50x (42.0 vs 12.0 ms" in text
    assert "counted in the log: 10,000 (every one)." in text
    rows = [line for line in lines if line.startswith("| log on + page every 5 s, cache off |")]
    assert len(rows) == 2  # searches, and its live requests
