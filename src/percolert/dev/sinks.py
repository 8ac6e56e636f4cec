"""The demo's stand-ins for what off-site delivery reaches (`percolert up --sinks`): a shop's
webhook endpoint that verifies each event as a shop must, and a mail server that keeps each
message as an .eml file. Both print one line per delivery to the demo's output, on this
machine only (127.0.0.1)."""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from percolert.core.offsite_settings import OffsiteSettings
from percolert.core.state_dir import kept_secret

HOST = "127.0.0.1"
MAIL_FROM = "Percolert demo <alerts@percolert.localhost>"
# Short enough to try in a demo: close the tab, wait, put the cheaper product.
OFFSITE_AFTER_SECONDS = 10
# What GET / of the receiver lists: enough to look back on, bounded however long it runs.
KEPT_EVENTS = 100
# Anything bigger is not one of our events (and must not fill the demo's memory).
_MAX_BODY_BYTES = 1 << 20
_UNSUBSCRIBE_LINK = re.compile(r"<(https?://[^>]+)>")
_WEBHOOK_KEY_BYTES = 24


def say(line: str) -> None:
    # Flushed: the demo's output is often a pipe (a test, `tee`), and these come from threads.
    print(line, flush=True)


def webhook_secret(state_dir: Path) -> str:
    """The demo's Standard Webhooks secret (`whsec_` and 24 random bytes in base64), made
    once and kept in the state directory as the other development secrets are."""
    # The kept secret is 32 random bytes in URL-safe base64; the standard wants plain base64.
    # 24 bytes are what its own libraries make: 32 characters, no padding.
    kept = kept_secret(state_dir, "webhook_secret")
    key = base64.urlsafe_b64decode(kept + "=" * (-len(kept) % 4))[:_WEBHOOK_KEY_BYTES]
    return "whsec_" + base64.b64encode(key).decode()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class ReceivedEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str | None
    type: str | None
    verified: bool
    error: str | None = None
    received_at: float
    payload: Any = None


def _summary(payload: Any) -> str:
    """What a product alert says in a few words: product, change, price."""
    try:
        alert = payload["data"]["alert"]
        product = alert["product"]
        was = product.get("previous_price")
        price = f"{product['price']}" + ("" if was is None else f" (was {was})")
        return f" — {product['product_name']}: {alert['change']}, {price}"
    except (KeyError, TypeError):
        return ""


