"""At login, an anonymous session's own watches move into the account (the SDK asks, with
both the account's token and the session's cookie): nothing else of the session does. Its
alert log, product alerts and seen mark stay the anonymous user's, unreadable by the account.

Each watch is added to the account as the account would add it (the watch store's cap,
duplicate check and per-owner lock), oldest first, and then removed from the session:
- added: moved;
- the account already watches the same (by meaning, watches.store): a duplicate, dropped
  from the session;
- the account is at `max_watches_per_user`: over the cap, left with the session (reported,
  so that the page can say which were not moved; the shopper may remove some and log in
  again);
- refused now (a category the catalog no longer has, say): left with the session too.
So a second merge moves nothing. Both users' sockets hear `watches_changed` afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from percolert.broker.base import Broker
from percolert.core.messages import MergeReport, Watch, WatchesChanged, WatchSpec
from percolert.watches.store import (
    DuplicateWatch,
    TooManyWatches,
    WatchError,
    WatchNotFound,
    WatchStore,
)


def spec_of(watch: Watch) -> WatchSpec:
    """The spec that makes `watch` again (for another owner): what the two share; a product
    watch (`sku`) has no words of its own (its `terms` name the product)."""
    fields: dict[str, Any] = {
        name: getattr(watch, name) for name in WatchSpec.__struct_fields__ if hasattr(watch, name)
    }
    if fields.get("sku"):
        fields["terms"] = ""
    return msgspec.convert(fields, WatchSpec)


async def merge_watches(
    watches: WatchStore, broker: Broker, anonymous: str, account: str
) -> MergeReport:
    """Move the anonymous session's own watches into the account (the module's docstring)."""
    moved = duplicates = over_cap = refused = 0
    for watch in reversed(await watches.owned_by(anonymous)):  # oldest first
        try:
            await watches.add(account, spec_of(watch))
        except DuplicateWatch:
            duplicates += 1
        except TooManyWatches:
            over_cap += 1
            continue
        except WatchError:
            refused += 1
            continue
        else:
            moved += 1
        with contextlib.suppress(WatchNotFound):  # a concurrent merge took it already
            await watches.remove(anonymous, watch.id)
    if moved or duplicates:
        for user in (account, anonymous):
            changed = WatchesChanged(watches=await watches.visible_to(user))
            await broker.notify_user(user, msgspec.json.encode(changed).decode())
    return MergeReport(moved=moved, duplicates=duplicates, over_cap=over_cap, refused=refused)
