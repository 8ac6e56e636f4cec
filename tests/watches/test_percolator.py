"""Percolation against the real percolator index: many search events in one request,
matched back to the right event, and batching that forms under load."""

from __future__ import annotations

import gc

import anyio
import elasticsearch
import msgspec
import pytest

from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.watches.percolator import Match, Percolator, SearchEvent, _Responses
from percolert.watches.store import WatchStore, build_query, category_price
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


def test_watch_queries_are_plain_term_filters() -> None:
    query = build_query(["sony", "headphon"], phrase=False, category="audio", max_price=150.0)
    assert query == {
        "bool": {
            "filter": [
                {"term": {"search_text": "sony"}},
                {"term": {"search_text": "headphon"}},
                {"range": {"category_prices": {"gte": "audio\x1f", "lte": "audio\x1f0000015000"}}},
            ]
        }
    }
    alone = build_query(["sony"], phrase=False, category="tv", max_price=None)
    assert alone["bool"]["filter"][1:] == [{"term": {"categories": "tv"}}]
    cheap = build_query(["sony"], phrase=False, category=None, max_price=99.5)
    assert cheap["bool"]["filter"][1:] == [{"range": {"min_price": {"lte": 99.5}}}]


def test_a_category_price_keyword_sorts_as_its_price() -> None:
    assert category_price("audio", 79.99) == "audio\x1f0000007999"
    assert category_price("audio", 109.99000000000001) == "audio\x1f0000010999"
    [clause] = build_query([], phrase=False, category="audio", max_price=79.99)["bool"]["filter"]
    bounds = clause["range"]["category_prices"]
    assert bounds["gte"] <= category_price("audio", 0) <= bounds["lte"]
    assert bounds["gte"] <= category_price("audio", 79.99) <= bounds["lte"]
    assert category_price("audio", 80) > bounds["lte"]
    assert not bounds["gte"] <= category_price("audio-x", 1) <= bounds["lte"]
    assert not bounds["gte"] <= category_price("aud", 1) <= bounds["lte"]
    phrase = build_query(["nois", "cancel"], phrase=True, category=None, max_price=None)
    assert phrase == {"bool": {"filter": [{"match_phrase": {"search_text": "nois cancel"}}]}}


def test_decoding_a_batch_of_many_matches_sets_off_no_garbage_collection() -> None:
    """A batch of products brings tens of thousands of matches; were each decoded into
    structs the collector tracks, their allocation would set off collections (over the
    whole heap, in time) several times per response."""
    watch_id = "w-" + "0" * 20
    key = {"watch_id": watch_id, "terms": "kindle", "owner": "alice", "max_price": 9.5}
    response = {"aggregations": {"matches": {"buckets": [{"key": key}] * 1000}}}
    body = msgspec.json.encode({"responses": [response] * 50})
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        decoded = msgspec.json.decode(body, type=_Responses)
    finally:
        gc.callbacks.remove(count)
    assert collections == []
    assert len(decoded.responses) == 50
    buckets = decoded.responses[-1].aggregations.matches.buckets
    assert buckets[-1].key == Match(watch_id=watch_id, terms="kindle", owner="alice", max_price=9.5)


