"""Where a user may have left traces: every document of every index of a deployment (its id
and its whole source, whatever the mapping indexes) and every key and value it keeps in
Redis. The tests of erasure look for an account there."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from elasticsearch.helpers import async_scan

from percolert.core.settings import Settings
from percolert.engine import es


async def in_elasticsearch(settings: Settings, needles: list[str]) -> list[str]:
    """Where in the deployment's indices any of `needles` occurs: a document's id or any
    text of its source (found by reading every document), or any field a search across all
    fields matches."""
    client = es.create_client(settings)
    pattern = f"{settings.index_prefix}-*"
    found: list[str] = []
    try:
        # Writes by id (the product-seen marks) are searchable once refreshed.
        await client.indices.refresh(index=pattern)
        async for hit in async_scan(client, index=pattern, query={"query": {"match_all": {}}}):
            text = hit["_id"] + "\n" + json.dumps(hit["_source"], ensure_ascii=False)
            found += [f"{hit['_index']}/{hit['_id']}: {n}" for n in needles if n in text]
        for needle in needles:
            quoted = '"' + needle.replace("\\", "\\\\").replace('"', '\\"') + '"'
            response = await client.search(
                index=pattern,
                query={
                    "bool": {
                        "should": [
                            {"query_string": {"query": quoted, "fields": ["*"], "lenient": True}},
                            {"ids": {"values": [needle]}},
                        ]
                    }
                },
                size=10,
            )
            found += [
                f"{h['_index']}/{h['_id']}: {needle} (search)" for h in response["hits"]["hits"]
            ]
    finally:
        await client.close()
    return found


async def in_redis(url: str, needles: list[str]) -> list[str]:
    """Where in Redis (any key, of any deployment) any of `needles` occurs: in a key's name,
    or in any of its members, fields or values (stream entries included)."""
    client = aioredis.Redis.from_url(url)
    wanted = [needle.encode() for needle in needles]
    found: list[str] = []
    try:
        async for key in client.scan_iter(count=1000):
            kind = _text(await client.type(key))
            values: list[Any] = [key]
            if kind == "string":
                values.append(await client.get(key))
            elif kind == "hash":
                for field, value in (await client.hgetall(key)).items():
                    values += [field, value]
            elif kind == "set":
                values += await client.smembers(key)
            elif kind == "zset":
                values += await client.zrange(key, 0, -1)
            elif kind == "list":
                values += await client.lrange(key, 0, -1)
            elif kind == "stream":
                for _, fields in await client.xrange(key) or ():
                    for field, value in (fields or {}).items():
                        values += [field, value]
            held = [_bytes(value) for value in values]
            found += [
                f"{_text(key)} ({kind}): {needle.decode()}"
                for needle in wanted
                if any(needle in value for value in held)
            ]
    finally:
        await client.aclose()
    return found


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


def _text(value: object) -> str:
    return _bytes(value).decode(errors="replace")
