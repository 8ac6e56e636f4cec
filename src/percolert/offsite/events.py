"""What off-site events say: the webhook's bodies (Standard Webhooks' `type`, `timestamp`,
`data`, and a `version` of the data's shape) and what an e-mail is built from.

Events name the account by the shop's customer id (`customer`, the token's `sub`), which
the shop routes by, and by its user id here (`account`)."""

from __future__ import annotations

import time
from email.utils import make_msgid
from typing import Any
from urllib.parse import quote

import msgspec

from percolert.core.messages import ProductAlert, Watch
from percolert.core.times import iso_from_seconds
from percolert.offsite.contacts import Contact
from percolert.offsite.mail import MailContent, MailItem
from percolert.offsite.outbox import NewEvent

# The shape of every event's `data`; a change that is not only an added field raises it.
PAYLOAD_VERSION = 1

PRODUCT_ALERT_CREATED = "product_alert.created"
DIGEST_CREATED = "digest.created"
WATCH_CREATED = "watch.created"
WATCH_DELETED = "watch.deleted"
ACCOUNT_ERASED = "account.erased"


def body(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": event_type,
        "version": PAYLOAD_VERSION,
        "timestamp": iso_from_seconds(time.time()),
        "data": data,
    }


def product_link(template: str | None, sku: str) -> str | None:
    return None if template is None else template.replace("{sku}", quote(sku, safe=""))


def _account(user: str, contact: Contact | None) -> dict[str, Any]:
    return {"customer": None if contact is None else contact.subject, "account": user}


def product_alert_webhook(
    user: str, alert: ProductAlert, contact: Contact | None, link: str | None
) -> NewEvent:
    data = {**_account(user, contact), "alert": msgspec.to_builtins(alert), "link": link}
    return NewEvent(
        channel="webhook",
        type=PRODUCT_ALERT_CREATED,
        user=user,
        about=f"product_alert:{alert.id}",
        payload=body(PRODUCT_ALERT_CREATED, data),
    )


def mail_items(alert: ProductAlert, link_template: str | None) -> list[MailItem]:
    """An alert's products as an e-mail lists them: the first and the next few of a run that
    matched the watch with several (the alert's `total` counts the rest)."""
    return [
        MailItem(
            watch_terms=alert.watch.terms,
            change=alert.change,
            product_name=product.product_name,
            price=product.price,
            previous_price=product.previous_price,
            link=product_link(link_template, product.sku),
        )
        for product in [alert.product, *alert.more]
    ]


def unlisted(alert: ProductAlert) -> int:
    """How many products of the alert its e-mail does not list."""
    return max(0, alert.total - 1 - len(alert.more))


def _domain(mail_from: str) -> str:
    address = mail_from.rsplit("<", 1)[-1].rstrip(">").strip()
    return address.rsplit("@", 1)[-1] or "percolert.invalid"


def mail_event(
    *,
    user: str,
    to: str,
    about: str,
    content: MailContent,
    mail_from: str,
    watch_id: str | None,
    mail_key: str | None,
    event_type: str,
) -> NewEvent:
    """An e-mail to `to`: its Message-ID is made here, once, so every attempt sends the
    same one (a receiving server that got it already can tell)."""
    return NewEvent(
        channel="email",
        type=event_type,
        user=user,
        about=about,
        mail={
            "to": to,
            "message_id": make_msgid(domain=_domain(mail_from)),
            "content": msgspec.to_builtins(content),
            "watch_id": watch_id,
            "mail_key": mail_key,
        },
    )


def digest_webhook(
    user: str, contact: Contact | None, period: str, key: str, alerts: list[ProductAlert], more: int
) -> NewEvent:
    data = {
        **_account(user, contact),
        "period": period,
        "key": key,
        "alerts": msgspec.to_builtins(alerts),
        "more": more,
    }
    return NewEvent(
        channel="webhook",
        type=DIGEST_CREATED,
        user=user,
        about=f"digest:{user}:{period}:{key}",
        payload=body(DIGEST_CREATED, data),
    )


def watch_webhook(
    event_type: str, user: str, subject: str | None, watch: Watch, at: float
) -> NewEvent:
    data = {"customer": subject, "account": user, "watch": msgspec.to_builtins(watch)}
    return NewEvent(
        channel="webhook",
        type=event_type,
        user=user,
        # A watch made, removed and made again is three events.
        about=f"{event_type}:{watch.id}:{at}",
        payload=body(event_type, data),
    )


def erased_webhook(user: str, subject: str, at: float) -> NewEvent:
    return NewEvent(
        channel="webhook",
        type=ACCOUNT_ERASED,
        # Not the account's: erasing it must not take this event with it.
        user="",
        about=f"{ACCOUNT_ERASED}:{user}:{at}",
        payload=body(ACCOUNT_ERASED, {"customer": subject, "account": user}),
    )
