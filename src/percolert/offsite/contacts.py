"""Accounts' contact and off-site preferences (mappings/accounts.json), one document per
account: the shop's customer id (the webhook's events name it), the e-mail address the
shop gave (the token's `email` claim, or the admin API, whose address a token does not
replace), how often e-mail may come, and when digests go out.

A token's claims are recorded when its customer makes a watch or opens a socket: the write
happens only when they differ from what this process last wrote (a bounded memory of it,
each entry kept ten minutes), so an account's every request does not write. A new address
comes with a new `mail_key`: unsubscribe links mailed to the old one stop working.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from typing import Any, Literal

import elasticsearch
import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.core.messages import Frequency
from percolert.core.times import iso_from_seconds

EmailSource = Literal["token", "admin"]
# Accounts whose recorded claims this process remembers; past it, it starts over. Each is
# remembered a while only: another instance may have changed the record meanwhile (an
# admin's address taken away, an erasure).
_REMEMBERED = 10_000
_REMEMBERED_SECONDS = 600.0


def _mail_key() -> str:
    """The random key an "unsubscribe from all" link names."""
    return secrets.token_urlsafe(18)


class Contact(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    user: str
    subject: str | None = None
    email: str | None = None
    email_source: EmailSource | None = None
    # The account's e-mail frequency (None: instant) and digest time (None: the defaults).
    frequency: Frequency | None = None
    timezone: str | None = None
    digest_hour: int | None = None
    mail_key: str | None = None


def _contact(doc: dict[str, Any]) -> Contact:
    return msgspec.convert({**doc["_source"], "user": doc["_id"]}, Contact, strict=False)


class Contacts:
    def __init__(self, client: AsyncElasticsearch, alias: str) -> None:
        self._client = client
        self._alias = alias
        # Per account, the claims this process last recorded and when (monotonic).
        self._recorded: dict[str, tuple[str, str | None, float]] = {}

    async def get_many(self, users: Iterable[str]) -> dict[str, Contact]:
        ids = sorted(set(users))
        if not ids:
            return {}
        # By mget, never a URL with the id in it: user ids stay out of request logs.
        response = await self._client.mget(index=self._alias, ids=ids)
        return {doc["_id"]: _contact(doc) for doc in response["docs"] if doc.get("found")}

    async def get(self, user: str) -> Contact | None:
        return (await self.get_many([user])).get(user)

    async def saw(self, user: str, subject: str, email: str | None) -> None:
        """A verified token of the account: record its customer id and address (unless an
        admin set the address), when they changed."""
        recorded = self._recorded.get(user)
        if (
            recorded is not None
            and recorded[:2] == (subject, email)
            and time.monotonic() - recorded[2] < _REMEMBERED_SECONDS
        ):
            return
        current = await self.get(user)
        fields: dict[str, Any] = {"subject": subject}
        if email is not None and (current is None or current.email_source != "admin"):
            fields.update(email=email, email_source="token")
            if current is not None and current.email != email:
                # Links mailed to the old address must not reach the new one.
                fields["mail_key"] = _mail_key()
        await self._upsert(user, fields)
        if len(self._recorded) >= _REMEMBERED:
            self._recorded.clear()
        self._recorded[user] = (subject, email, time.monotonic())

    def forget(self, user: str) -> None:
        """The account was erased (on any instance): its claims are recorded anew."""
        self._recorded.pop(user, None)

    async def set_email(self, user: str, subject: str, email: str | None) -> Contact:
        """The admin API's address for the account (None: take it away)."""
        await self._upsert(
            user,
            {
                "subject": subject,
                "email": email,
                "email_source": None if email is None else "admin",
            },
        )
        self._recorded.pop(user, None)
        contact = await self.get(user)
        assert contact is not None
        return contact

    async def set_preferences(
        self,
        user: str,
        *,
        frequency: Frequency | None,
        timezone: str | None,
        digest_hour: int | None,
    ) -> Contact:
        await self._upsert(
            user, {"frequency": frequency, "timezone": timezone, "digest_hour": digest_hour}
        )
        contact = await self.get(user)
        assert contact is not None
        return contact

    async def by_mail_key(self, mail_key: str) -> Contact | None:
        response = await self._client.search(
            index=self._alias, query={"term": {"mail_key": mail_key}}, size=1
        )
        hits = response["hits"]["hits"]
        return _contact(hits[0]) if hits else None

    async def erase(self, user: str) -> None:
        self._recorded.pop(user, None)
        await self._client.bulk(
            operations=[{"delete": {"_index": self._alias, "_id": user}}], refresh=True
        )

    async def _upsert(self, user: str, fields: dict[str, Any]) -> None:
        fields = {**fields, "updated_at": iso_from_seconds(time.time())}
        # By bulk, as every write here: the user id stays out of the request's URL.
        response = await self._client.bulk(
            operations=[
                {"update": {"_index": self._alias, "_id": user, "retry_on_conflict": 3}},
                {
                    "doc": fields,
                    # The random key an "unsubscribe from all" link names: made once.
                    "upsert": {"mail_key": _mail_key(), **fields},
                },
            ],
            refresh=True,
        )
        result = response["items"][0]["update"]
        if "error" in result:
            raise elasticsearch.ApiError(
                f"writing an account's contact failed: {result['error']}",
                meta=response.meta,
                body=result,
            )
