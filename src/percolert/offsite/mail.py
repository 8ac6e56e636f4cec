"""E-mail to shoppers who are away: a product alert or a digest composed from Jinja2 templates
(text and HTML, the shop's own overriding the defaults file by file) and sent over SMTP, each
try reported as an `Attempt`. Which address, how often and whether at all is the outbox's
concern, not this module's."""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC, datetime
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import SMTP, Policy
from pathlib import Path
from typing import Any, Literal

import aiosmtplib
import msgspec
from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from percolert.core.fields import ONE_LINE_FORBIDDEN
from percolert.core.messages import ProductChange
from percolert.core.offsite_settings import SMTP_TIMEOUT_SECONDS
from percolert.core.times import iso_from_seconds
from percolert.offsite.attempts import Attempt, Outcome

DEFAULT_TEMPLATES = Path(__file__).with_name("templates")
SUBJECT_MAX_LENGTH = 120
# RFC 5322's limit on a header line; a List-Unsubscribe line is never folded inside a URL.
_HEADER_LINE_MAX = 998
_ERROR_MAX_LENGTH = 200
# An address as an SMTP reply may quote it ("<ada@example.com>: User unknown").
_ADDRESS_IN_TEXT = re.compile(r"[^\s<>\"']+@[^\s<>\"']+")
# What one template may render, and the longest string or list its arithmetic may make: a
# template is not trusted to be cheap (it renders off the event loop, but it still costs).
_RENDERED_MAX_LENGTH = 1_000_000
_COMPUTED_MAX_LENGTH = 100_000
_LARGEST_EXPONENT = 100


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` bounded: `'x' * 10**9` in a shop's template is an
    error, not a gigabyte."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > _LARGEST_EXPONENT:
            raise SecurityError(f"an exponent over {_LARGEST_EXPONENT} in a template")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(times, int)
                    and len(sequence) * times > _COMPUTED_MAX_LENGTH
                ):
                    raise SecurityError(f"a template made a value over {_COMPUTED_MAX_LENGTH} long")
        return super().call_binop(context, operator, left, right)


# Runs of whitespace, controls, line separators and bidi formatting: one space in a subject or
# a name, so that no value can start a header or a line of its own, or reorder what follows.
_NOT_ONE_LINE = re.compile(f"[\\s{ONE_LINE_FORBIDDEN}]+")
# What may sit between List-Unsubscribe's angle brackets: printable ASCII but the quote,
# comma and angle brackets that would end it.
_HEADER_URL = re.compile(r'[^\x00-\x20\x7f-\U0010ffff"<>,]+')
# RFC 3463's enhanced status code at the start of a reply's text ("5.1.1 No such user").
_ENHANCED_CODE = re.compile(r"\s*[245]\.(\d{1,3})\.(\d{1,3})\b")
# Authentication required (530), too weak (534), refused (535), needs encryption (538).
_AUTHENTICATION_CODES = frozenset({530, 534, 535, 538})


class MailItem(msgspec.Struct, frozen=True, kw_only=True):
    watch_terms: str
    change: ProductChange
    product_name: str
    price: float
    previous_price: float | None = None
    link: str | None = None


class MailContent(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["product_alert", "digest"]
    items: list[MailItem]
    more: int = 0  # changes beyond `items`, mentioned as "and N more"
    period: str | None = None  # a digest's: "daily", "weekly"


class SmtpSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int
    tls: Literal["starttls", "tls", "off"] = "starttls"
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = SMTP_TIMEOUT_SECONDS


class _ListHeader(UnstructuredHeader, BaseHeader):
    """List-Unsubscribe with its URLs as written, one per line. The standard folding turns
    a URL longer than a line into RFC 2047 encoded words, which no mail client reads as a
    URL; aiosmtplib flattens with its own policy, so the header itself must fold this way."""

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: " + f",{policy.linesep} ".join(self.split(", ")) + policy.linesep


class Mailer:
    def __init__(
        self,
        smtp: SmtpSettings,
        *,
        mail_from: str,
        templates: Path | None = None,
        shop_name: str = "the shop",
        currency: str = "$",
    ) -> None:
        if templates is not None and not templates.is_dir():
            # A mistyped directory would silently mail the defaults instead of the shop's.
            raise ValueError(f"no template directory at {templates}")
        self._smtp = smtp
        self._mail_from = mail_from
        self._shop_name = shop_name
        self._currency = currency
        loaders = [FileSystemLoader(DEFAULT_TEMPLATES)]
        if templates is not None:
            loaders.insert(0, FileSystemLoader(templates))
        # Sandboxed: a shop's templates are edited by people who are not the operators (its
        # marketing, an agency); they need the data they are given, never Python's internals
        # (`item.__class__...`), and a mistake there must not become code running here.
        # Strict: a misspelt variable fails the composing instead of mailing a blank.
        self._templates = _BoundedSandbox(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self._templates.filters["money"] = _money
        headers = HeaderRegistry()
        headers.map_to_type("list-unsubscribe", _ListHeader)
        self._policy = SMTP.clone(header_factory=headers)

    def compose(
        self,
        to: str,
        content: MailContent,
        *,
        message_id: str,
        unsubscribe_url: str,
        unsubscribe_all_url: str | None = None,
        unsubscribe_mailto: str | None = None,
    ) -> EmailMessage:
        """The message for `to`. Raises ValueError for an address or URL that cannot go in a
        header, and jinja2's TemplateError for a broken template."""
        if not content.items:
            raise ValueError("a message needs at least one item")
        items = [_shown(item) for item in content.items]
        context: dict[str, Any] = {
            "kind": content.kind,
            "shop_name": self._shop_name,
            "currency": self._currency,
            "items": items,
            "item": items[0],
            "more": content.more,
            "total": len(items) + content.more,
            "period": _one_line(content.period) if content.period else None,
            "watches": list(dict.fromkeys(item.watch_terms for item in items)),
            "unsubscribe_url": unsubscribe_url,
            "unsubscribe_all_url": unsubscribe_all_url,
        }
        subject = self._render(f"subject_{content.kind}.txt.j2", context)
        message = EmailMessage(policy=self._policy)
        message["From"] = self._mail_from
        message["To"] = to
        message["Subject"] = _bounded(_one_line(subject), SUBJECT_MAX_LENGTH)
        message["Date"] = email.utils.format_datetime(datetime.now(UTC))
        message["Message-ID"] = message_id
        message["List-Unsubscribe"] = _list_unsubscribe(unsubscribe_url, unsubscribe_mailto)
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        # Quoted-printable keeps every part 7-bit, whatever the relay supports.
        text = self._render(f"{content.kind}.txt.j2", context)
        message.set_content(text, cte="quoted-printable")
        html = self._render(f"{content.kind}.html.j2", context)
        message.add_alternative(html, subtype="html", cte="quoted-printable")
        return message

    async def send(self, message: EmailMessage) -> Attempt:
        """One try at delivering `message`; every outcome is an Attempt (it raises only on
        cancellation)."""
        at = iso_from_seconds(time.time())
        started = time.perf_counter()

        def attempt(
            outcome: Outcome,
            status: int | None = None,
            error: str | None = None,
            suppress: bool = False,
        ) -> Attempt:
            return Attempt(
                outcome=outcome,
                at=at,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                status=status,
                error=self._short(error) if error is not None else None,
                suppress=suppress,
            )

        smtp = aiosmtplib.SMTP(
            hostname=self._smtp.host,
            port=self._smtp.port,
            use_tls=self._smtp.tls == "tls",
            # True, never None: without STARTTLS on offer the try fails instead of quietly
            # sending the shopper's address and alerts in clear.
            start_tls=self._smtp.tls == "starttls",
            username=self._smtp.username,
            password=self._smtp.password,
            timeout=self._smtp.timeout_seconds,
        )
        try:
            async with smtp:
                refused, _ = await smtp.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as error:
            first = error.recipients[0]
            return attempt(*_refusal("RCPT", first.code, first.message))
        except aiosmtplib.SMTPDataError as error:
            return attempt(*_refusal("DATA", error.code, error.message))
        except aiosmtplib.SMTPResponseException as error:
            # Refused before any recipient (greeting, EHLO, AUTH, MAIL FROM): this server or
            # this sender's setup, which the operator can fix; the mail waits for that.
            return attempt("retry", error.code, f"{error.code} {error.message}")
        except aiosmtplib.SMTPNotSupported as error:
            # The relay cannot carry this address (SMTPUTF8): no later try will differ.
            return attempt("failed", None, error.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            # Unreachable, timed out, disconnected, TLS refused or not on offer.
            return attempt("retry", None, str(error) or type(error).__name__)
        except ValueError as error:
            # An address aiosmtplib will not put in an envelope.
            return attempt("failed", None, f"unsendable address: {error}")
        except Exception as error:  # the outbox keeps going whatever a try meets
            return attempt("retry", None, f"{type(error).__name__}: {error}")
        if refused:
            # Accepted for some recipients and not others: ours has one, so it was refused.
            code, text = next(iter(refused.values()))
            return attempt(*_refusal("RCPT", code, text))
        return attempt("delivered", 250)

    def _render(self, name: str, context: dict[str, Any]) -> str:
        rendered = self._templates.get_template(name).render(context)
        if len(rendered) > _RENDERED_MAX_LENGTH:
            raise ValueError(f"{name} rendered more than {_RENDERED_MAX_LENGTH} characters")
        return rendered

    def _short(self, error: str) -> str:
        """One line, bounded, and never the password, even if a server echoes it, nor an
        address (servers name the recipient they refuse; the delivery log names nobody)."""
        text = _ADDRESS_IN_TEXT.sub("address", _one_line(error))
        if self._smtp.password:
            text = text.replace(self._smtp.password, "***")
        return _bounded(text, _ERROR_MAX_LENGTH)


def _refusal(
    stage: Literal["RCPT", "DATA"], code: int, text: str
) -> tuple[Outcome, int, str, bool]:
    """What a refused recipient or message means: 4xx is for now; 5xx is for good, except
    an authentication refusal, which the operator's setup causes and fixing it delivers.
    The outcome, status, error and whether to suppress the address."""
    error = f"{stage} {code} {text}"
    if code < 500 or code in _AUTHENTICATION_CODES:
        return "retry", code, error, False
    return "failed", code, error, _about_address(code, text)


def _about_address(code: int, text: str) -> bool:
    """Whether a permanent refusal says the address itself is bad, so it is never mailed
    again. The enhanced code decides when there is one: 5.1.x (no such address, bad syntax,
    moved) and 5.2.1 (mailbox disabled) are the address; 5.7.x (policy, spam, DMARC, relay)
    and the rest are about this message or this sender, and suppressing the shopper for them
    would lose mail that a mended message or setup delivers. Without one, the codes that
    name the mailbox: 550 (unavailable), 551 (not local), 553 (name not allowed); 552
    (storage) and 554 (transaction failed, often a policy refusal) are not the address."""
    enhanced = _ENHANCED_CODE.match(text)
    if enhanced is not None:
        return enhanced[1] == "1" or (enhanced[1], enhanced[2]) == ("2", "1")
    return code in {550, 551, 553}


def _shown(item: MailItem) -> MailItem:
    """`item` as the templates show it: names on one line; a link only if it is a web one
    (a `javascript:` or `data:` link has no place in an e-mail)."""
    link = item.link if item.link and item.link.startswith(("https://", "http://")) else None
    return msgspec.structs.replace(
        item,
        watch_terms=_one_line(item.watch_terms),
        product_name=_one_line(item.product_name),
        link=link,
    )


def _one_line(text: str) -> str:
    return _NOT_ONE_LINE.sub(" ", text).strip()


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _list_unsubscribe(url: str, mailto: str | None) -> str:
    """RFC 2369's header: the one-click URL first (RFC 8058), then the mailto: if any."""
    targets = [url]
    if mailto is not None:
        targets.append(mailto if mailto.startswith("mailto:") else f"mailto:{mailto}")
    for target in targets:
        if not _HEADER_URL.fullmatch(target) or len(target) > _HEADER_LINE_MAX - 30:
            raise ValueError(f"cannot put {target[:80]!r} in List-Unsubscribe")
    return ", ".join(f"<{target}>" for target in targets)
