"""What the off-site tests share: a real webhook receiver and SMTP server in the test process,
and an e-mail-only deployment's off-site parts on a real node, whose rounds a test calls with
the moment it chooses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import msgspec
import pytest
from elasticsearch import AsyncElasticsearch

from percolert.core.offsite_settings import OffsiteSettings
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import indices
from percolert.offsite.service import Offsite
from percolert.watches.store import WatchStore
from tests.conftest import client_for, prepare_indices
from tests.offsite.receivers import SmtpSink, WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@dataclass(frozen=True)
class Mailing:
    """A deployment's off-site parts, mailing `sink`, with no server and no loops running."""

    settings: Settings
    client: AsyncElasticsearch
    watches: WatchStore
    offsite: Offsite


@pytest.fixture
async def mailing(fresh_settings: Settings, sink: SmtpSink) -> AsyncIterator[Mailing]:
    settings = msgspec.structs.replace(
        fresh_settings,
        offsite=OffsiteSettings(
            offsite_after_seconds=0.0,
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            smtp_tls="off",
            mail_from="The Shop <alerts@shop.test>",
            public_url="https://alerts.shop.test",
        ),
    )
    await asyncio.to_thread(prepare_indices, settings)
    client = client_for(settings)
    watches = WatchStore(
        client, indices.alias_for(settings, "watches"), TextNormalizer(), max_per_user=50
    )
    offsite = Offsite(
        client,
        settings,
        owner="test",
        secret="a secret of the off-site tests",
        watch_frequencies=watches.frequencies,
        turn_frequency=watches.turn_frequency,
    )
    yield Mailing(settings, client, watches, offsite)
    await offsite.close()
    await client.close()
