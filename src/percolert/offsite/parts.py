"""What routing and digests both work with: the product alerts' index, the settings, the
outbox they write events to (waking delivery), accounts' contacts and the addresses that may
not be mailed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from elasticsearch import AsyncElasticsearch

from percolert.core.offsite_settings import OffsiteSettings
from percolert.offsite.contacts import Contact, Contacts
from percolert.offsite.outbox import NewEvent, Outbox
from percolert.offsite.suppressions import Suppressions


@dataclass(frozen=True)
class Parts:
    client: AsyncElasticsearch
    alerts_alias: str
    settings: OffsiteSettings
    outbox: Outbox
    contacts: Contacts
    suppressions: Suppressions
    # Told when events were written: delivery looks at once rather than at its next poll.
    on_events: Callable[[], None] = field(default=lambda: None)

    async def suppressed(self, contacts: Iterable[Contact]) -> set[str]:
        """The addresses of `contacts` that may not be mailed (none without e-mail)."""
        if not self.settings.email:
            return set()
        return await self.suppressions.suppressed(
            contact.email for contact in contacts if contact.email
        )

    def address(self, contact: Contact | None, suppressed: set[str]) -> str | None:
        """Where the account's e-mail goes, if it may have any."""
        if not self.settings.email or contact is None or contact.email is None:
            return None
        return None if contact.email in suppressed else contact.email

    async def write(self, made: list[NewEvent]) -> None:
        """Write events (before what they are about is marked handled), and wake delivery."""
        await self.outbox.add(made)
        if made:
            self.on_events()
