"""The off-site settings as the environment gives them: the Standard Webhooks secrets
(several during a rotation), SMTP, the retry schedule, and the refusals that name what to
fix."""

from __future__ import annotations

import base64

import pytest

from percolert.core.settings import SettingsError, from_environment


def secret(size: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(size))).decode()


HOOK = {"PERCOLERT_WEBHOOK_URL": "https://shop.example/hooks"}


def test_nothing_set_is_no_offsite_delivery() -> None:
    offsite = from_environment({}).offsite
    assert not offsite.enabled
    assert offsite.retry_schedule == (0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000)
    assert offsite.offsite_after_seconds == 180


@pytest.mark.parametrize("size", [24, 32, 64])
def test_secrets_of_24_bytes_or_more_are_taken_padded_or_not(size: int) -> None:
    rotation = f"{secret(size)}, {secret(size).rstrip('=')}"
    offsite = from_environment({**HOOK, "PERCOLERT_WEBHOOK_SECRET": rotation}).offsite
    assert offsite.webhooks
    assert len(offsite.webhook_secrets) == 2


@pytest.mark.parametrize("value", [secret(16), secret(32).removeprefix("whsec_"), "whsec_!!!"])
def test_a_weak_or_malformed_secret_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="PERCOLERT_WEBHOOK_SECRET"):
        from_environment({**HOOK, "PERCOLERT_WEBHOOK_SECRET": value})


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        (HOOK, "PERCOLERT_WEBHOOK_SECRET"),
        ({"PERCOLERT_SMTP_HOST": "mail.example"}, "PERCOLERT_MAIL_FROM"),
        ({"PERCOLERT_MAIL_FROM": "no address"}, "PERCOLERT_MAIL_FROM"),
        ({"PERCOLERT_SMTP_TLS": "ssl"}, "PERCOLERT_SMTP_TLS"),
        ({"PERCOLERT_SMTP_USERNAME": "shop"}, "PERCOLERT_SMTP_PASSWORD"),
        ({"PERCOLERT_SHOP_PRODUCT_URL": "https://shop.example/p/"}, "{sku}"),
        ({"PERCOLERT_DEFAULT_TIMEZONE": "Mars/Olympus"}, "PERCOLERT_DEFAULT_TIMEZONE"),
        # A directory of the zone database, not a zone.
        ({"PERCOLERT_DEFAULT_TIMEZONE": "America"}, "PERCOLERT_DEFAULT_TIMEZONE"),
        ({"PERCOLERT_OUTBOX_RETRY_SCHEDULE": "0,5s,soon"}, "PERCOLERT_OUTBOX_RETRY_SCHEDULE"),
        ({"PERCOLERT_OUTBOX_LEASE_SECONDS": "10"}, "PERCOLERT_WEBHOOK_TIMEOUT_SECONDS"),
        ({"PERCOLERT_PUBLIC_URL": "shop.example"}, "PERCOLERT_PUBLIC_URL"),
    ],
)
def test_what_cannot_work_is_refused_naming_the_variable(
    environment: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named.replace("{", r"\{").replace("}", r"\}")):
        from_environment(environment)


def test_smtp_port_follows_the_way_it_is_secured_and_the_schedule_takes_units() -> None:
    offsite = from_environment(
        {
            "PERCOLERT_SMTP_HOST": "mail.example",
            "PERCOLERT_MAIL_FROM": "Shop <alerts@shop.example>",
            "PERCOLERT_SMTP_TLS": "tls",
            "PERCOLERT_OUTBOX_RETRY_SCHEDULE": "0, 5s, 5m, 2h",
        }
    ).offsite
    assert offsite.email
    assert offsite.smtp_port == 465
    assert offsite.retry_schedule == (0, 5, 300, 7200)
