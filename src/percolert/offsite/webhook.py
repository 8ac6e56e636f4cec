"""The webhook channel: one signed POST of an outbox event to the shop's endpoint.

Signed as Standard Webhooks says (`webhook-id`, `webhook-timestamp`, `webhook-signature`),
by its reference library, once for each secret: while a shop rotates its secret, both the
old and the new one sign and a receiver that knows either verifies. `webhook-id` is the
event's id, the same on every retry, so that the shop can drop a duplicate.

Any answer but 2xx and 410 is a retry, as Standard Webhooks senders do; the outbox's
schedule decides when to give up. A redirect is not followed (it could lead anywhere the
target guard would refuse), and at most `max_response_bytes` of an answer are read: the
shop's answer is its status, the body is nobody's business.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from percolert.core.times import iso_from_seconds
from percolert.offsite.attempts import Attempt, Outcome
from percolert.offsite.schedule import MAX_RETRY_AFTER
from percolert.offsite.targets import GuardedResolver, TargetRefused, check_url

logger = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 200
_READ_CHUNK_BYTES = 16 * 1024


class WebhookSender:
    def __init__(
        self,
        url: str,
        secrets: Sequence[str],
        *,
        allow_private: bool,
        timeout_seconds: float = 10.0,
        max_response_bytes: int = 64 * 1024,
        user_agent: str = "Percolert-Webhooks/1",
    ) -> None:
        if not secrets:
            raise ValueError("a webhook needs at least one signing secret")
        self._signers: list[Webhook] = []
        for number, secret in enumerate(secrets, 1):
            try:
                self._signers.append(Webhook(secret))
            except Exception:  # binascii.Error, EmptyWebhookSecretError: never echo the secret
                raise ValueError(f"signing secret #{number} is not a valid whsec_ secret") from None
        self._url = url
        self._allow_private = allow_private
        self._timeout_seconds = timeout_seconds
        self._max_response_bytes = max_response_bytes
        self._user_agent = user_agent
        # Built at the first send: a session belongs to the running loop.
        self._session: aiohttp.ClientSession | None = None

    async def send(
        self, event_id: str, payload: bytes, *, timestamp: float | None = None
    ) -> Attempt:
        """Deliver `payload` (JSON) once; never raises but for cancellation."""
        started_at = time.time()
        started = time.perf_counter()
        seconds = int(started_at if timestamp is None else timestamp)
        status: int | None = None
        retry_after: float | None = None
        error: str | None = None
        try:
            check_url(self._url, allow_private=self._allow_private)
            async with self._client().post(
                self._url,
                data=payload,
                headers=self._headers(event_id, payload, seconds),
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                await self._discard_body(response)
        except Exception as failed:  # every failure is an attempt to report, never a raise
            error = self._describe(failed, event_id)
        outcome: Outcome = "retry"
        if status is not None:
            if 200 <= status < 300:
                outcome, retry_after, error = "delivered", None, None
            elif status == 410:
                outcome, retry_after, error = "gone", None, "HTTP 410: the endpoint is gone"
            elif 300 <= status < 400:
                error = f"HTTP {status}: redirect to another location not followed"
            else:
                error = f"HTTP {status}"
        return Attempt(
            outcome=outcome,
            at=iso_from_seconds(started_at),
            duration_ms=(time.perf_counter() - started) * 1000,
            status=status,
            error=None if error is None else error[:_MAX_ERROR_CHARS],
            retry_after=retry_after,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _describe(self, failed: Exception, event_id: str) -> str:
        """A failure in a few words: no secret, no answer body, not the URL (its query may
        carry the shop's token)."""
        match failed:
            case TargetRefused():
                return f"refused: {failed}"
            case TimeoutError():
                return f"timed out after {self._timeout_seconds:g}s"
            case aiohttp.ClientConnectorDNSError():
                return f"cannot resolve {failed.host}: {_reason(failed.os_error)}"
            case aiohttp.ClientConnectorCertificateError():
                return f"the certificate of {failed.host} is refused: {failed.certificate_error}"
            case aiohttp.ClientConnectorError():
                return f"cannot connect to {failed.host}:{failed.port}: {_reason(failed.os_error)}"
            case aiohttp.ServerDisconnectedError():
                return "the server closed the connection without answering"
            case aiohttp.ClientError() | OSError():
                return f"{type(failed).__name__}: {failed}".replace(self._url, "<url>")
        # A bug here must not stop the outbox: the attempt is a retry, the log has the rest.
        logger.error("sending webhook event %s failed", event_id, exc_info=failed)
        return type(failed).__name__

    def _headers(self, event_id: str, payload: bytes, seconds: int) -> dict[str, str]:
        moment = datetime.fromtimestamp(seconds, UTC)
        signatures = " ".join(signer.sign(event_id, moment, payload) for signer in self._signers)
        return {
            "webhook-id": event_id,
            "webhook-timestamp": str(seconds),
            "webhook-signature": signatures,
            "content-type": "application/json",
            "user-agent": self._user_agent,
        }

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    resolver=GuardedResolver(allow_private=self._allow_private), limit=64
                ),
                timeout=aiohttp.ClientTimeout(total=self._timeout_seconds),
                # Nothing of the answer is used: no need to inflate it (or a bomb).
                auto_decompress=False,
                # One delivery must not carry what the shop set at another.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _discard_body(self, response: aiohttp.ClientResponse) -> None:
        """Read the answer up to the bound, so that a short one leaves the connection
        reusable; a longer one, or one that fails midway, closes it. The status stands."""
        remaining = self._max_response_bytes
        try:
            while remaining > 0:
                chunk = await response.content.read(min(remaining, _READ_CHUNK_BYTES))
                if not chunk:
                    return
                remaining -= len(chunk)
            if not response.content.at_eof():
                response.close()
        except (aiohttp.ClientError, TimeoutError, OSError):
            response.close()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date, clamped to
    [0, a day]; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # "-0000": an HTTP-date is in GMT
        seconds = moment.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__
