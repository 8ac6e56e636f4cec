"""Elasticsearch reads that go one by one, or many in one request.

`Reads` is what a store reads a user's things through: a search of one index (its body), and
one document by id (by `_mget`: an id never goes in a URL, which the client logs).
`DirectReads` sends each as a request of its own. `BatchedReads` sends the searches asked at
once as one `_msearch`, and the documents as one `_mget` (core/batching.py): a reconnect
storm's greetings, which each ask the same few things for their own user, then take a few
round trips between them rather than a few each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from elastic_transport import ApiResponseMeta
from elasticsearch import ApiError, AsyncElasticsearch, BadRequestError
from elasticsearch.exceptions import HTTP_EXCEPTIONS

from percolert.core.batching import Batches

Body = dict[str, Any]
Answer = Mapping[str, Any]


class Reads(Protocol):
    async def search(self, index: str, body: Body) -> Answer:
        """The search's response (hits, aggregations, ...)."""
        ...

    async def get(self, index: str, doc_id: str) -> Answer:
        """The document as `_mget` lists it: `found`, and its `_source`, `_seq_no` and
        `_primary_term` when found."""
        ...


class DirectReads:
    """Each read a request of its own."""

    def __init__(self, client: AsyncElasticsearch) -> None:
        self._client = client

    async def search(self, index: str, body: Body) -> Answer:
        answer: Answer = (await self._client.search(index=index, body=body)).body
        return answer

    async def get(self, index: str, doc_id: str) -> Answer:
        docs: list[Answer] = (await self._client.mget(index=index, ids=[doc_id]))["docs"]
        return docs[0]


def _outcome(meta: ApiResponseMeta, item: Answer) -> Answer | Exception:
    """An item of a multi-request's response, or the error it carries, raised to its caller
    as the request on its own would have raised it."""
    error = item.get("error")
    if error is None:
        return item
    status = int(item.get("status", 500))
    kind = error.get("type", "error") if isinstance(error, Mapping) else str(error)
    failed = HTTP_EXCEPTIONS.get(status, ApiError)
    return failed(message=kind, meta=dataclasses.replace(meta, status=status), body=dict(item))


class BatchedReads:
    """Reads asked at once sent together: at most `width` `_msearch` and `width` `_mget`
    requests in flight, each of up to `most` reads."""

    def __init__(self, client: AsyncElasticsearch, *, width: int, most: int = 64) -> None:
        self._client = client
        self._direct = DirectReads(client)
        self.searches: Batches[tuple[str, Body], Answer] = Batches(
            self._msearch, width=width, most=most
        )
        self.gets: Batches[tuple[str, str], Answer] = Batches(self._mget, width=width, most=most)

    async def search(self, index: str, body: Body) -> Answer:
        return await self.searches.ask((index, body))

    async def get(self, index: str, doc_id: str) -> Answer:
        return await self.gets.ask((index, doc_id))

    async def _msearch(self, batch: list[tuple[str, Body]]) -> Sequence[Answer | Exception]:
        searches: list[Body] = []
        for index, body in batch:
            searches += [{"index": index}, body]
        try:
            response = await self._client.msearch(searches=searches)
        except BadRequestError:
            if len(batch) == 1:
                raise
            # A body Elasticsearch cannot parse fails the whole `_msearch`: each search is
            # then sent alone, so that only its own caller hears of it.
            return [await self._alone(index, body) for index, body in batch]
        return [_outcome(response.meta, item) for item in response["responses"]]

    async def _alone(self, index: str, body: Body) -> Answer | Exception:
        try:
            return await self._direct.search(index, body)
        except ApiError as error:
            return error

    async def _mget(self, batch: list[tuple[str, str]]) -> Sequence[Answer | Exception]:
        docs = [{"_index": index, "_id": doc_id} for index, doc_id in batch]
        response = await self._client.mget(docs=docs)
        return [_outcome(response.meta, doc) for doc in response["docs"]]
