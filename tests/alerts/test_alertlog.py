"""The alert log against a real node: what a flush writes is what replay reads back (each
recipient their own alert out of a shared sending), a write Elasticsearch refuses for now
keeps the sendings buffered (and replayable) for the next one while one it refuses for good
is dropped, a flush during a replay loses nothing, a session is never replayed what came
before it, a log of the old layout (one document per recipient) is migrated by
`percolert setup`, and documents of protocol 1 (which held the search text) are replayed
without it."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.alerts.log import AlertLog
from percolert.core.messages import Alert, AlertWatch, ProductCard
from percolert.core.records import AlertRecord
from percolert.core.settings import Settings
from percolert.engine import es, indices
from percolert.service.migrations import document_upgrades
from tests.broker.test_broker_memory import card
from tests.conftest import ROOT

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(fresh_settings: Settings) -> AsyncIterator[AsyncElasticsearch]:
    """A client of a deployment whose indices are set up."""
    client = es.create_client(fresh_settings)
    try:
        await indices.setup(client, fresh_settings)
        yield client
    finally:
        await client.close()


AT = "2026-11-24T09:00:00.000+00:00"
AT_MS = 1_795_510_800_000  # AT in epoch milliseconds
OLD_SESSION = 0.0  # a session begun before every alert here
OWN = AlertWatch(id="w-1", terms="kindle")


def sending(
    log: AlertLog,
    found: str | tuple[ProductCard, ...],
    watches: dict[str, AlertWatch] | None = None,
    *,
    everyone: AlertWatch | None = None,
    excluded: tuple[str, ...] = (),
) -> AlertRecord:
    """The next sending; `found` (a label: one product of that sku) what its search found."""
    return AlertRecord(
        seq=log.next_seq(),
        at=AT,
        earliest_ms=AT_MS,
        found=(card(found),) if isinstance(found, str) else found,
        watches=watches or {},
        everyone=everyone,
        excluded=excluded,
    )


def alert(record: AlertRecord, watch: AlertWatch, shows: list[str] | None = None) -> Alert:
    """`record` as `watch`'s owner gets it: showing the products of skus `shows` (all it
    found, unless given)."""
    found = [product for product in record.found if shows is None or product.sku in shows]
    assert shows is None or [product.sku for product in found] == shows
    return Alert(
        id=f"{record.seq}-{watch.id}",
        seq=record.seq,
        watch=watch,
        count=record.count,
        at=AT,
        found=found,
    )


async def test_flushed_alerts_are_replayed_from_elasticsearch(
    fresh_settings: Settings, client: AsyncElasticsearch
) -> None:
    log = AlertLog(client, indices.alias_for(fresh_settings, "alerts"))
    start = log.last_seq
    bobs = AlertWatch(id="w-2", terms="kindle paperwhite", category="ereaders", max_price=150.0)
    odd = AlertWatch(id="w-3", terms="paperwhite", category="cases")
    # One search, three owners: one sending (one position, one document). "d.v*" is not
    # a plain path segment, so its replay reads every recipient's watch and picks its own,
    # and each is shown only the products its watch's filters fit.
    found = (
        card("paperwhite"),
        card("paperwhite-case", category="cases", price=15.0),
        card("oasis", price=250.0),
    )
    shared = sending(log, found, {"alice": OWN, "bob": bobs, "d.v*": odd})
    to_bob = sending(log, "kindle", {"bob": bobs})
    default = AlertWatch(id="default-1", terms="kindle oasis")
    to_all_but_carol = sending(log, "kindle oasis", everyone=default, excluded=("carol",))
    for record in (shared, to_bob, to_all_but_carol):
        log.append(record)
    await log.flush()
    assert log.write_failures == 0

    # A log with an empty buffer reads only what Elasticsearch stored.
    reader = AlertLog(client, indices.alias_for(fresh_settings, "alerts"))
    end = log.last_seq
    assert await reader.missed("alice", start, end, since=OLD_SESSION) == [
        alert(shared, OWN),
        alert(to_all_but_carol, default),
    ]
    assert await reader.missed("d.v*", start, end, since=OLD_SESSION) == [
        alert(shared, odd, ["paperwhite-case"]),
        alert(to_all_but_carol, default),
    ]
    assert await reader.missed("carol", start, end, since=OLD_SESSION) == []
    assert await reader.missed("bob", shared.seq, end, since=OLD_SESSION) == [
        alert(to_bob, bobs),
        alert(to_all_but_carol, default),
    ]
    # The newest `limit`, and whether that is all.
    bobs_all = [
        alert(shared, bobs, ["paperwhite"]),
        alert(to_bob, bobs),
        alert(to_all_but_carol, default),
    ]
    assert await reader.replay("bob", start, end, since=OLD_SESSION, limit=3) == (bobs_all, True)
    assert await reader.replay("bob", start, end, since=OLD_SESSION, limit=2) == (
        bobs_all[1:],
        False,
    )
    assert await reader.recent("bob", end, since=0, limit=2) == [
        alert(to_bob, bobs),
        alert(to_all_but_carol, default),
    ]
    # Up to a greeting's position only: what comes later reaches its socket live.
    assert await reader.recent("bob", to_bob.seq, since=0) == [
        alert(shared, bobs, ["paperwhite"]),
        alert(to_bob, bobs),
    ]
    # Each stored sending was fetched whole once; every later read took it from the cache.
    assert reader.cache.fetched == 3
    assert reader.cache.hits > 0


async def test_a_write_refused_for_now_keeps_the_alerts_for_the_next_flush(
    fresh_settings: Settings, client: AsyncElasticsearch
) -> None:
    alias = indices.alias_for(fresh_settings, "alerts")
    # Closed to writes, as an operator (or the disk monitor) may close an index for a while.
    await client.indices.put_settings(index=alias, settings={"index.blocks.write": True})
    log = AlertLog(client, alias)
    start = log.last_seq
    records = [sending(log, f"kindle {n}", {"alice": OWN}) for n in range(3)]
    for record in records:
        log.append(record)
    await log.flush()
    assert (log.write_failures, log.rejected) == (1, 0)
    expected = [alert(record, OWN) for record in records]
    # From the buffer:
    assert await log.missed("alice", start, log.last_seq, since=OLD_SESSION) == expected

    await client.indices.put_settings(index=alias, settings={"index.blocks.write": False})
    await log.flush()
    assert (log.write_failures, log.rejected) == (1, 0)
    reader = AlertLog(client, alias)
    assert await reader.missed("alice", start, log.last_seq, since=OLD_SESSION) == expected


async def test_a_sending_refused_for_good_is_dropped_and_holds_nothing_up(
    fresh_settings: Settings, client: AsyncElasticsearch
) -> None:
    """One document Elasticsearch will never take (a recipient id past the longest term
    Lucene indexes) is counted and dropped; the sendings beside and behind it are written."""
    alias = indices.alias_for(fresh_settings, "alerts")
    log = AlertLog(client, alias)
    start = log.last_seq
    before = sending(log, "kindle 1", {"alice": OWN})
    unwritable = sending(log, "kindle 2", {"alice": OWN, "x" * 40_000: OWN})
    beside = sending(log, "kindle 3", {"alice": OWN})
    for record in (before, unwritable, beside):
        log.append(record)
    await log.flush()
    assert (log.write_failures, log.rejected) == (0, 1)
    later = sending(log, "kindle 4", {"alice": OWN})
    log.append(later)
    await log.flush()
    assert (log.write_failures, log.rejected) == (0, 1)

    reader = AlertLog(client, alias)  # reads Elasticsearch only
    assert await reader.missed("alice", start, log.last_seq, since=OLD_SESSION) == [
        alert(record, OWN) for record in (before, beside, later)
    ]
    assert await log.missed("alice", start, log.last_seq, since=OLD_SESSION) == [
        alert(record, OWN) for record in (before, beside, later)
    ]


class FlushDuringSearch:
    """The real client, except that each search is followed by a flush of `log` before its
    answer is handed back: the moment a replay is between reading Elasticsearch and
    reading the unwritten sendings."""

    def __init__(self, client: AsyncElasticsearch) -> None:
        self._client = client
        self.log: AlertLog | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def search(self, **request: Any) -> Any:
        response = await self._client.search(**request)
        assert self.log is not None
        await self.log.flush()
        return response


async def test_a_flush_during_a_replay_loses_nothing(
    fresh_settings: Settings, client: AsyncElasticsearch
) -> None:
    alias = indices.alias_for(fresh_settings, "alerts")
    racing = FlushDuringSearch(client)
    log = AlertLog(cast(AsyncElasticsearch, racing), alias)
    racing.log = log
    start = log.last_seq
    records = [sending(log, f"kindle {n}", {"alice": OWN}) for n in range(3)]
    for record in records:
        log.append(record)
    expected = [alert(record, OWN) for record in records]
    # Elasticsearch had none of them when searched; the buffer has none once searched.
    assert await log.missed("alice", start, log.last_seq, since=OLD_SESSION) == expected
    assert (
        await AlertLog(client, alias).missed("alice", start, log.last_seq, since=OLD_SESSION)
        == expected
    )  # the flush did write them

    more = [sending(log, f"oasis {n}", {"alice": OWN}) for n in range(2)]
    for record in more:
        log.append(record)
    assert await log.recent("alice", log.last_seq, since=OLD_SESSION) == [
        alert(record, OWN) for record in [*records, *more]
    ]
    assert await log.recent("alice", more[0].seq, since=OLD_SESSION) == [
        alert(record, OWN) for record in [*records, more[0]]
    ]


async def test_nothing_counting_a_search_older_than_the_session_is_replayed(
    fresh_settings: Settings, client: AsyncElasticsearch
) -> None:
    alias = indices.alias_for(fresh_settings, "alerts")
    log = AlertLog(client, alias)
    start = log.last_seq
    default = AlertWatch(id="default-1", terms="kindle")
    session = AT_MS / 1000  # the session began at AT

    def made(earliest_ms: int, label: str) -> AlertRecord:
        return msgspec.structs.replace(
            sending(log, label, everyone=default), earliest_ms=earliest_ms
        )

    # A follow-up counting one search from a millisecond before the session; alerts
    # about searches made as the session began and after.
    older = made(AT_MS - 1, "kindle 1")
    as_it_began = made(AT_MS, "kindle 2")
    later = made(AT_MS + 60_000, "kindle 3")
    newer = [alert(as_it_began, default), alert(later, default)]
    for record in (older, as_it_began, later):
        log.append(record)
    for reader in (log, AlertLog(client, alias)):  # unwritten, then from Elasticsearch
        assert await reader.missed("alice", 0, log.last_seq, since=session) == newer
        assert await reader.recent("alice", log.last_seq, since=session) == newer
        assert await reader.missed("alice", start, log.last_seq, since=OLD_SESSION) == [
            alert(older, default),
            *newer,
        ]
        await log.flush()


# alerts v1: one document per recipient, with the whole alert as sent.
_V1_PROPERTIES = {
    "seq": {"type": "long"},
    "recipient": {"type": "keyword"},
    "everyone": {"type": "boolean"},
    "excluded": {"type": "keyword"},
    "at": {"type": "date"},
    "alert": {"type": "object", "enabled": False},
}


async def test_a_v1_log_is_migrated_and_still_replayed(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    old_mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", old_mappings)
    definition = json.loads((old_mappings / "alerts.json").read_text())
    definition["mappings"]["_meta"]["percolert_version"] = 1
    definition["mappings"]["properties"] = _V1_PROPERTIES
    (old_mappings / "alerts.json").write_text(json.dumps(definition))
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "alerts")
    try:
        await indices.setup(client, fresh_settings, mappings_dir=old_mappings)
        log = AlertLog(client, alias)
        start = log.last_seq
        # Alerts of protocol 1, as sent then: with the search text as `query`.
        old = [
            {"id": "a1", "seq": log.next_seq(), "query": "kindle for my divorce", "count": 3},
            {"id": "a2", "seq": log.next_seq(), "query": "oasis at 12 Elm St", "count": 1},
        ]
        for recipient, sent in zip(["alice", None], old, strict=True):
            document = {
                "seq": sent["seq"],
                "recipient": recipient,
                "everyone": recipient is None,
                "excluded": ["carol"] if recipient is None else [],
                "at": AT,
                "alert": {
                    **sent,
                    "watch": {"id": OWN.id, "terms": OWN.terms},
                    "at": AT,
                },
            }
            await client.index(index=alias, id=str(sent["seq"]), document=document, refresh=True)

        lines = await indices.setup(client, fresh_settings, migrations=document_upgrades())
        assert lines[2] == f"{alias} -> {alias}-v2: migrated from {alias}-v1 (old index kept)"
        replayed = await log.missed("alice", start, log.last_seq, since=OLD_SESSION)
        # The same alerts, under ids of the new form, without the text they were sent with.
        assert [(a.seq, a.watch, a.count, a.found) for a in replayed] == [
            (sent["seq"], OWN, sent["count"], []) for sent in old
        ]
        for replayed_alert in replayed:
            assert "query" not in msgspec.to_builtins(replayed_alert)
            assert b"divorce" not in msgspec.json.encode(replayed_alert)
            assert b"Elm St" not in msgspec.json.encode(replayed_alert)
        migrated = await client.search(index=alias, query={"match_all": {}})
        assert [hit["_source"]["alert"] for hit in migrated["hits"]["hits"]]  # some documents
        for hit in migrated["hits"]["hits"]:
            assert "query" not in hit["_source"]["alert"]  # not copied into the new index
        assert await log.missed("carol", start, log.last_seq, since=OLD_SESSION) == []
    finally:
        await client.close()


async def test_a_document_of_protocol_1_is_replayed_without_its_search_text(
    fresh_settings: Settings, client: AsyncElasticsearch
) -> None:
    """Protocol 1 logged the search text in the payload (`alert.query`) and no products:
    such a document is read as an alert of the current shape, showing no text and nothing
    found (to its own recipients, and through a default watch to everyone else)."""
    alias = indices.alias_for(fresh_settings, "alerts")
    log = AlertLog(client, alias)
    start = log.last_seq
    default = AlertWatch(id="default-1", terms="kindle oasis")
    own, to_everyone, before_redaction = log.next_seq(), log.next_seq(), log.next_seq()
    documents = {
        own: {
            "seq": own,
            "at": AT,
            "recipients": ["alice"],
            "everyone": False,
            "excluded": [],
            "alert": {
                "query": "kindle for my divorce lawyer",
                "count": 2,
                "watches": {"alice": {"id": OWN.id, "terms": OWN.terms}},
                "at": AT,
            },
        },
        to_everyone: {
            "seq": to_everyone,
            "at": AT,
            "recipients": [],
            "everyone": True,
            "excluded": ["carol"],
            "alert": {
                "query": "kindle oasis to 12 Elm St",
                "count": 1,
                "everyone": {"id": default.id, "terms": default.terms},
                "at": AT,
            },
        },
        # Older still: written before alerts were redacted, with no `alert.at`.
        before_redaction: {
            "seq": before_redaction,
            "at": AT,
            "recipients": ["alice"],
            "everyone": False,
            "excluded": [],
            "alert": {
                "query": "kindle call me on 555-0100",
                "count": 1,
                "watches": {"alice": {"id": OWN.id, "terms": OWN.terms}},
            },
        },
    }
    for seq, document in documents.items():
        await client.index(index=alias, id=str(seq), document=document, refresh=True)

    def shown(seq: int, watch: AlertWatch, count: int) -> Alert:
        return Alert(id=f"{seq}-{watch.id}", seq=seq, watch=watch, count=count, at=AT, found=[])

    expected = [shown(own, OWN, 2), shown(to_everyone, default, 1), shown(before_redaction, OWN, 1)]
    reader = AlertLog(client, alias)
    end = log.last_seq
    assert await reader.missed("alice", start, end, since=OLD_SESSION) == expected
    assert await reader.recent("alice", end, since=OLD_SESSION) == expected
    assert await reader.missed("bob", start, end, since=OLD_SESSION) == [
        shown(to_everyone, default, 1)
    ]
    assert await reader.missed("carol", start, end, since=OLD_SESSION) == []
    for replayed in await reader.missed("alice", start, end, since=OLD_SESSION):
        as_sent = msgspec.to_builtins(replayed)
        assert "query" not in as_sent
        assert as_sent["found"] == []
        encoded = msgspec.json.encode(replayed)
        for text in (b"divorce", b"Elm St", b"555-0100"):
            assert text not in encoded


class OtherInstances:
    """What a shared broker's mirrors give the log: other instances' sendings not yet
    written (here a fixed list), and the positions this log reports written."""

    def __init__(self, unwritten: list[AlertRecord]) -> None:
        self._unwritten = unwritten
        self.reported: list[int] = []

    async def unwritten(self, after: int, upto: int) -> list[AlertRecord]:
        return [record for record in self._unwritten if after < record.seq <= upto]

    async def written(self, seqs: list[int]) -> None:
        self.reported += seqs


async def test_replay_merges_other_instances_unwritten_sendings_and_reports_what_is_written(
    fresh_settings: Settings, client: AsyncElasticsearch
) -> None:
    alias = indices.alias_for(fresh_settings, "alerts")
    log = AlertLog(client, alias)
    start = log.last_seq
    mine = sending(log, "kindle 1", {"alice": OWN})
    theirs = [sending(log, f"kindle {n}", {"alice": OWN, "bob": OWN}) for n in (2, 3)]
    others = OtherInstances(theirs)
    log.mirrored_by(others)
    log.append(mine)
    expected = [alert(record, OWN) for record in (mine, *theirs)]
    assert await log.missed("alice", start, log.last_seq, since=OLD_SESSION) == expected
    assert await log.missed("alice", mine.seq, theirs[0].seq, since=OLD_SESSION) == expected[1:2]

    await client.indices.put_settings(index=alias, settings={"index.blocks.write": True})
    await log.flush()
    assert others.reported == []  # nothing visible yet: the mirror keeps it
    await client.indices.put_settings(index=alias, settings={"index.blocks.write": False})
    await log.flush()
    assert others.reported == [mine.seq]  # after the write, and only what was written
    assert await log.missed("alice", start, log.last_seq, since=OLD_SESSION) == expected
    assert await log.recent("alice", log.last_seq, since=OLD_SESSION) == expected
    assert (
        await AlertLog(client, alias).missed("alice", start, log.last_seq, since=OLD_SESSION)
        == expected[:1]
    )  # only `mine` is in Elasticsearch
