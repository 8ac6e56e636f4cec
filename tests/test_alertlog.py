"""The alert log against a real node: what a flush writes is what replay reads back (each
recipient their own alert out of a shared sending), a write Elasticsearch refuses keeps
every sending buffered (and replayable) for the next one, and a log of the old layout (one
document per recipient) is migrated by `percolert setup`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from percolert import es, indices
from percolert.alertlog import AlertLog, AlertRecord
from percolert.messages import Alert, AlertWatch
from percolert.migrations import document_upgrades
from percolert.settings import Settings
from tests.conftest import ROOT

pytestmark = pytest.mark.anyio

AT = "2026-11-24T09:00:00.000+00:00"
OWN = AlertWatch(id="w-1", terms="kindle")


def sending(
    log: AlertLog,
    query: str,
    watches: dict[str, AlertWatch] | None = None,
    *,
    everyone: AlertWatch | None = None,
    excluded: tuple[str, ...] = (),
) -> AlertRecord:
    return AlertRecord(
        seq=log.next_seq(),
        at=AT,
        query=query,
        watches=watches or {},
        everyone=everyone,
        excluded=excluded,
    )


def alert(record: AlertRecord, watch: AlertWatch) -> Alert:
    return Alert(
        id=f"{record.seq}-{watch.id}",
        seq=record.seq,
        watch=watch,
        query=record.query,
        count=record.count,
        at=AT,
    )


async def test_flushed_alerts_are_replayed_from_elasticsearch(fresh_settings: Settings) -> None:
    client = es.create_client(fresh_settings)
    try:
        await indices.setup(client, fresh_settings)
        log = AlertLog(client, indices.alias_for(fresh_settings, "alerts"))
        start = log.last_seq
        bobs = AlertWatch(id="w-2", terms="kindle paperwhite")
        odd = AlertWatch(id="w-3", terms="paperwhite")
        # One search, three owners: one sending (one position, one document). "d.v*" is not
        # a plain path segment, so its replay reads every recipient's watch and picks its own.
        shared = sending(log, 'kindle "paperwhite" <b>', {"alice": OWN, "bob": bobs, "d.v*": odd})
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
        assert await reader.missed("alice", start, end) == [
            alert(shared, OWN),
            alert(to_all_but_carol, default),
        ]
        assert await reader.missed("d.v*", start, end) == [
            alert(shared, odd),
            alert(to_all_but_carol, default),
        ]
        assert await reader.missed("carol", start, end) == []
        assert await reader.missed("bob", shared.seq, end) == [
            alert(to_bob, bobs),
            alert(to_all_but_carol, default),
        ]
        assert await reader.recent("bob", 0, limit=2) == [
            alert(to_bob, bobs),
            alert(to_all_but_carol, default),
        ]
    finally:
        await client.close()


async def test_a_refused_write_keeps_the_alerts_for_the_next_flush(
    fresh_settings: Settings,
) -> None:
    client = es.create_client(fresh_settings)
    alias = indices.alias_for(fresh_settings, "alerts")
    try:
        # An index under the log's name that refuses every alert: strict, without `alert`.
        mappings = indices.IndexDefinition.load("alerts").body["mappings"]
        del mappings["properties"]["alert"]
        await client.indices.create(index=alias, mappings=mappings)
        log = AlertLog(client, alias)
        start = log.last_seq
        records = [sending(log, f"kindle {n}", {"alice": OWN}) for n in range(3)]
        for record in records:
            log.append(record)
        await log.flush()
        assert log.write_failures == 1
        expected = [alert(record, OWN) for record in records]
        assert await log.missed("alice", start, log.last_seq) == expected  # from the buffer

        await client.indices.delete(index=alias)
        await indices.setup(client, fresh_settings)
        await log.flush()
        assert log.write_failures == 1
        reader = AlertLog(client, alias)
        assert await reader.missed("alice", start, log.last_seq) == expected
    finally:
        await client.close()


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
        old = [
            Alert(id="a1", seq=log.next_seq(), watch=OWN, query="kindle", count=3, at=AT),
            Alert(id="a2", seq=log.next_seq(), watch=OWN, query="oasis", count=1, at=AT),
        ]
        for recipient, sent in zip(["alice", None], old, strict=True):
            document = {
                "seq": sent.seq,
                "recipient": recipient,
                "everyone": recipient is None,
                "excluded": ["carol"] if recipient is None else [],
                "at": AT,
                "alert": {
                    "id": sent.id,
                    "seq": sent.seq,
                    "watch": {"id": OWN.id, "terms": OWN.terms},
                    "query": sent.query,
                    "count": sent.count,
                    "at": AT,
                },
            }
            await client.index(index=alias, id=str(sent.seq), document=document, refresh=True)

        lines = await indices.setup(client, fresh_settings, migrations=document_upgrades())
        assert lines[2] == f"{alias} -> {alias}-v2: migrated from {alias}-v1 (old index kept)"
        replayed = await log.missed("alice", start, log.last_seq)
        # The same alerts, under ids of the new form.
        assert [(a.seq, a.watch, a.query, a.count) for a in replayed] == [
            (a.seq, a.watch, a.query, a.count) for a in old
        ]
        assert await log.missed("carol", start, log.last_seq) == []
    finally:
        await client.close()
