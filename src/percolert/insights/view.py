"""The demand view as the admin page, the admin API and the CLI use it: the tables read at
most once per `insights_cache_seconds` for each window (however many admins keep the page
open, the cluster answers one of them), the live figures at most once every few seconds,
and the two actions the view suggests: promote a search or a watched term to a default watch,
retire a default watch.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import anyio
import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.core.cached import Cached
from percolert.core.messages import Watch, WatchSpec
from percolert.core.settings import Settings
from percolert.core.times import duration_seconds
from percolert.insights.queries import read_insights, read_live
from percolert.insights.report import Insights, Live
from percolert.watches.store import InvalidWatch, WatchStore

# The windows a view may ask for: a minute to the longest retention there is.
MIN_SINCE_SECONDS = 60.0
MAX_SINCE_SECONDS = 90 * 86_400.0
DEFAULT_SINCE = "24h"
_LIVE_CACHE_SECONDS = 2.0
# Windows cached at once (the page asks for three; the API may ask for any).
_MAX_WINDOWS = 8


class InvalidWindow(ValueError):
    """A window that is not a duration within the bounds."""


def window_seconds(text: str) -> float:
    """`--since` / `?since=`: a duration (90m, 24h, 7d) between a minute and 90 days."""
    seconds = duration_seconds(text)
    if seconds is None or not MIN_SINCE_SECONDS <= seconds <= MAX_SINCE_SECONDS:
        raise InvalidWindow(
            f"since takes a duration between 1m and 90d, like 1h, 24h or 7d; got {text[:40]!r}"
        )
    return seconds


def promotion(text: str) -> WatchSpec:
    """The default watch a search text (or a watched term) becomes; InvalidWatch if it
    cannot be one."""
    try:
        return msgspec.convert({"terms": text, "notify": "searches"}, WatchSpec)
    except msgspec.ValidationError as error:
        raise InvalidWatch(f"{text[:60]!r} cannot be a watch: {error}") from None


class DemandView:
    def __init__(
        self,
        client: AsyncElasticsearch,
        settings: Settings,
        watches: WatchStore,
    ) -> None:
        self._client = client
        self._settings = settings
        self._watches = watches
        self._windows: OrderedDict[float, Cached[Insights]] = OrderedDict()
        self._live = Cached(self._read_live, ttl_seconds=_LIVE_CACHE_SECONDS)
        # One read at a time, whichever window: the page asks for several at once, and
        # each read is a handful of aggregations the node runs beside shoppers' searches.
        self._reading = anyio.Lock()

    async def _read(self, since: float) -> Insights:
        defaults = await self._watches.defaults()
        async with self._reading:
            return await read_insights(self._client, self._settings, defaults, since=since)

    async def _read_live(self) -> Live:
        async with self._reading:
            return await read_live(self._client, self._settings, time.time())

    async def insights(self, since: float) -> Insights:
        cached = self._windows.get(since)
        if cached is None:
            cached = self._windows[since] = Cached(
                lambda: self._read(since), ttl_seconds=self._settings.insights_cache_seconds
            )
            while len(self._windows) > _MAX_WINDOWS:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(since)
        return await cached.get()

    async def live(self) -> Live:
        return await self._live.get()

    def _forget(self) -> None:
        """After an action: the next read shows it."""
        self._windows.clear()

    async def promote(self, text: str) -> Watch:
        """A default watch of `text` (the same one again if it exists). Raises InvalidWatch
        (and the watch store's errors)."""
        watch = await self._watches.add(None, promotion(text))
        self._forget()
        return watch

    async def retire(self, watch_id: str) -> Watch:
        """Delete the default watch `watch_id`; WatchNotFound if there is none."""
        watch = await self._watches.remove(None, watch_id)
        self._forget()
        return watch
