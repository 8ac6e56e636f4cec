"""What the parts of an erasure forget, each on its own: both brokers forget a user in their
coalescing windows alike (a real redis-server for the shared one), and the alert log takes
them out of what it has not written yet and of what is appended a moment later."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import msgspec
import pytest

from percolert.accounts.ids import account_user_id
from percolert.alerts.dispatch import followup_sendings
from percolert.alerts.log import AlertLog
from percolert.broker.base import DefaultCandidate, Followup, OwnedCandidate, SearchFold
from percolert.broker.memory import MemoryBroker
from percolert.broker.redis import RedisBroker
from percolert.core.messages import AlertWatch, ProductCard
from percolert.core.records import AlertRecord
from percolert.core.settings import Settings
from percolert.engine import es, indices
from percolert.realtime.hub import Hub
from tests.accounts import traces
from tests.broker.test_broker_redis import Log  # a numbering either broker takes

pytestmark = pytest.mark.anyio

WINDOW = 60.0  # nothing ends on its own: windows end by claim_due(everything)
KINDLE = ProductCard(
    sku="ER-1", product_name="Kindle", price=99.0, category="e-readers", brand="Amazon"
)


def _ended(followups: list[Followup]) -> list[Any]:
    return sorted(
        (
            followup.watch_id,
            followup.owner or "",
            [(e.at, e.searcher, sorted(e.skip)) for e in followup.events],
            sorted(followup.not_alerted),
        )
        for followup in followups
    )


async def test_both_brokers_forget_an_erased_user_in_their_windows(redis_url: str) -> None:
    erased, other, searcher = (account_user_id(f"{name}-{uuid.uuid4().hex}") for name in "eos")
    settings = Settings(
        index_prefix=f"pt-{uuid.uuid4().hex[:10]}", coalesce_seconds=WINDOW, redis_url=redis_url
    )
    memory = MemoryBroker(Hub(), Log(), window_seconds=WINDOW)
    shared = RedisBroker(settings, Hub(), Log(), url=redis_url, instance_id="one")
    await shared.start()
    theirs = OwnedCandidate(watch=AlertWatch(id="w-erased", terms="kindle"), owner=erased)
    others = OwnedCandidate(watch=AlertWatch(id="w-other", terms="kindle"), owner=other)
    default = DefaultCandidate(watch=AlertWatch(id="default-1", terms="kindle"))
    at = time.time()

    def search(n: int, by: str) -> SearchFold:
        return SearchFold(found=(KINDLE,), at=at + n / 1000, searcher=by)

    steps = [
        (search(1, searcher), [theirs, others], default),  # both owners at once; everyone
        (search(2, searcher), [theirs, others], default),  # folded in all three windows
        (search(3, erased), [others], default),  # their search, in the others' windows
        (search(4, erased), [others], default),
    ]
    try:
        await shared.connected(erased)
        for broker in (memory, shared):
            for fold, owned, candidate in steps:
                await broker.hits(fold, owned, candidate)
        assert await traces.in_redis(redis_url, [erased])
        forgotten = [await broker.erase_user(erased) for broker in (memory, shared)]
        # Their window; their two searches in each of the two other windows.
        assert [(f.windows, f.searches) for f in forgotten] == [(1, 4), (1, 4)]
        assert forgotten[1].sockets == 1  # registered open on some instance
        # Nothing of them is left in Redis, their own window included.
        assert await traces.in_redis(redis_url, [erased]) == []
        # The other windows end as they would have, without them: their searches still
        # count for the other owner, by nobody; no follow-up goes to them or names them.
        ended = [await broker.claim_due(everything=True) for broker in (memory, shared)]
        assert _ended(ended[0]) == _ended(ended[1])
        assert sorted((f.owner or "", len(f.events)) for f in ended[1]) == [("", 3), (other, 3)]
        sendings = [s for followup in ended[1] for s in followup_sendings(followup)]
        text = json.dumps(msgspec.to_builtins([*ended[0], *ended[1], *sendings]))
        assert erased not in text
        assert searcher in text  # who else made those searches is kept, as it was
        # Erasing again finds nothing.
        again = [await broker.erase_user(erased) for broker in (memory, shared)]
        assert [(f.sockets, f.windows, f.searches) for f in again] == [(0, 0, 0), (0, 0, 0)]
    finally:
        await shared.close()


def _record(seq: int, *, watches: dict[str, AlertWatch], excluded: tuple[str, ...] = ()) -> Any:
    everyone = AlertWatch(id="default-1", terms="kindle") if not watches else None
    return AlertRecord(
        seq=seq,
        at="2026-01-01T00:00:00.000+00:00",
        earliest_ms=int(time.time() * 1000),
        found=(KINDLE,),
        watches=watches,
        everyone=everyone,
        excluded=excluded,
    )


async def test_the_alert_log_forgets_what_it_has_not_written(fresh_settings: Settings) -> None:
    erased, other = (account_user_id(f"{name}-{uuid.uuid4().hex}") for name in "eo")
    theirs, others = (AlertWatch(id=f"w-{name}", terms="kindle") for name in ("e", "o"))
    client = es.create_client(fresh_settings)
    await indices.setup(client, fresh_settings)
    log = AlertLog(client, indices.alias_for(fresh_settings, "alerts"))
    try:
        seqs = [log.next_seq() for _ in range(4)]
        log.append(_record(seqs[0], watches={erased: theirs}))  # theirs alone: goes
        log.append(_record(seqs[1], watches={erased: theirs, other: others}))
        log.append(_record(seqs[2], watches={}, excluded=(erased, other)))
        assert log.forget(erased) is False  # no write in flight names them
        # Made from what was in flight when they were erased: taken out as it comes.
        log.append(_record(seqs[3], watches={erased: theirs, other: others}))
        await log.flush()
        stored = await client.search(
            index=indices.alias_for(fresh_settings, "alerts"), size=10, sort=[{"seq": "asc"}]
        )
        sources = [hit["_source"] for hit in stored["hits"]["hits"]]
        assert [source["seq"] for source in sources] == seqs[1:]
        assert erased not in json.dumps(sources)
        assert [source["recipients"] for source in sources] == [[other], [], [other]]
        assert sources[1]["excluded"] == [other]
        recent = await log.recent(other, log.last_seq, since=0)
        assert [alert.watch.id for alert in recent] == ["w-o", "w-o"]
    finally:
        await client.close()
