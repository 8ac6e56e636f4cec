"""E-mail to shoppers who are away: composed from the templates (the shop's overriding the
defaults file by file, HTML escaped, headers safe), and sent to a real SMTP server whose
answers become attempts."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

import pytest
from jinja2.exceptions import SecurityError

from percolert.core.messages import ProductChange
from percolert.offsite.mail import (
    SUBJECT_MAX_LENGTH,
    MailContent,
    Mailer,
    MailItem,
    SmtpSettings,
)
from tests.offsite.receivers import SmtpSink
from tests.servers import free_port

pytestmark = pytest.mark.anyio

HOSTILE = '<script>alert(1)</script> & "x"'
TO = "shopper@example.com"
FROM = "Example Shop <alerts@shop.example>"
# As long as a real one: the base URL and a signed token.
UNSUBSCRIBE = "https://shop.example/unsubscribe/IncuYWJjZGVmMDEyMzQ1Njc4OWFiY2RlZiI.Qx7-a_b" + (
    "c" * 40
)
UNSUBSCRIBE_ALL = "https://shop.example/unsubscribe/all/IncuYWJjIg.sig"


def price_drop(name: str = HOSTILE, link: str | None = "https://shop.example/p/1") -> MailItem:
    return MailItem(
        watch_terms="noise cancelling headphones",
        change="price_drop",
        product_name=name,
        price=1299.5,
        previous_price=1499.0,
        link=link,
    )


def alert(*items: MailItem) -> MailContent:
    return MailContent(kind="product_alert", items=list(items) or [price_drop()])


def mailer(
    port: int = 25,
    templates: Path | None = None,
    *,
    tls: Literal["starttls", "tls", "off"] = "off",
    username: str | None = None,
    password: str | None = None,
) -> Mailer:
    settings = SmtpSettings(
        host="127.0.0.1",
        port=port,
        tls=tls,
        username=username,
        password=password,
        timeout_seconds=5.0,
    )
    return Mailer(settings, mail_from=FROM, templates=templates, shop_name="Example Shop")


def compose(
    sender: Mailer,
    content: MailContent | None = None,
    *,
    unsubscribe_all_url: str | None = None,
    unsubscribe_mailto: str | None = None,
) -> EmailMessage:
    return sender.compose(
        TO,
        content or alert(),
        message_id=email.utils.make_msgid(domain="percolert.test"),
        unsubscribe_url=UNSUBSCRIBE,
        unsubscribe_all_url=unsubscribe_all_url,
        unsubscribe_mailto=unsubscribe_mailto,
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())


# --- composing ---------------------------------------------------------------------------


def test_a_hostile_name_is_escaped_in_html_and_literal_in_text() -> None:
    message = compose(mailer())
    assert message.get_content_type() == "multipart/alternative"
    text, html = parts(message)
    assert f"Cheaper: {HOSTILE} now $1,299.50 (was $1,499.00)" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;x&#34;" in html
    assert "<script>" not in html
    assert '"x"' not in html


def test_the_subject_is_one_bounded_line() -> None:
    name = "Headphones\r\nBcc: everyone@example.com\n" + "very long " * 40
    message = compose(mailer(), alert(price_drop(name)))
    subject = message["Subject"]
    assert "\r" not in subject
    assert "\n" not in subject
    assert subject.startswith("Cheaper: Headphones Bcc: everyone@example.com very long")
    assert len(subject) <= SUBJECT_MAX_LENGTH
    assert subject.endswith("…")
    assert message["Bcc"] is None
    # And so on the wire: one Subject header, no Bcc.
    wire = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert wire["Bcc"] is None
    assert " ".join(wire["Subject"].split()) == " ".join(subject.split())


def test_the_headers() -> None:
    message_id = email.utils.make_msgid(domain="percolert.test")
    message = mailer().compose(
        TO,
        alert(),
        message_id=message_id,
        unsubscribe_url=UNSUBSCRIBE,
        unsubscribe_mailto="unsubscribe@shop.example?subject=unsubscribe",
    )
    # Read back from the bytes, as a mail client does.
    wire = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert wire["From"] == FROM
    assert wire["To"] == TO
    assert wire["Message-ID"] == message_id
    assert wire["List-Unsubscribe"] == (
        f"<{UNSUBSCRIBE}>, <mailto:unsubscribe@shop.example?subject=unsubscribe>"
    )
    assert wire["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert wire["Auto-Submitted"] == "auto-generated"
    assert wire["Date"].datetime is not None
    # The long URL is never folded into encoded words (no client would read it).
    assert f"<{UNSUBSCRIBE}>".encode() in message.as_bytes()


def test_without_a_mailto_only_the_url_is_listed() -> None:
    message = compose(mailer())
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"


@pytest.mark.parametrize(
    "url",
    ["https://shop.example/u/a b", "https://shop.example/u/>", "https://x/\r\nBcc: y", ""],
)
def test_an_unsubscribe_url_that_would_break_the_header_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="List-Unsubscribe"):
        mailer().compose(TO, alert(), message_id="<a@b>", unsubscribe_url=url)


def test_the_footer_says_why_and_how_to_stop() -> None:
    text, html = parts(compose(mailer(), unsubscribe_all_url=UNSUBSCRIBE_ALL))
    assert 'you watch "noise cancelling headphones" at Example Shop' in text
    assert f"Unsubscribe from these e-mails: {UNSUBSCRIBE}" in text
    assert UNSUBSCRIBE_ALL in text
    assert f'<a href="{UNSUBSCRIBE}">Unsubscribe from these e-mails</a>' in html
    assert f'<a href="{UNSUBSCRIBE_ALL}">Unsubscribe from all</a>' in html
    text, html = parts(compose(mailer()))
    assert "from all" not in text
    assert "from all" not in html


@pytest.mark.parametrize(
    ("change", "wording"),
    [
        ("new", "New: Studio Monitor, $249.00"),
        ("back_in_stock", "Back in stock: Studio Monitor, $249.00"),
    ],
)
def test_each_change_has_its_wording(change: ProductChange, wording: str) -> None:
    item = MailItem(watch_terms="monitor", change=change, product_name="Studio Monitor", price=249)
    message = compose(mailer(), alert(item))
    text, html = parts(message)
    assert wording in text
    assert message["Subject"].startswith(wording.split(",")[0])
    assert "Studio Monitor</strong>" in html


def test_links_are_shown_and_only_web_ones() -> None:
    text, html = parts(
        compose(mailer(), alert(price_drop(link="https://shop.example/p/1?a=1&b=2")))
    )
    assert "https://shop.example/p/1?a=1&b=2" in text
    assert 'href="https://shop.example/p/1?a=1&amp;b=2"' in html
    text, html = parts(compose(mailer(), alert(price_drop(link="javascript:alert(1)"))))
    assert "javascript:" not in text
    assert "javascript:" not in html


def test_a_digest_lists_every_item_and_how_many_more() -> None:
    items = [
        price_drop("Headphones"),
        MailItem(watch_terms="monitor", change="new", product_name="Monitor", price=249),
        MailItem(watch_terms="monitor", change="back_in_stock", product_name="Cable", price=9.9),
    ]
    content = MailContent(kind="digest", items=items, more=3, period="daily")
    message = compose(mailer(), content)
    text, html = parts(message)
    assert message["Subject"] == "Your daily digest: 6 product updates from Example Shop"
    for wording in (
        "Cheaper: Headphones now $1,299.50 (was $1,499.00)",
        "New: Monitor, $249.00",
        "Back in stock: Cable, $9.90",
        "and 3 more",
    ):
        assert wording in text
    assert "and 3 more" in html
    assert '"noise cancelling headphones", "monitor"' in text  # each watch once
    without_more = MailContent(kind="digest", items=items)
    assert "more" not in parts(compose(mailer(), without_more))[0]


def test_a_shops_template_overrides_its_default_alone(tmp_path: Path) -> None:
    (tmp_path / "product_alert.txt.j2").write_text(
        "Psst, {{ item.product_name }} is {{ currency }}{{ item.price | money }} now.\n"
    )
    message = compose(mailer(templates=tmp_path))
    text, html = parts(message)
    assert text == f"Psst, {HOSTILE} is $1,299.50 now.\n"
    assert "Unsubscribe from these e-mails" in html  # the default HTML
    assert message["Subject"].startswith("Cheaper: ")  # the default subject


def test_a_shops_html_template_is_escaped_too(tmp_path: Path) -> None:
    (tmp_path / "product_alert.html.j2").write_text("<p>{{ item.product_name }}</p>")
    _, html = parts(compose(mailer(templates=tmp_path)))
    assert html.strip() == "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;x&#34;</p>"


def test_a_shops_template_cannot_reach_python(tmp_path: Path) -> None:
    (tmp_path / "product_alert.txt.j2").write_text("{{ item.__class__.__init__.__globals__ }}")
    with pytest.raises(SecurityError):
        compose(mailer(templates=tmp_path))


@pytest.mark.parametrize(
    "template",
    ["{{ ('x' * 50000000)|length }}", "{{ [1] * 10**9 }}", "{{ 2 ** 100000 }}"],
)
def test_a_shops_template_cannot_make_huge_values(tmp_path: Path, template: str) -> None:
    (tmp_path / "product_alert.txt.j2").write_text(template)
    with pytest.raises(SecurityError):
        compose(mailer(templates=tmp_path))


def test_a_shops_template_cannot_render_without_bound(tmp_path: Path) -> None:
    (tmp_path / "product_alert.txt.j2").write_text(
        "{% for a in range(2000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}"
    )
    with pytest.raises(ValueError, match="rendered more than"):
        compose(mailer(templates=tmp_path))


def test_a_missing_template_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no template directory"):
        mailer(templates=tmp_path / "typo")


# --- sending -----------------------------------------------------------------------------


async def test_a_message_is_delivered(sink: SmtpSink) -> None:
    sender = mailer(sink.port)
    message = compose(sender, unsubscribe_mailto="unsubscribe@shop.example")
    attempt = await sender.send(message)
    assert attempt.outcome == "delivered"
    assert attempt.status == 250
    assert attempt.duration_ms >= 0
    assert attempt.at.endswith("+00:00")
    (received,) = sink.wait_for(1)
    assert received.mail_from == "alerts@shop.example"
    assert received.recipients == [TO]
    assert received.message["Message-ID"] == message["Message-ID"]
    # Exactly as written, after aiosmtplib flattened it with its own policy.
    assert received.message["List-Unsubscribe"] == (
        f"<{UNSUBSCRIBE}>, <mailto:unsubscribe@shop.example>"
    )
    assert received.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = parts(received.message)
    assert f"Cheaper: {HOSTILE}" in text
    assert "&lt;script&gt;" in html


async def test_a_recipient_refused_for_now_is_retried(sink: SmtpSink) -> None:
    sender = mailer(sink.port)
    sink.refuse_rcpt(450, "4.2.1 Mailbox busy, try later")
    attempt = await sender.send(compose(sender))
    assert attempt.outcome == "retry"
    assert attempt.status == 450
    assert attempt.error == "RCPT 450 4.2.1 Mailbox busy, try later"
    assert not attempt.suppress
    assert sink.received == []
    assert (await sender.send(compose(sender))).outcome == "delivered"
    sink.wait_for(1)


@pytest.mark.parametrize(
    ("code", "text", "suppress"),
    [
        (550, "5.1.1 No such user here", True),
        (550, "No such user here", True),
        (553, "Mailbox name not allowed", True),
        (550, "5.2.1 Mailbox disabled", True),
        (550, "5.7.1 Relaying denied", False),
        (552, "5.2.2 Mailbox full", False),
        (554, "Transaction failed", False),
    ],
)
async def test_a_recipient_refused_for_good_fails(
    sink: SmtpSink, code: int, text: str, suppress: bool
) -> None:
    sender = mailer(sink.port)
    sink.refuse_rcpt(code, text)
    attempt = await sender.send(compose(sender))
    assert attempt.outcome == "failed"
    assert attempt.status == code
    assert attempt.suppress is suppress
    assert attempt.error == f"RCPT {code} {text}"


async def test_an_address_a_server_quotes_stays_out_of_the_error(sink: SmtpSink) -> None:
    sender = mailer(sink.port)
    sink.refuse_rcpt(550, "5.1.1 <ada.lovelace@example.com>: Recipient address rejected")
    attempt = await sender.send(compose(sender))
    assert attempt.error == "RCPT 550 5.1.1 <address>: Recipient address rejected"


async def test_a_message_refused_for_good_fails_without_blaming_the_address(
    sink: SmtpSink,
) -> None:
    sender = mailer(sink.port)
    sink.refuse_data(554, "5.7.1 Message rejected as spam")
    attempt = await sender.send(compose(sender))
    assert (attempt.outcome, attempt.status, attempt.suppress) == ("failed", 554, False)
    assert attempt.error == "DATA 554 5.7.1 Message rejected as spam"
    sink.refuse_data(550, "5.1.1 No such user here")
    attempt = await sender.send(compose(sender))
    assert (attempt.outcome, attempt.suppress) == ("failed", True)


async def test_an_authentication_refusal_is_retried(sink: SmtpSink) -> None:
    sender = mailer(sink.port)
    sink.refuse_rcpt(530, "5.7.0 Authentication required")
    attempt = await sender.send(compose(sender))
    assert (attempt.outcome, attempt.status, attempt.suppress) == ("retry", 530, False)


async def test_a_server_that_is_down_is_retried() -> None:
    sender = mailer(free_port())
    attempt = await sender.send(compose(sender))
    assert attempt.outcome == "retry"
    assert attempt.status is None
    assert attempt.error


async def test_starttls_is_required_when_asked_for(sink: SmtpSink) -> None:
    sender = mailer(sink.port, tls="starttls")
    attempt = await sender.send(compose(sender))
    assert attempt.outcome == "retry"
    assert attempt.error is not None
    assert "STARTTLS" in attempt.error
    assert sink.received == []  # never in clear


async def test_the_password_never_shows_in_an_error(sink: SmtpSink) -> None:
    password = "hunter2-very-secret"
    # The sink offers no AUTH: the login fails, the mail waits for a fixed setup.
    sender = mailer(sink.port, username="shop", password=password)
    attempt = await sender.send(compose(sender))
    assert attempt.outcome == "retry"
    assert attempt.error is not None
    assert "AUTH" in attempt.error
    assert password not in attempt.error
    # Nor when a server echoes it.
    sender = mailer(sink.port, password=password)
    sink.refuse_rcpt(451, f"4.3.0 not today, {password}")
    attempt = await sender.send(compose(sender))
    assert attempt.error == "RCPT 451 4.3.0 not today, ***"
