"""Off-site delivery over HTTP: the admin's view of the webhook endpoint and the delivery
log, replays, and an account's e-mail address (under the admin token, admin_api.py); an
account's own e-mail preferences (`/api/me/preferences`). The logic is the offsite
package's; this maps it to HTTP."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from percolert.accounts.erasure import account_of
from percolert.core.fields import EMAIL_MAX_LENGTH, EMAIL_PATTERN
from percolert.core.messages import Frequency
from percolert.core.offsite_settings import timezone_known
from percolert.core.times import seconds_from_iso
from percolert.offsite.contacts import Contact
from percolert.offsite.endpoint import EndpointState
from percolert.offsite.outbox import STATES, Channel, EventSummary, OutboxBusy, summary
from percolert.offsite.service import Offsite
from percolert.web.account_api import account_user
from percolert.web.errors import ApiError, decode_json
from percolert.web.paths import ACCOUNTS_PREFIX, PREFERENCES_PATH
from percolert.web.responses import json_response
from percolert.web.state import state_of

WEBHOOKS_PREFIX = "/api/admin/webhooks"
_MAX_EVENTS = 500

Email = Annotated[str, msgspec.Meta(max_length=EMAIL_MAX_LENGTH, pattern=EMAIL_PATTERN)]


class Webhooks(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/admin/webhooks: the endpoint (None: no webhook configured) and whether
    e-mail is sent."""

    endpoint: EndpointState | None
    email: bool


class EventList(msgspec.Struct, frozen=True):
    events: list[EventSummary]


