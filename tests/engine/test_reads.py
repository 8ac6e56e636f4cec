"""Batched reads on a real node: many searches in one `_msearch`, many documents in one
`_mget`, each caller answered as its own request would have been, errors included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import elasticsearch
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.core.settings import Settings
from percolert.engine import es
from percolert.engine.reads import Answer, BatchedReads, DirectReads

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(fresh_settings: Settings) -> AsyncIterator[AsyncElasticsearch]:
    client = es.create_client(fresh_settings)
    index = f"{fresh_settings.index_prefix}-reads"
    await client.indices.create(index=index, mappings={"properties": {"user": {"type": "keyword"}}})
    for number in range(6):
        await client.index(index=index, id=f"u{number}", document={"user": f"u{number % 3}"})
    await client.indices.refresh(index=index)
    try:
        yield client
    finally:
        await client.close()


def index_of(settings: Settings) -> str:
    return f"{settings.index_prefix}-reads"


def ids(answer: Answer) -> list[str]:
    return sorted(hit["_id"] for hit in answer["hits"]["hits"])


async def all_at_once(reads: BatchedReads, asks: list[Any]) -> list[Answer | Exception]:
    """Ask each (a coroutine function of `reads`) at once: the first goes alone (nothing
    else is waiting), the others together behind it. Each one's answer or error, in order."""
    outcomes: list[Answer | Exception] = [RuntimeError("unanswered")] * len(asks)

    async def one(number: int) -> None:
        try:
            outcomes[number] = await asks[number]()
        except Exception as error:
            outcomes[number] = error

    with anyio.fail_after(10):
        async with anyio.create_task_group() as callers:
            for number in range(len(asks)):
                callers.start_soon(one, number)
    return outcomes


def answer(outcome: Answer | Exception) -> Answer:
    assert not isinstance(outcome, Exception), outcome
    return outcome


def by_user(user: str) -> dict[str, Any]:
    return {"query": {"term": {"user": user}}, "size": 10}


async def test_searches_asked_at_once_go_in_one_msearch_each_answered_as_alone(
    client: AsyncElasticsearch, fresh_settings: Settings
) -> None:
    index = index_of(fresh_settings)
    reads = BatchedReads(client, width=1)
    users = ["u0", "u1", "u2", "u0", "nobody"]
    outcomes = await all_at_once(
        reads, [lambda user=user: reads.search(index, by_user(user)) for user in users]
    )
    direct = DirectReads(client)
    for user, outcome in zip(users, outcomes, strict=True):
        assert ids(answer(outcome)) == ids(await direct.search(index, by_user(user)))
    assert ids(answer(outcomes[0])) == ["u0", "u3"]
    assert ids(answer(outcomes[4])) == []
    # The first alone, the other four in one `_msearch`.
    assert (reads.searches.batches, reads.searches.requests) == (2, 5)


async def test_an_error_in_the_batch_is_its_callers_alone(
    client: AsyncElasticsearch, fresh_settings: Settings
) -> None:
    index = index_of(fresh_settings)
    reads = BatchedReads(client, width=1)
    malformed = {"query": {"range": {"user": {"gte": "a", "format": "not a format"}}}}
    outcomes = await all_at_once(
        reads,
        [
            lambda: reads.search(index, by_user("u1")),
            lambda: reads.search(f"{fresh_settings.index_prefix}-missing", by_user("u1")),
            lambda: reads.search(index, {"query": {"no_such_query": {}}}),
            lambda: reads.search(index, malformed),
            lambda: reads.search(index, by_user("u2")),
        ],
    )
    assert reads.searches.batches == 2  # the four after the first in one `_msearch`
    first, missing, unknown, _, last = outcomes
    assert ids(answer(first)) == ["u1", "u4"]
    assert ids(answer(last)) == ["u2", "u5"]
    # As a search on its own raises them: the client's exception for the status.
    assert isinstance(missing, elasticsearch.NotFoundError), missing
    assert missing.status_code == 404
    assert isinstance(unknown, elasticsearch.BadRequestError), unknown
    with pytest.raises(elasticsearch.NotFoundError):
        await DirectReads(client).search(f"{fresh_settings.index_prefix}-missing", by_user("u1"))


async def test_documents_asked_at_once_go_in_one_mget(
    client: AsyncElasticsearch, fresh_settings: Settings
) -> None:
    index = index_of(fresh_settings)
    reads = BatchedReads(client, width=1)
    wanted = ["u1", "u5", "u1", "absent"]
    outcomes = await all_at_once(
        reads, [lambda doc_id=doc_id: reads.get(index, doc_id) for doc_id in wanted]
    )
    assert (reads.gets.batches, reads.gets.requests) == (2, 4)
    direct = DirectReads(client)
    for doc_id, outcome in zip(wanted, outcomes, strict=True):
        outcome = answer(outcome)
        alone = await direct.get(index, doc_id)
        assert outcome["found"] == alone["found"] == (doc_id != "absent")
        assert outcome.get("_source") == alone.get("_source")
        assert outcome.get("_seq_no") == alone.get("_seq_no")
    assert answer(outcomes[1])["_source"] == {"user": "u2"}


async def test_a_document_of_a_missing_index_fails_its_caller_alone(
    client: AsyncElasticsearch, fresh_settings: Settings
) -> None:
    index = index_of(fresh_settings)
    reads = BatchedReads(client, width=1)
    _, found, missing = await all_at_once(
        reads,
        [
            lambda: reads.get(index, "u1"),
            lambda: reads.get(index, "u0"),
            lambda: reads.get(f"{fresh_settings.index_prefix}-missing", "u0"),
        ],
    )
    assert reads.gets.batches == 2
    assert answer(found)["found"]
    assert isinstance(missing, elasticsearch.ApiError), missing