@pytest.mark.parametrize("raw_json", [True, False], ids=["raw-json-client", "plain-client"])
async def test_one_request_matches_each_event_to_its_watches(
    fresh_settings: Settings, raw_json: bool
) -> None:
    """The same matches whether the percolator's client hands on raw bytes (decoded
    straight into structs) or parsed JSON."""
    client = es.create_client(fresh_settings)
    percolation_client = es.create_client(fresh_settings, raw_json=raw_json)
    normalizer = TextNormalizer()
    alias = indices.alias_for(fresh_settings, "watches")
    try:
        await indices.setup(client, fresh_settings)
        store = WatchStore(client, alias, normalizer, max_per_user=50)
        kindle = await store.add("alice", WatchSpec(terms="kindle"))
        cheap_audio = await store.add("bob", WatchSpec(terms="headphones", max_price=100))
        cheap_tv = await store.add("carol", WatchSpec(terms="sony", category="tv", max_price=800))
        default = await store.add(None, WatchSpec(terms="iphone"))

        async def ignore(found: list[tuple[SearchEvent, list[Match]]]) -> None:
            pass

        percolator = Percolator(percolation_client, alias, normalizer, ignore)
        events = [
            SearchEvent(text="Kindle Paperwhite", searcher="x"),
            SearchEvent(text="headphones", searcher="x", found=(("audio", 79.0),)),
            SearchEvent(text="headphones", searcher="x", found=(("audio", 149.0),)),
            SearchEvent(text="iPhone and Kindle", searcher="x"),
            SearchEvent(text="nothing to see", searcher="x"),
            # A TV and something under $800 were found, but no TV under $800; then one was.
            SearchEvent(text="sony", searcher="x", found=(("audio", 59.99), ("tv", 999.0))),
            SearchEvent(text="sony", searcher="x", found=(("audio", 59.99), ("tv", 799.99))),
        ]
        results = await percolator.percolate(events)
        matched = [sorted(match.watch_id for match in matches) for matches in results]
        assert matched == [
            [kindle.id],
            [cheap_audio.id],
            [],
            sorted([kindle.id, default.id]),
            [],
            [],
            [cheap_tv.id],
        ]
        owners = {match.watch_id: match.owner for matches in results for match in matches}
        assert owners == {
            kindle.id: "alice",
            cheap_audio.id: "bob",
            cheap_tv.id: "carol",
            default.id: None,
        }
        terms = {match.watch_id: match.terms for matches in results for match in matches}
        assert terms == {
            kindle.id: "kindle",
            cheap_audio.id: "headphones",
            cheap_tv.id: "sony",
            default.id: "iphone",
        }
        prices = {match.watch_id: match.max_price for matches in results for match in matches}
        assert prices == {
            kindle.id: None,
            cheap_audio.id: 100.0,
            cheap_tv.id: 800.0,
            default.id: None,
        }
        assert percolator.batches == 1
        [alone] = await percolator.percolate([SearchEvent(text="kindle", searcher="x")])
        assert alone == [Match(watch_id=kindle.id, terms="kindle", owner="alice")]
    finally:
        await percolation_client.close()
        await client.close()


async def test_a_raw_json_client_raises_the_errors_a_plain_one_does(
    fresh_settings: Settings,
) -> None:
    """Its error answers are decoded: the same exception class, message and body."""
    plain = es.create_client(fresh_settings)
    raw = es.create_client(fresh_settings, raw_json=True)
    missing = f"{fresh_settings.index_prefix}-missing"
    try:
        assert isinstance(raw, es.RawJsonClient)
        assert (await raw.info()).body.startswith(b"{")  # a success stays bytes
        failures = []
        for client in (plain, raw):
            with pytest.raises(elasticsearch.NotFoundError) as not_found:
                await client.search(index=missing)
            with pytest.raises(elasticsearch.BadRequestError) as bad_request:
                await client.msearch(
                    searches=[{}, {"query": {"match_all": {}}}], max_concurrent_searches=0
                )
            failures.append(
                [(type(e.value), str(e.value), e.value.body) for e in (not_found, bad_request)]
            )
        assert failures[0] == failures[1]
        assert failures[1][0][1].startswith("NotFoundError(404, 'index_not_found_exception'")
        assert failures[1][1][2]["error"]["type"] == "illegal_argument_exception"
    finally:
        await raw.close()
        await plain.close()