class ReplaySince(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    since: str
    channel: Channel | None = "webhook"


class Replayed(msgspec.Struct, frozen=True):
    replayed: int


class ContactUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """PUT /api/admin/accounts/{customer_id}: the account's e-mail address (null: none)."""

    email: Email | None


class ContactView(msgspec.Struct, frozen=True, kw_only=True):
    email: str | None
    email_source: str | None
    frequency: Frequency | None
    timezone: str | None
    digest_hour: int | None


class Preferences(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An account's e-mail preferences: how often (`frequency`, watches may choose their
    own), and the zone and hour of its digests (null: the shop's defaults)."""

    frequency: Frequency | None = None
    timezone: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    digest_hour: Annotated[int, msgspec.Meta(ge=0, le=23)] | None = None


def _offsite(request: Request) -> Offsite:
    offsite = state_of(request)["offsite"]
    if not offsite.enabled:
        raise ApiError(
            404,
            "offsite_disabled",
            "off-site delivery is off: set PERCOLERT_WEBHOOK_URL or PERCOLERT_SMTP_HOST",
        )
    return offsite


_PREFERENCES_NEED = "e-mail preferences are an account's: send the shop's token"


def _preferences(contact: Contact | None) -> Preferences:
    if contact is None:
        return Preferences()
    return Preferences(
        frequency=contact.frequency, timezone=contact.timezone, digest_hour=contact.digest_hour
    )


def _view(contact: Contact | None) -> ContactView:
    return ContactView(
        email=None if contact is None else contact.email,
        email_source=None if contact is None else contact.email_source,
        frequency=None if contact is None else contact.frequency,
        timezone=None if contact is None else contact.timezone,
        digest_hour=None if contact is None else contact.digest_hour,
    )


async def webhooks(request: Request) -> Response:
    offsite = _offsite(request)
    endpoint = None if offsite.endpoint is None else await offsite.endpoint.read()
    if endpoint is not None:
        endpoint = msgspec.structs.replace(endpoint, url=_masked(endpoint.url))
    return json_response(Webhooks(endpoint=endpoint, email=offsite.mailer is not None))


def _masked(url: str) -> str:
    """The endpoint's URL without its query, which may carry the shop's own token."""
    base, query = url.split("?", 1) if "?" in url else (url, "")
    return f"{base}?…" if query else base


async def enable_endpoint(request: Request) -> Response:
    offsite = _offsite(request)
    if offsite.endpoint is None:
        raise ApiError(404, "no_webhook", "no webhook is configured (PERCOLERT_WEBHOOK_URL)")
    await offsite.endpoint.read()
    state = await offsite.endpoint.enable()
    offsite.delivery.wake()
    return json_response(msgspec.structs.replace(state, url=_masked(state.url)))


def _since(text: str) -> float:
    try:
        return seconds_from_iso(text)
    except ValueError:
        raise ApiError(
            400,
            "invalid_time",
            f"since must be an ISO 8601 time like 2026-12-07T10:00:00Z, got {text!r}",
        ) from None


async def list_events(request: Request) -> Response:
    offsite = _offsite(request)
    query = request.query_params
    state = query.get("state")
    if state is not None and state not in STATES:
        raise ApiError(400, "invalid_state", f"state is one of {', '.join(STATES)}")
    channel = query.get("channel")
    if channel is not None and channel not in ("webhook", "email"):
        raise ApiError(400, "invalid_channel", "channel is webhook or email")
    try:
        limit = min(_MAX_EVENTS, max(1, int(query.get("limit", "50"))))
    except ValueError:
        raise ApiError(400, "invalid_limit", "limit is a number") from None
    since = query.get("since")
    found = await offsite.outbox.events(
        channel=channel,  # type: ignore[arg-type]  # checked above
        state=state,
        since=None if since is None else _since(since),
        limit=limit,
    )
    return json_response(EventList(events=[summary(event) for event in found]))


def _event_id(request: Request) -> str:
    event_id = str(request.path_params["event_id"])
    if not event_id.startswith("msg_") or len(event_id) > 64:
        raise ApiError(404, "event_not_found", "no such event")
    return event_id


async def get_event(request: Request) -> Response:
    event = await _offsite(request).outbox.get(_event_id(request))
    if event is None:
        raise ApiError(404, "event_not_found", "no such event")
    return json_response(summary(event))


async def replay_event(request: Request) -> Response:
    offsite = _offsite(request)
    try:
        event = await offsite.outbox.replay(_event_id(request))
    except OutboxBusy as busy:
        until = f" (until {busy.lease_until} at the latest)" if busy.lease_until else ""
        raise ApiError(
            409, "event_busy", f"the event is being attempted{until}; replay it once it is done"
        ) from None
    if event is None:
        raise ApiError(404, "event_not_found", "no such event")
    offsite.delivery.wake()
    return json_response(summary(event), status=202)


async def replay_since(request: Request) -> Response:
    offsite = _offsite(request)
    asked = decode_json(await request.body(), ReplaySince, code="invalid_replay", what="replay")
    replayed = await offsite.outbox.replay_since(_since(asked.since), asked.channel)
    offsite.delivery.wake()
    return json_response(Replayed(replayed=replayed), status=202)


async def get_contact(request: Request) -> Response:
    offsite = _offsite(request)
    user = account_of(request.path_params["customer_id"])
    return json_response(_view(await offsite.contacts.get(user)))


async def put_contact(request: Request) -> Response:
    offsite = _offsite(request)
    customer_id = request.path_params["customer_id"]
    update = decode_json(
        await request.body(), ContactUpdate, code="invalid_contact", what="contact"
    )
    contact = await offsite.contacts.set_email(account_of(customer_id), customer_id, update.email)
    return json_response(_view(contact))


async def get_preferences(request: Request) -> Response:
    user = account_user(request, _PREFERENCES_NEED)
    return json_response(_preferences(await _offsite(request).contacts.get(user)))


async def put_preferences(request: Request) -> Response:
    user = account_user(request, _PREFERENCES_NEED)
    offsite = _offsite(request)
    asked = decode_json(
        await request.body(), Preferences, code="invalid_preferences", what="preferences"
    )
    if asked.timezone is not None and not timezone_known(asked.timezone):
        raise ApiError(
            400,
            "invalid_preferences",
            f"unknown time zone {asked.timezone!r}: use an IANA name like Europe/Paris",
        )
    contact = await offsite.contacts.set_preferences(
        user, frequency=asked.frequency, timezone=asked.timezone, digest_hour=asked.digest_hour
    )
    return json_response(_preferences(contact))


def admin_routes() -> list[Route]:
    """Under the admin token (admin_api.routes wraps them)."""
    return [
        Route(WEBHOOKS_PREFIX, webhooks, methods=["GET"]),
        Route(f"{WEBHOOKS_PREFIX}/enable", enable_endpoint, methods=["POST"]),
        Route(f"{WEBHOOKS_PREFIX}/events", list_events, methods=["GET"]),
        Route(f"{WEBHOOKS_PREFIX}/events/{{event_id}}", get_event, methods=["GET"]),
        Route(f"{WEBHOOKS_PREFIX}/events/{{event_id}}/replay", replay_event, methods=["POST"]),
        Route(f"{WEBHOOKS_PREFIX}/replay", replay_since, methods=["POST"]),
        Route(f"{ACCOUNTS_PREFIX}{{customer_id:path}}", get_contact, methods=["GET"]),
        Route(f"{ACCOUNTS_PREFIX}{{customer_id:path}}", put_contact, methods=["PUT"]),
    ]


def routes() -> list[Route]:
    return [
        Route(PREFERENCES_PATH, get_preferences, methods=["GET"]),
        Route(PREFERENCES_PATH, put_preferences, methods=["PUT"]),
    ]
