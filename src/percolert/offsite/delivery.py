"""Attempting the outbox's due events, a round at a time per channel: take what is due
(leased to this instance), try each (several at once), record what each try got, and go on
at once while rounds come full. Written events wake it; otherwise it looks every
`outbox_poll_seconds`.

The webhook channel waits while its endpoint is disabled (its events stay pending). E-mail
skips suppressed addresses (the event is `suppressed`), holds an address that had its
hourly share back to the next hour, and suppresses an address the receiving server refused
for good.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import elasticsearch
import jinja2
import msgspec
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch

from percolert.core.offsite_settings import OffsiteSettings
from percolert.core.times import iso_from_seconds
from percolert.offsite.attempts import Attempt
from percolert.offsite.endpoint import Endpoint
from percolert.offsite.mail import MailContent, Mailer
from percolert.offsite.outbox import Channel, Event, Outbox
from percolert.offsite.suppressions import Suppressions, address_key
from percolert.offsite.webhook import WebhookSender

logger = logging.getLogger(__name__)

# Events taken per round; tried at once, per channel.
ROUND = 200
_CONCURRENCY: dict[Channel, int] = {"webhook": 32, "email": 8}
_HOUR = 3600.0
# An attempt is stopped once it took this share of its lease (see `_attempt`).
_ATTEMPT_SHARE_OF_LEASE = 0.8

_ES_ERRORS = (TransportError, elasticsearch.ApiError)

# The links an e-mail carries: (its watch id or None, the account's mail key or None) ->
# (unsubscribe URL, unsubscribe-from-all URL or None).
UnsubscribeLinks = Callable[[str | None, str | None], tuple[str, str | None]]


class Delivery:
    def __init__(
        self,
        client: AsyncElasticsearch,
        outbox_alias: str,
        outbox: Outbox,
        settings: OffsiteSettings,
        *,
        webhook: WebhookSender | None,
        endpoint: Endpoint | None,
        mailer: Mailer | None,
        suppressions: Suppressions,
        links: UnsubscribeLinks,
        observe: Callable[[Channel, Attempt], None] = lambda channel, attempt: None,
    ) -> None:
        self._client = client
        self._outbox_alias = outbox_alias
        self._outbox = outbox
        self._settings = settings
        self._webhook = webhook
        self._endpoint = endpoint
        self._mailer = mailer
        self._suppressions = suppressions
        self._links = links
        self._observe = observe
        self._woken: dict[Channel, anyio.Event] = {
            "webhook": anyio.Event(),
            "email": anyio.Event(),
        }

    @property
    def channels(self) -> list[Channel]:
        """The channels this deployment sends by."""
        channels: list[Channel] = []
        if self._webhook is not None:
            channels.append("webhook")
        if self._mailer is not None:
            channels.append("email")
        return channels

    def wake(self) -> None:
        """Look for due events at once (some were just written)."""
        for woken in self._woken.values():
            woken.set()

    async def run(self, channel: Channel) -> None:
        """Attempt `channel`'s events until cancelled: one loop per channel, so that slow
        e-mail never holds webhooks back."""
        while True:
            self._woken[channel] = anyio.Event()
            full = False
            try:
                full = await self._round(channel, None)
            except _ES_ERRORS as error:
                # Leases run out: what this round held is taken again later.
                logger.warning("attempting off-site %s events failed, retrying: %s", channel, error)
            if not full:
                with anyio.move_on_after(self._settings.outbox_poll_seconds):
                    await self._woken[channel].wait()

    async def tick(self, now: float | None = None) -> bool:
        """One round per channel; whether any came full (more are due)."""
        full = False
        if self._webhook is not None:
            full |= await self._round("webhook", now)
        if self._mailer is not None:
            full |= await self._round("email", now)
        return full

    async def _round(self, channel: Channel, now: float | None) -> bool:
        if channel == "webhook":
            assert self._endpoint is not None
            if (await self._endpoint.read()).disabled:
                return False
        due = await self._outbox.due(channel, ROUND, now)
        # E-mails each address had in the last hour, counted once a round and carried
        # through its batches (what a batch records, search sees only after a refresh).
        sent: Counter[str] | None = None
        if channel == "email":
            sent = await self._sent_last_hour(
                {address_key(event.mail["to"]) for event in due if event.mail is not None},
                time.time() if now is None else now,
            )
        # Leased a batch at a time, just before it is tried: a lease need outlast one
        # attempt's timeout, not a whole round's.
        batch = _CONCURRENCY[channel]
        attempted = False
        for start in range(0, len(due), batch):
            attempted |= await self._attempt(channel, due[start : start + batch], now, sent)
        if attempted:
            # The next round's search must see this one's leases and outcomes (else it
            # finds the same events, loses every claim and waits a poll), and e-mail's
            # count this round's deliveries: one refresh a round, not one a second.
            await self._client.indices.refresh(index=self._outbox_alias)
        return attempted and len(due) == ROUND

    async def _attempt(
        self, channel: Channel, due: list[Event], now: float | None, sent: Counter[str] | None
    ) -> bool:
        """Lease `due`, try what this instance got, all at once; whether it got any."""
        claimed = await self._outbox.claim(due, now)
        results: list[tuple[Event, dict[str, Any]]] = []
        if sent is not None:
            claimed = await self._mailable(claimed, results, now, sent)
        attempts: list[tuple[Event, Attempt]] = []
        send = self._send_webhook if channel == "webhook" else self._send_mail
        # An attempt ends well within its lease, whatever the receiver does: past the lease
        # another instance would take the event and send it again.
        bound = self._outbox.lease_seconds * _ATTEMPT_SHARE_OF_LEASE

        async def attempt(event: Event) -> None:
            started = time.time()
            with anyio.move_on_after(bound):
                attempts.append((event, await send(event)))
                return
            attempts.append((event, _overran(started, bound)))

        async with anyio.create_task_group() as group:
            for event in claimed:
                group.start_soon(attempt, event)
        for event, tried in attempts:
            self._observe(channel, tried)
            results.append((event, self._outbox.outcome(event, tried)))
            if tried.suppress and event.mail is not None:
                await self._suppressions.add(event.mail["to"], "bounced")
        await self._outbox.record(results)
        if channel == "webhook" and attempts:
            assert self._endpoint is not None
            await self._endpoint.observe(sorted((tried for _, tried in attempts), key=_started))
        return bool(claimed) or bool(results)

    async def _send_webhook(self, event: Event) -> Attempt:
        assert self._webhook is not None
        return await self._webhook.send(event.id, msgspec.json.encode(event.payload))

    async def _send_mail(self, event: Event) -> Attempt:
        assert self._mailer is not None
        assert event.mail is not None
        mail = event.mail
        try:
            content = msgspec.convert(mail["content"], MailContent)
            unsubscribe, unsubscribe_all = self._links(mail.get("watch_id"), mail.get("mail_key"))
            # Off the event loop: a shop's template may take a while to render.
            message = await anyio.to_thread.run_sync(
                partial(
                    self._mailer.compose,
                    mail["to"],
                    content,
                    message_id=mail["message_id"],
                    unsubscribe_url=unsubscribe,
                    unsubscribe_all_url=unsubscribe_all,
                    unsubscribe_mailto=self._settings.mail_unsubscribe_mailto,
                )
            )
        except (msgspec.ValidationError, KeyError, ValueError, jinja2.TemplateError) as error:
            # A template the shop broke is fixed and the event replayed: kept as failed.
            return Attempt(
                outcome="failed",
                at=iso_from_seconds(time.time()),
                duration_ms=0.0,
                error=f"composing the message failed: {str(error)[:200]}",
            )
        return await self._mailer.send(message)

    async def _mailable(
        self,
        claimed: list[Event],
        results: list[tuple[Event, dict[str, Any]]],
        now: float | None,
        sent: Counter[str],
    ) -> list[Event]:
        """The claimed e-mails to send now; the others' changes go to `results`: suppressed
        addresses' events end, and an address past its hourly share (`sent`, counted by the
        round and kept up to date here) waits."""
        if not claimed:
            return []
        now = time.time() if now is None else now
        addresses = {event.mail["to"] for event in claimed if event.mail is not None}
        suppressed = await self._suppressions.suppressed(addresses)
        share = self._settings.mail_per_recipient_per_hour
        sending = []
        for event in claimed:
            address = None if event.mail is None else event.mail["to"]
            if address is None or address in suppressed:
                results.append((event, {"state": "suppressed", "lease_until": None}))
            elif sent[address_key(address)] >= share:
                results.append((event, self._outbox.release(event, now + _HOUR / share)))
            else:
                sent[address_key(address)] += 1
                sending.append(event)
        return sending

    async def _sent_last_hour(self, recipients: set[str], now: float) -> Counter[str]:
        """E-mails delivered in the last hour to each address (by its hash): however many
        accounts share an address, it gets its hourly share at most."""
        if not recipients:
            return Counter()
        response = await self._client.search(
            index=self._outbox_alias,
            query={
                "bool": {
                    "filter": [
                        {"term": {"channel": "email"}},
                        {"term": {"state": "delivered"}},
                        {"terms": {"recipient": sorted(recipients)}},
                        {"range": {"delivered_at": {"gte": iso_from_seconds(now - _HOUR)}}},
                    ]
                }
            },
            size=0,
            aggs={"recipients": {"terms": {"field": "recipient", "size": len(recipients)}}},
        )
        return Counter(
            {
                bucket["key"]: int(bucket["doc_count"])
                for bucket in response["aggregations"]["recipients"]["buckets"]
            }
        )


def _started(attempt: Attempt) -> str:
    return attempt.at


def _overran(started: float, bound: float) -> Attempt:
    return Attempt(
        outcome="retry",
        at=iso_from_seconds(started),
        duration_ms=round(bound * 1000, 1),
        error=f"stopped after {bound:g} s, before the event's lease ran out",
    )
