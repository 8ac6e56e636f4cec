"""Off-site delivery of one deployment, wired: the outbox and its loops (routing, digests,
delivery, retention), and what the edges ask of it (events of watches and erasures, the
unsubscribe links, the admin's endpoint and delivery log)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

import anyio
import elasticsearch
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import Frequency, Watch
from percolert.core.settings import Settings
from percolert.core.supervisor import Loop
from percolert.engine import indices
from percolert.offsite import events
from percolert.offsite.attempts import Attempt
from percolert.offsite.contacts import Contacts
from percolert.offsite.delivery import Delivery
from percolert.offsite.digests import Digests
from percolert.offsite.endpoint import Endpoint
from percolert.offsite.mail import Mailer, SmtpSettings
from percolert.offsite.outbox import Channel, NewEvent, Outbox
from percolert.offsite.parts import Parts
from percolert.offsite.routing import Router, WatchFrequencies
from percolert.offsite.suppressions import Suppressions
from percolert.offsite.unsubscribe import UNSUBSCRIBE_PATH, UnsubscribeTarget, UnsubscribeTokens
from percolert.offsite.webhook import WebhookSender

logger = logging.getLogger(__name__)

# Delivered and failed events (and their logs) are kept this long.
_RETENTION_SECONDS = 30 * 86_400.0
_PRUNE_EVERY_SECONDS = 3600.0

# A watch's e-mail frequency, set whoever owns it: False when there is no such watch.
TurnFrequency = Callable[[str, Frequency], Awaitable[bool]]


class Offsite:
    def __init__(
        self,
        client: AsyncElasticsearch,
        settings: Settings,
        *,
        owner: str,
        secret: str,
        watch_frequencies: WatchFrequencies,
        turn_frequency: TurnFrequency,
        observe: Callable[[Channel, Attempt], None] = lambda channel, attempt: None,
    ) -> None:
        offsite = self.settings = settings.offsite
        alias = partial(indices.alias_for, settings)
        self._turn_frequency = turn_frequency
        self._public_url = offsite.public_url or f"http://{settings.host}:{settings.port}"
        self.outbox = Outbox(
            client,
            alias("outbox"),
            owner=owner,
            lease_seconds=offsite.outbox_lease_seconds,
            schedule=offsite.retry_schedule,
        )
        self.contacts = Contacts(client, alias("accounts"))
        self.suppressions = Suppressions(client, alias("suppressions"))
        self.tokens = UnsubscribeTokens(secret)
        self.endpoint: Endpoint | None = None
        self.webhook: WebhookSender | None = None
        if offsite.webhook_url is not None:
            self.endpoint = Endpoint(
                client,
                alias("webhook_endpoints"),
                offsite.webhook_url,
                disable_after_seconds=offsite.webhook_disable_after_days * 86_400,
            )
            self.webhook = WebhookSender(
                offsite.webhook_url,
                offsite.webhook_secrets,
                allow_private=offsite.webhook_allow_private,
                timeout_seconds=offsite.webhook_timeout_seconds,
            )
        self.mailer: Mailer | None = None
        if offsite.smtp_host is not None and offsite.mail_from is not None:
            if not self._public_url.startswith("https://"):
                # Mail providers take one-click unsubscribe links (RFC 8058) over https only.
                logger.warning(
                    "e-mail's unsubscribe links start %s: set PERCOLERT_PUBLIC_URL to the "
                    "https address shoppers reach this service at",
                    self._public_url,
                )
            self.mailer = Mailer(
                SmtpSettings(
                    host=offsite.smtp_host,
                    port=offsite.smtp_port,
                    tls=offsite.smtp_tls,
                    username=offsite.smtp_username,
                    password=offsite.smtp_password,
                ),
                mail_from=offsite.mail_from,
                templates=offsite.mail_templates,
                shop_name=offsite.shop_name,
            )
        self.delivery = Delivery(
            client,
            alias("outbox"),
            self.outbox,
            offsite,
            webhook=self.webhook,
            endpoint=self.endpoint,
            mailer=self.mailer,
            suppressions=self.suppressions,
            links=self.links,
            observe=observe,
        )
        parts = Parts(
            client,
            alias("product_alerts"),
            offsite,
            self.outbox,
            self.contacts,
            self.suppressions,
            on_events=self.delivery.wake,
        )
        self.router = Router(parts, watch_frequencies)
        self.digests = Digests(parts)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def loops(self) -> dict[str, Loop]:
        """The background loops to run (none when neither channel is configured)."""
        if not self.enabled:
            return {}
        loops: dict[str, Loop] = {
            "offsite_routing": self.router.run,
            "offsite_digests": self.digests.run,
            "outbox_retention": self._retain,
        }
        for channel in self.delivery.channels:
            loops[f"offsite_{channel}"] = partial(self.delivery.run, channel)
        return loops

    async def close(self) -> None:
        if self.webhook is not None:
            await self.webhook.close()

    def links(self, watch_id: str | None, mail_key: str | None) -> tuple[str, str | None]:
        """An e-mail's unsubscribe links: its watch's (or, for a digest, everything's), and
        everything's."""
        everything = (
            None
            if mail_key is None
            else self._unsubscribe_url(UnsubscribeTarget(kind="all", id=mail_key))
        )
        if watch_id is not None:
            return self._unsubscribe_url(UnsubscribeTarget(kind="watch", id=watch_id)), everything
        if everything is None:
            raise ValueError("a message about no watch needs the account's mail key")
        return everything, everything

    def _unsubscribe_url(self, target: UnsubscribeTarget) -> str:
        return f"{self._public_url}{UNSUBSCRIBE_PATH}{self.tokens.make(target)}"

    async def unsubscribe(self, target: UnsubscribeTarget) -> bool:
        """Turn off what the link names: one watch's e-mail, or all e-mail to the account's
        address (then suppressed). False when there is nothing left to turn off."""
        if target.kind == "watch":
            return await self._turn_frequency(target.id, "off")
        contact = await self.contacts.by_mail_key(target.id)
        if contact is None:
            return False
        if contact.email is not None:
            await self.suppressions.add(contact.email, "unsubscribed")
        await self.contacts.set_preferences(
            contact.user,
            frequency="off",
            timezone=contact.timezone,
            digest_hour=contact.digest_hour,
        )
        return True

    async def saw(self, user: str, subject: str, email: str | None) -> None:
        """A verified token of the account: its customer id and address, for later. A
        failure to record it is logged: the request goes on, the next token tries again."""
        if not self.enabled:
            return
        try:
            await self.contacts.saw(user, subject, email)
        except (TransportError, elasticsearch.ApiError) as error:
            logger.warning("recording an account's contact failed: %s", error)

    async def emit(self, made: Iterable[NewEvent]) -> None:
        """Webhook events of the edges (watches made and removed, erasures): written, then
        attempted. Nothing when the deployment has no webhook."""
        if self.webhook is None:
            return
        if await self.outbox.add(made):
            self.delivery.wake()

    async def watch_changed(self, event_type: str, user: str, watch: Watch) -> None:
        """An account made or removed a watch: the shop hears of it. The change is made by
        then; a failure to write the event is logged rather than failing the request."""
        if self.webhook is None:
            return
        try:
            contact = await self.contacts.get(user)
            subject = None if contact is None else contact.subject
            await self.emit([events.watch_webhook(event_type, user, subject, watch, time.time())])
        except (TransportError, elasticsearch.ApiError) as error:
            logger.warning("writing a %s event failed: %s", event_type, error)

    async def erase(self, user: str, subject: str | None) -> int:
        """Everything off-site of the account: its contact and its events (those written,
        whatever their state); then the shop hears of the erasure. Returns how many events
        were deleted."""
        await self.contacts.erase(user)
        deleted = await self.outbox.erase_user(user)
        if subject is not None:
            await self.emit([events.erased_webhook(user, subject, time.time())])
        return deleted

    async def _retain(self) -> None:
        while True:
            try:
                await self.outbox.prune(time.time() - _RETENTION_SECONDS)
            except (TransportError, elasticsearch.ApiError) as error:
                logger.warning("pruning the outbox failed, next time: %s", error)
            await anyio.sleep(_PRUNE_EVERY_SECONDS)