class WebhookReceiver:
    """A shop's webhook endpoint: POST verifies the event with the shop's secrets (204, or
    401 when it does not verify) and prints it; GET / lists the last events as JSON."""

    def __init__(self, signing_secrets: Sequence[str], port: int = 0) -> None:
        self._verifiers = [Webhook(secret) for secret in signing_secrets]
        self._events: deque[ReceivedEvent] = deque(maxlen=KEPT_EVENTS)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length > _MAX_BODY_BYTES:
                    self._answer(413)
                    return
                body = self.rfile.read(length)
                verified = receiver.receive(body, dict(self.headers.items()))
                self._answer(204 if verified else 401)

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/":
                    self._answer(404)
                    return
                self._answer(200, msgspec.json.encode(receiver.events), "application/json")

            def _answer(self, status: int, body: bytes = b"", kind: str | None = None) -> None:
                self.send_response(status)
                if kind is not None:
                    self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # one line per event is printed instead

        self._server = ThreadingHTTPServer((HOST, port), Handler)
        self.base_url = f"http://{HOST}:{self._server.server_address[1]}"
        self.url = f"{self.base_url}/webhook"

    @property
    def events(self) -> list[ReceivedEvent]:
        with self._lock:
            return list(self._events)

    def receive(self, body: bytes, headers: dict[str, str]) -> bool:
        error: str | None = "no secret to verify with"
        for verifier in self._verifiers:
            try:
                verifier.verify(body, headers, json_parse=False)
            except WebhookVerificationError as failed:
                error = str(failed)
                continue
            error = None
            break
        payload: Any = None
        with contextlib.suppress(ValueError):
            # Kept unverified too, to show what came; only a verified one is to be trusted.
            payload = json.loads(body)
        event_id = {name.lower(): value for name, value in headers.items()}.get("webhook-id")
        event_type = payload.get("type") if isinstance(payload, dict) else None
        event = ReceivedEvent(
            id=event_id,
            type=event_type if isinstance(event_type, str) else None,
            verified=error is None,
            error=error,
            received_at=time.time(),
            payload=payload,
        )
        with self._lock:
            self._events.append(event)
        outcome = "verified" + _summary(payload) if event.verified else f"NOT verified: {error}"
        say(f"webhook {event.type or '?'} {event.id or '?'} {outcome}")
        return event.verified

    def start(self) -> None:
        threading.Thread(
            target=self._server.serve_forever, name="demo-webhook-receiver", daemon=True
        ).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class MailSink:
    """A mail server that accepts every message (no TLS, no AUTH), keeps it in `folder` as an
    .eml file and prints who it is for, its subject and its unsubscribe link."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or unused_port()
        # A fixed name: looking up this machine's own can take seconds on some networks.
        self._controller = Controller(
            self, hostname=HOST, port=self.port, server_hostname="localhost"
        )

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # aiosmtpd logs every connection at INFO; the demo prints one line per message.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    # aiosmtpd's handler hook, called in the controller's thread.
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.folder / f"{stamp}-{secrets.token_hex(4)}.eml"
        # Blocking, but a small local file, and the sink's event loop is its own.
        path.write_bytes(data)
        message = email.message_from_bytes(data, policy=email.policy.default)
        link = _UNSUBSCRIBE_LINK.search(str(message.get("List-Unsubscribe", "")))
        unsubscribe = link.group(1) if link else "none"
        recipients = ", ".join(envelope.rcpt_tos)
        say(f"mail to {recipients}: {message.get('Subject', '')} — unsubscribe: {unsubscribe}")
        return "250 Message accepted for delivery"


class Sinks(msgspec.Struct, frozen=True):
    webhook_url: str
    events_url: str
    smtp_port: int
    mail_folder: Path


@contextlib.contextmanager
def running_sinks(state_dir: Path, signing_secrets: Sequence[str]) -> Iterator[Sinks]:
    """The webhook receiver (verifying with `signing_secrets`) and the mail sink (keeping
    messages in `<state_dir>/mail/`) until the block ends."""
    receiver = WebhookReceiver(signing_secrets)
    sink = MailSink(state_dir / "mail")
    receiver.start()
    try:
        sink.start()
        try:
            yield Sinks(receiver.url, f"{receiver.base_url}/", sink.port, sink.folder)
        finally:
            sink.stop()
    finally:
        receiver.stop()


def server_environment(sinks: Sinks, secret: str) -> dict[str, str]:
    """The PERCOLERT_* variables that send a server's off-site deliveries to the sinks."""
    return {
        "PERCOLERT_WEBHOOK_URL": sinks.webhook_url,
        "PERCOLERT_WEBHOOK_SECRET": secret,
        # The receiver is on this machine, which a webhook may reach in development only.
        "PERCOLERT_WEBHOOK_ALLOW_PRIVATE": "true",
        "PERCOLERT_SMTP_HOST": HOST,
        "PERCOLERT_SMTP_PORT": str(sinks.smtp_port),
        "PERCOLERT_SMTP_TLS": "off",
        "PERCOLERT_MAIL_FROM": MAIL_FROM,
        "PERCOLERT_OFFSITE_AFTER_SECONDS": str(OFFSITE_AFTER_SECONDS),
    }


def announcement(sinks: Sinks, offsite: OffsiteSettings) -> list[str]:
    """Where the sinks are, or that the environment sends a channel elsewhere."""
    lines = []
    if offsite.webhook_url == sinks.webhook_url:
        lines.append(
            f"webhook receiver: {sinks.webhook_url} (verifies each event; "
            f"GET {sinks.events_url} lists the last {KEPT_EVENTS})"
        )
    else:
        lines.append(f"webhooks go to PERCOLERT_WEBHOOK_URL, not to {sinks.webhook_url}")
    if (offsite.smtp_host, offsite.smtp_port) == (HOST, sinks.smtp_port):
        where = f"smtp://{HOST}:{sinks.smtp_port}"
        lines.append(f"mail sink: {where} (each message kept in {sinks.mail_folder}/)")
    else:
        lines.append(f"e-mail goes to PERCOLERT_SMTP_HOST, not to smtp://{HOST}:{sinks.smtp_port}")
    return lines


def offsite_hint(product_name: str, offsite: OffsiteSettings, *, shop: bool) -> str:
    """How to see the cheaper product's alert go off-site, in one line."""
    watch = (
        f"log in to the shop, click notify-me on {product_name}, close the tab"
        if shop
        else f"with an account's watch on {product_name} and none of its tabs open"
    )
    return f"off-site: {watch}, wait {offsite.offsite_after_seconds:g} s, run this:"
