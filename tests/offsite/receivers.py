"""Real receivers of off-site deliveries for tests, in the test process: a shop's webhook
endpoint (`WebhookReceiver`) that records what arrives and answers as the test tells it,
and a mail server (`SmtpSink`) that does the same for e-mail."""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from standardwebhooks.webhooks import Webhook

from tests.servers import QuietHandler, free_port, http_server


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # epoch seconds of arrival


@dataclass(frozen=True)
class WebhookAnswer:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    # A chunked body that never ends (until the client goes away or the receiver closes).
    endless: bool = False
    # No answer until the receiver closes (or `release()`): the client times out first.
    hold: bool = False


class WebhookReceiver:
    """A shop's webhook endpoint on an unused loopback port, for the `with` block: records
    every request and answers with the queued answers in order, then 200."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._received: list[ReceivedRequest] = []
        self._answers: deque[WebhookAnswer] = deque()
        self._released = threading.Event()
        self._streams_cut = 0
        self._stack = ExitStack()
        self.url = ""

    def __enter__(self) -> WebhookReceiver:
        receiver = self

        class Handler(QuietHandler):
            # Keep-alive and chunked answers, as a real endpoint does.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._serve(self)

            do_GET = do_PUT = do_POST

        self.url = self._stack.enter_context(http_server(Handler)) + "/hooks"
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
        self._stack.close()

    def answer(
        self,
        *statuses: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        endless: bool = False,
        hold: bool = False,
    ) -> None:
        """Answer the next requests with these statuses, in order (each with these headers
        and body); e.g. `answer(302, headers={"location": other})` for a redirect."""
        with self._condition:
            for status in statuses:
                self._answers.append(
                    WebhookAnswer(status, dict(headers or {}), body, endless=endless, hold=hold)
                )

    def release(self) -> None:
        """Let held answers go and endless bodies end."""
        self._released.set()

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._condition:
            return list(self._received)

    @property
    def streams_cut(self) -> int:
        """Endless bodies the client stopped reading (it closed the connection)."""
        with self._condition:
            return self._streams_cut

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """The requests received, once there are at least `count`."""
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._received) >= count, timeout):
                raise AssertionError(f"{len(self._received)} requests arrived, not {count}")
            return list(self._received)

    def wait_for_cut(self, count: int = 1, timeout: float = 10.0) -> None:
        with self._condition:
            if not self._condition.wait_for(lambda: self._streams_cut >= count, timeout):
                raise AssertionError(f"{self._streams_cut} endless bodies were cut, not {count}")

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """The JSON payloads of every request, each verified with `secret` (the standard's
        own verifier raises WebhookVerificationError on the first that does not verify)."""
        verifier = Webhook(secret)
        return [verifier.verify(request.body, request.headers) for request in self.requests]

    def _serve(self, handler: QuietHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        with self._condition:
            self._received.append(
                ReceivedRequest(
                    method=handler.command,
                    path=handler.path,
                    headers={name.lower(): value for name, value in handler.headers.items()},
                    body=body,
                    at=time.time(),
                )
            )
            answer = self._answers.popleft() if self._answers else WebhookAnswer()
            self._condition.notify_all()
        if answer.hold:
            self._released.wait(timeout=60)
            handler.close_connection = True
        try:
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            if answer.endless:
                handler.send_header("transfer-encoding", "chunked")
                handler.end_headers()
                self._stream_endlessly(handler)
                return
            handler.send_header("content-length", str(len(answer.body)))
            handler.end_headers()
            handler.wfile.write(answer.body)
        except OSError:
            handler.close_connection = True  # the client went away: nobody to answer

    def _stream_endlessly(self, handler: QuietHandler) -> None:
        chunk = b"x" * 65536
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        handler.close_connection = True
        try:
            while not self._released.is_set():
                handler.wfile.write(framed)
        except OSError:
            with self._condition:
                self._streams_cut += 1
                self._condition.notify_all()


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    recipients: list[str]
    data: bytes  # the message as it came over the wire
    message: EmailMessage


class SmtpSink:
    """An SMTP server (aiosmtpd, no TLS, no AUTH) on an unused loopback port, for the `with`
    block: records every message it accepts, and refuses as the test tells it."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._received: list[ReceivedMail] = []
        self._rcpt_refusals: deque[str] = deque()
        self._data_refusals: deque[str] = deque()
        self._controller: Controller | None = None
        self.port = 0

    def __enter__(self) -> SmtpSink:
        self.port = free_port()
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, server_hostname="sink.test"
        )
        self._controller.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def refuse_rcpt(self, code: int, text: str, times: int = 1) -> None:
        """Answer the next `times` recipients with `code text` (450, 550 5.1.1 ...)."""
        with self._condition:
            self._rcpt_refusals.extend([f"{code} {text}"] * times)

    def refuse_data(self, code: int, text: str, times: int = 1) -> None:
        """Answer the next `times` messages' content with `code text` (554 5.7.1 ...)."""
        with self._condition:
            self._data_refusals.extend([f"{code} {text}"] * times)

    @property
    def received(self) -> list[ReceivedMail]:
        with self._condition:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMail]:
        """The messages accepted, once there are at least `count`."""
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._received) >= count, timeout):
                raise AssertionError(f"{len(self._received)} messages arrived, not {count}")
            return list(self._received)

    # aiosmtpd's handler hooks, called in the controller's thread.

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self._condition:
            if self._rcpt_refusals:
                return self._rcpt_refusals.popleft()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._condition:
            if self._data_refusals:
                return self._data_refusals.popleft()
        data = envelope.original_content or b""
        message = email.message_from_bytes(data, policy=email.policy.default)
        with self._condition:
            self._received.append(
                ReceivedMail(
                    mail_from=envelope.mail_from or "",
                    recipients=list(envelope.rcpt_tos),
                    data=data,
                    message=message,
                )
            )
            self._condition.notify_all()
        return "250 Message accepted for delivery"
