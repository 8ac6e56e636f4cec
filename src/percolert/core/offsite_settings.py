"""Settings of off-site delivery (the shop's webhook, e-mail), read from the environment
apart from the rest: `Settings.offsite` holds them."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

SmtpTls = Literal["starttls", "tls", "off"]

# The port each way of securing SMTP is usually served on (submission, submissions, relay).
_SMTP_PORTS: dict[str, int] = {"starttls": 587, "tls": 465, "off": 25}
# Standard Webhooks secrets are 24 to 64 random bytes, base64 after `whsec_`.
_MIN_WEBHOOK_SECRET_BYTES = 24
# What one SMTP step may take (offsite/mail.py's SmtpSettings default).
SMTP_TIMEOUT_SECONDS = 30.0
_ADDRESS = re.compile(r"[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+")


class OffsiteSettings(msgspec.Struct, frozen=True, kw_only=True):
    # The shop's endpoint for events (None: no webhooks), its signing secrets (`whsec_…`;
    # the first signs alone unless several are given, as during a rotation) and whether it
    # may be a private or loopback address (development and tests only).
    webhook_url: str | None = None
    webhook_secrets: tuple[str, ...] = ()
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 10.0
    # An endpoint failing this long without one success is disabled (the admin re-enables).
    webhook_disable_after_days: float = 5.0
    # A product alert no socket of its owner has shown within this long goes off-site.
    offsite_after_seconds: float = 180.0
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_tls: SmtpTls = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = None
    mail_from: str | None = None
    # A directory whose templates replace the defaults of the same name (offsite/templates).
    mail_templates: Path | None = None
    # A mailto: address for List-Unsubscribe beside the https link, where the shop has one.
    mail_unsubscribe_mailto: str | None = None
    # E-mails to one address per hour at most; more wait for the next hour.
    mail_per_recipient_per_hour: int = 10
    # The base of the unsubscribe links (None: the server's own address).
    public_url: str | None = None
    # A product's page at the shop, `{sku}` standing for its sku (None: no links).
    shop_product_url: str | None = None
    shop_name: str = "the shop"
    # Digests go out at this local hour (0-23) in the account's zone, unless it chose one.
    digest_hour: int = 8
    default_timezone: str = "UTC"
    # An outbox event is attempted by one instance at a time, for this long at most.
    outbox_lease_seconds: float = 60.0
    outbox_poll_seconds: float = 1.0
    # Seconds before each attempt of an event (the first is the first attempt's): the
    # Standard Webhooks schedule, for e-mail too. Past the last, the event has failed.
    retry_schedule: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000)

    @property
    def webhooks(self) -> bool:
        return self.webhook_url is not None

    @property
    def email(self) -> bool:
        return self.smtp_host is not None and self.mail_from is not None

    @property
    def enabled(self) -> bool:
        return self.webhooks or self.email


class _Reader:
    def __init__(self, environ: Mapping[str, str], error: Callable[[str], Exception]) -> None:
        self._env = environ
        self._error = error

    def text(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self._error(f"{name} must be a number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise self._error(f"{name} must be between {minimum:g} and {maximum:g}, got {raw!r}")
        return value

    def flag(self, name: str) -> bool:
        raw = (self.text(name) or "false").lower()
        if raw not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            raise self._error(f"{name} must be true or false, got {raw!r}")
        return raw in {"1", "true", "yes", "on"}

    def url(self, name: str) -> str | None:
        raw = self.text(name)
        if raw is None:
            return None
        if not raw.startswith(("http://", "https://")) or raw.count("/") < 2:
            raise self._error(f"{name} must be an http:// or https:// URL, got {raw!r}")
        return raw.rstrip("/")


def _secrets(read: _Reader, error: Callable[[str], Exception]) -> tuple[str, ...]:
    secrets = tuple(
        part.strip() for part in (read.text("PERCOLERT_WEBHOOK_SECRET") or "").split(",")
    )
    secrets = tuple(secret for secret in secrets if secret)
    for secret in secrets:
        try:
            encoded = secret.removeprefix("whsec_")
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not secret.startswith("whsec_") or len(key) < _MIN_WEBHOOK_SECRET_BYTES:
            raise error(
                "PERCOLERT_WEBHOOK_SECRET takes Standard Webhooks secrets: `whsec_` and at least "
                f"{_MIN_WEBHOOK_SECRET_BYTES} random bytes in base64 (e.g. `whsec_$(openssl rand "
                "-base64 32)`), comma-separated during a rotation"
            )
    return secrets


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _schedule(read: _Reader, error: Callable[[str], Exception]) -> tuple[float, ...] | None:
    raw = read.text("PERCOLERT_OUTBOX_RETRY_SCHEDULE")
    if raw is None:
        return None
    delays = []
    for part in raw.split(","):
        part = part.strip().lower()
        unit = _DURATION_UNITS.get(part[-1:])
        try:
            delay = float(part[:-1] if unit else part) * (unit or 1)
        except ValueError:
            delay = -1.0
        if not 0 <= delay <= 7 * 86_400:
            raise error(
                "PERCOLERT_OUTBOX_RETRY_SCHEDULE takes delays like 0,5s,5m,30m,2h,5h,10h,10h; "
                f"got {raw!r}"
            )
        delays.append(delay)
    return tuple(delays)


def timezone_known(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name that is a directory of the zone database ("America").
        return False
    return True


def offsite_from_environment(
    environ: Mapping[str, str], error: Callable[[str], Exception]
) -> OffsiteSettings:
    """The off-site settings from PERCOLERT_* variables; `error` makes the exception a
    wrong value raises (the caller's SettingsError)."""
    read = _Reader(environ, error)
    default = OffsiteSettings()
    webhook_url = read.url("PERCOLERT_WEBHOOK_URL")
    secrets = _secrets(read, error)
    if webhook_url is not None and not secrets:
        raise error("PERCOLERT_WEBHOOK_URL needs PERCOLERT_WEBHOOK_SECRET (whsec_…) to sign with")
    tls = (read.text("PERCOLERT_SMTP_TLS") or default.smtp_tls).lower()
    if tls not in _SMTP_PORTS:
        raise error(f"PERCOLERT_SMTP_TLS must be starttls, tls or off, got {tls!r}")
    smtp_host = read.text("PERCOLERT_SMTP_HOST")
    mail_from = read.text("PERCOLERT_MAIL_FROM")
    if smtp_host is not None and mail_from is None:
        raise error("PERCOLERT_SMTP_HOST needs PERCOLERT_MAIL_FROM (the sender's address)")
    if mail_from is not None and _ADDRESS.search(mail_from) is None:
        raise error(f"PERCOLERT_MAIL_FROM must hold an e-mail address, got {mail_from!r}")
    username = read.text("PERCOLERT_SMTP_USERNAME")
    password = read.text("PERCOLERT_SMTP_PASSWORD")
    if (username is None) != (password is None):
        raise error("set both PERCOLERT_SMTP_USERNAME and PERCOLERT_SMTP_PASSWORD, or neither")
    mailto = read.text("PERCOLERT_MAIL_UNSUBSCRIBE_MAILTO")
    if mailto is not None and _ADDRESS.fullmatch(mailto.removeprefix("mailto:")) is None:
        raise error(f"PERCOLERT_MAIL_UNSUBSCRIBE_MAILTO must be an e-mail address, got {mailto!r}")
    product_url = read.text("PERCOLERT_SHOP_PRODUCT_URL")
    if product_url is not None and (
        "{sku}" not in product_url or not product_url.startswith(("http://", "https://"))
    ):
        raise error(
            "PERCOLERT_SHOP_PRODUCT_URL must be an http(s) URL with {sku} in it, "
            f"got {product_url!r}"
        )
    zone = read.text("PERCOLERT_DEFAULT_TIMEZONE") or default.default_timezone
    if not timezone_known(zone):
        raise error(
            f"PERCOLERT_DEFAULT_TIMEZONE must be an IANA zone like Europe/Paris, got {zone!r}"
        )
    templates = read.text("PERCOLERT_MAIL_TEMPLATES")
    if templates is not None and not Path(templates).is_dir():
        raise error(f"PERCOLERT_MAIL_TEMPLATES must be a directory, got {templates!r}")
    schedule = _schedule(read, error) or default.retry_schedule
    lease = read.number(
        "PERCOLERT_OUTBOX_LEASE_SECONDS", default.outbox_lease_seconds, minimum=1, maximum=3600
    )
    timeout = read.number(
        "PERCOLERT_WEBHOOK_TIMEOUT_SECONDS",
        default.webhook_timeout_seconds,
        minimum=0.1,
        maximum=60,
    )
    longest = max(timeout, SMTP_TIMEOUT_SECONDS) if smtp_host is not None else timeout
    if lease <= longest:
        # A lease running out mid-attempt hands the event to another instance: sent twice.
        raise error(
            f"PERCOLERT_OUTBOX_LEASE_SECONDS ({lease:g}) must be longer than an attempt may "
            f"take ({longest:g} s: PERCOLERT_WEBHOOK_TIMEOUT_SECONDS, or SMTP's "
            f"{SMTP_TIMEOUT_SECONDS:g} s)"
        )
    return OffsiteSettings(
        retry_schedule=schedule,
        webhook_url=webhook_url,
        webhook_secrets=secrets,
        webhook_allow_private=read.flag("PERCOLERT_WEBHOOK_ALLOW_PRIVATE"),
        webhook_timeout_seconds=timeout,
        webhook_disable_after_days=read.number(
            "PERCOLERT_WEBHOOK_DISABLE_AFTER_DAYS",
            default.webhook_disable_after_days,
            minimum=0.01,
            maximum=365,
        ),
        offsite_after_seconds=read.number(
            "PERCOLERT_OFFSITE_AFTER_SECONDS",
            default.offsite_after_seconds,
            minimum=0,
            maximum=86_400,
        ),
        smtp_host=smtp_host,
        smtp_port=int(
            read.number("PERCOLERT_SMTP_PORT", _SMTP_PORTS[tls], minimum=1, maximum=65_535)
        ),
        smtp_tls=tls,  # type: ignore[arg-type]  # checked against _SMTP_PORTS above
        smtp_username=username,
        smtp_password=password,
        mail_from=mail_from,
        mail_templates=None if templates is None else Path(templates),
        mail_unsubscribe_mailto=None if mailto is None else mailto.removeprefix("mailto:"),
        mail_per_recipient_per_hour=int(
            read.number(
                "PERCOLERT_MAIL_PER_RECIPIENT_PER_HOUR",
                default.mail_per_recipient_per_hour,
                minimum=1,
                maximum=10_000,
            )
        ),
        public_url=read.url("PERCOLERT_PUBLIC_URL"),
        shop_product_url=product_url,
        shop_name=read.text("PERCOLERT_SHOP_NAME") or default.shop_name,
        digest_hour=int(
            read.number("PERCOLERT_DIGEST_HOUR", default.digest_hour, minimum=0, maximum=23)
        ),
        default_timezone=zone,
        outbox_lease_seconds=lease,
        outbox_poll_seconds=read.number(
            "PERCOLERT_OUTBOX_POLL_SECONDS", default.outbox_poll_seconds, minimum=0.05, maximum=60
        ),
    )
