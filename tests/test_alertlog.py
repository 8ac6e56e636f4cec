"""The alert log against a real node: what a flush writes is what replay reads back, and a
write Elasticsearch refuses keeps every alert buffered (and replayable) for the next one."""

from __future__ import annotations

import pytest

from percolert import es, indices
from percolert.alertlog import AlertLog, LoggedAlert
from percolert.messages import Alert, AlertWatch
from percolert.settings import Settings

pytestmark = pytest.mark.anyio


def logged(log: AlertLog, recipient: str | None, query: str, *excluded: str) -> LoggedAlert:
    seq = log.next_seq()
    alert = Alert(
        id=f"a{seq}",
        seq=seq,
        watch=AlertWatch(id="w-1", terms="kindle"),
        query=query,
        count=1,
        at="2026-11-24T09:00:00.000Z",
    )
    return LoggedAlert(
        seq=seq, recipient=recipient, excluded=excluded, at="2026-11-24T09:00:00.000Z", alert=alert
    )


async def test_flushed_alerts_are_replayed_from_elasticsearch(fresh_settings: Settings) -> None:
    client = es.create_client(fresh_settings)
    try:
        await indices.setup(client, fresh_settings)
        log = AlertLog(client, indices.alias_for(fresh_settings, "alerts"))
        start = log.last_seq
        to_alice = logged(log, "alice", 'kindle "paperwhite" <b>')
        to_bob = logged(log, "bob", "kindle")
        to_all_but_carol = logged(log, None, "kindle oasis", "carol")
        for entry in (to_alice, to_bob, to_all_but_carol):
            log.append(entry)
        await log.flush()
        assert log.write_failures == 0

        # A log with an empty buffer reads only what Elasticsearch stored.
        reader = AlertLog(client, indices.alias_for(fresh_settings, "alerts"))
        end = log.last_seq
        assert await reader.missed("alice", start, end) == [to_alice, to_all_but_carol]
        assert await reader.missed("carol", start, end) == []
        assert await reader.missed("bob", to_bob.seq, end) == [to_all_but_carol]
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
        entries = [logged(log, "alice", f"kindle {n}") for n in range(3)]
        for entry in entries:
            log.append(entry)
        await log.flush()
        assert log.write_failures == 1
        assert await log.missed("alice", start, log.last_seq) == entries  # from the buffer

        await client.indices.delete(index=alias)
        await indices.setup(client, fresh_settings)
        await log.flush()
        assert log.write_failures == 1
        reader = AlertLog(client, alias)
        assert await reader.missed("alice", start, log.last_seq) == entries
    finally:
        await client.close()