async def test_one_failed_search_in_a_raw_batch_loses_its_alerts_only(
    fresh_settings: Settings,
) -> None:
    """A search Elasticsearch answers with an error inside a successful `_msearch` (here: the
    watch index is closed) is observed as a failure of one event, through the raw client."""
    client = es.create_client(fresh_settings)
    raw = es.create_client(fresh_settings, raw_json=True)
    alias = indices.alias_for(fresh_settings, "watches")
    observed: list[tuple[float | None, int]] = []

    async def ignore(found: list[tuple[SearchEvent, list[Match]]]) -> None:
        pass

    try:
        await indices.setup(client, fresh_settings)
        await client.indices.close(index=alias)
        percolator = Percolator(
            raw, alias, TextNormalizer(), ignore, observe=lambda *seen: observed.append(seen)
        )
        events = [SearchEvent(text="kindle", searcher="x"), SearchEvent(text="tv", searcher="y")]
        assert await percolator.percolate(events) == [[], []]
        assert observed[1:] == [(None, 1), (None, 1)]
    finally:
        await client.indices.open(index=alias)
        await raw.close()
        await client.close()


async def test_batches_form_under_load(fresh_settings: Settings) -> None:
    client = es.create_client(fresh_settings)
    normalizer = TextNormalizer()
    alias = indices.alias_for(fresh_settings, "watches")
    delivered: list[tuple[str, list[str]]] = []
    try:
        await indices.setup(client, fresh_settings)
        store = WatchStore(client, alias, normalizer, max_per_user=50)
        watch = await store.add("alice", WatchSpec(terms="kindle"))

        async def collect(found: list[tuple[SearchEvent, list[Match]]]) -> None:
            delivered.extend(
                (event.text, [m.watch_id for m in matches]) for event, matches in found if matches
            )

        percolator = Percolator(client, alias, normalizer, collect, batch_size=64, concurrency=1)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(percolator.run)
            while not percolator.submit(SearchEvent(text="warm-up", searcher="x")):
                await anyio.sleep(0.01)  # until run() has opened the queue
            for number in range(200):
                assert percolator.submit(SearchEvent(text=f"kindle {number}", searcher="x"))
            await wait_until(lambda: len(delivered) >= 200, timeout=30, what="all 200 matches")
            tasks.cancel_scope.cancel()
        assert sorted(delivered) == sorted((f"kindle {n}", [watch.id]) for n in range(200))
        assert percolator.batches <= 200 / 10, percolator.batches  # far fewer requests than events
    finally:
        await client.close()


async def test_batches_are_handed_on_one_at_a_time_in_order(fresh_settings: Settings) -> None:
    """With two requests in flight, a batch that finishes while an earlier one is still
    being dispatched waits for it: the dispatcher hears of one batch at a time, in order."""
    client = es.create_client(fresh_settings)
    normalizer = TextNormalizer()
    alias = indices.alias_for(fresh_settings, "watches")
    handed: list[list[str]] = []
    inside = 0
    overlapped = False
    second_entered = anyio.Event()
    try:
        await indices.setup(client, fresh_settings)
        await WatchStore(client, alias, normalizer, max_per_user=50).add(
            "alice", WatchSpec(terms="kindle")
        )
        percolator: Percolator

        async def dispatch(found: list[tuple[SearchEvent, list[Match]]]) -> None:
            nonlocal inside, overlapped
            inside += 1
            overlapped |= inside > 1
            handed.append([event.text for event, _ in found])
            if len(handed) == 1:
                # Still dispatching the first batch when the second is percolated: it must
                # not be handed on now (a bounded look, since nothing is to happen).
                assert percolator.submit(SearchEvent(text="kindle 2", searcher="x"))
                await wait_until(lambda: percolator.batches >= 2, what="the second batch")
                with anyio.move_on_after(1.0):
                    await second_entered.wait()
            else:
                second_entered.set()
            inside -= 1

        percolator = Percolator(client, alias, normalizer, dispatch, batch_size=1, concurrency=2)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(percolator.run)
            while not percolator.submit(SearchEvent(text="kindle 1", searcher="x")):
                await anyio.sleep(0.01)  # until run() has opened the queue
            await wait_until(lambda: len(handed) >= 2, timeout=30, what="both batches")
            tasks.cancel_scope.cancel()
        assert handed == [["kindle 1"], ["kindle 2"]]
        assert not overlapped
    finally:
        await client.close()
