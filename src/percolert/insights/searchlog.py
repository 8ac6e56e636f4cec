"""The search log's indices: one a day (`<prefix>-searchlog-YYYY.MM.DD`, UTC), each made from
one index template before its first document is written, and deleted whole once older than the
retention (`PERCOLERT_SEARCH_LOG_DAYS`).

A day's index is what an index lifecycle policy would roll over to; deleting it whole costs
the cluster nothing, where deleting old documents one by one from a single index (a delete by
query) would rewrite its segments under the write load of every search. It works the same on
every cluster, with or without Elastic's lifecycle feature (the dev node has none).
"""

from __future__ import annotations

import logging
import math
import re
from datetime import UTC, date, datetime, timedelta

import elasticsearch
from elasticsearch import AsyncElasticsearch

from percolert.core.settings import Settings
from percolert.engine.indices import IndexDefinition

logger = logging.getLogger(__name__)

NAME = "searchlog"
_DAY_FORMAT = "%Y.%m.%d"
_DAY = re.compile(r"\d{4}\.\d{2}\.\d{2}")


def pattern(settings: Settings) -> str:
    """Every day's index (what the demand view searches)."""
    return f"{settings.index_prefix}-{NAME}-*"


def index_of_day(settings: Settings, day: date) -> str:
    return f"{settings.index_prefix}-{NAME}-{day.strftime(_DAY_FORMAT)}"


def index_at(settings: Settings, epoch_ms: int) -> str:
    """The index a document of the moment `epoch_ms` goes to."""
    return index_of_day(settings, datetime.fromtimestamp(epoch_ms / 1000, UTC).date())


async def create_day(client: AsyncElasticsearch, name: str) -> None:
    """Make a day's index unless it exists: clusters that do not create indices on a first
    write (`action.auto_create_index: false`) are common. Its settings and mappings are
    given here as well as by the template, so a day is never mapped by guess, even where
    the template could not be put (a key without `manage_index_templates`)."""
    definition = IndexDefinition.load(NAME)
    try:
        await client.indices.create(
            index=name,
            settings=definition.body["settings"],
            mappings=definition.body["mappings"],
        )
    except elasticsearch.BadRequestError as error:
        if error.error != "resource_already_exists_exception":
            raise


def _template_name(settings: Settings) -> str:
    return f"{settings.index_prefix}-{NAME}"


async def ensure_template(client: AsyncElasticsearch, settings: Settings) -> str:
    """Put the template of the days' indices (idempotent; a changed mapping applies from the
    next day's index on). Returns a line for `percolert setup`."""
    definition = IndexDefinition.load(NAME)
    await client.indices.put_index_template(
        name=_template_name(settings),
        index_patterns=[pattern(settings)],
        # Above the cluster's own catch-all templates, so a day's index is made from ours.
        priority=200,
        template={"settings": definition.body["settings"], "mappings": definition.body["mappings"]},
        meta={"percolert_version": definition.version},
    )
    return f"{_template_name(settings)}: index template v{definition.version} (one index a day)"


def expired(names: list[str], settings: Settings, today: date) -> list[str]:
    """Of the days' indices `names`, those older than the retention: a day is kept while any
    part of it is within `search_log_days` of now."""
    oldest = today - timedelta(days=math.ceil(settings.search_log_days))
    prefix = f"{settings.index_prefix}-{NAME}-"
    old = []
    for name in names:
        day = name.removeprefix(prefix)
        if (
            name.startswith(prefix)
            and _DAY.fullmatch(day)
            and datetime.strptime(day, _DAY_FORMAT).date() < oldest
        ):
            old.append(name)
    return sorted(old)


async def delete_expired(client: AsyncElasticsearch, settings: Settings, now: datetime) -> int:
    """Delete the days' indices past the retention; returns how many. Instances doing it at
    once is harmless: what another deleted first is gone already."""
    try:
        found = await client.indices.get(index=pattern(settings), allow_no_indices=True)
    except elasticsearch.NotFoundError:
        return 0
    deleted = 0
    for name in expired(list(found.body), settings, now.date()):
        try:
            await client.indices.delete(index=name)
            deleted += 1
        except elasticsearch.NotFoundError:
            pass
    if deleted:
        logger.info(
            "search log: deleted %d day(s) older than %g days", deleted, settings.search_log_days
        )
    return deleted
