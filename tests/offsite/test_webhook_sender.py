"""The webhook sender against a real endpoint in the test process: signatures the standard's
own verifier accepts, outcomes by status, and the guards (redirects, endless answers,
timeouts, private targets)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from email.utils import formatdate

import anyio
import anyio.to_thread
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from percolert.offsite.attempts import Attempt
from percolert.offsite.targets import TargetRefused, check_url
from percolert.offsite.webhook import WebhookSender, parse_retry_after
from tests.offsite.receivers import WebhookReceiver
from tests.servers import free_port

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"the shop's current secret, 32 b").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the shop's previous secret, 32b").decode()
PAYLOAD = json.dumps({"type": "alert", "product": "p-1", "price": 12.5}).encode()


async def send(
    url: str,
    *,
    secrets: tuple[str, ...] = (SECRET,),
    allow_private: bool = True,
    timeout_seconds: float = 10.0,
    times: int = 1,
) -> list[Attempt]:
    """`times` sends of one event by one sender, within a generous bound."""
    sender = WebhookSender(
        url, secrets, allow_private=allow_private, timeout_seconds=timeout_seconds
    )
    try:
        with anyio.fail_after(30):
            return [await sender.send("evt_1", PAYLOAD) for _ in range(times)]
    finally:
        await sender.close()


async def test_a_delivery_verifies_with_the_standard_verifier(receiver: WebhookReceiver) -> None:
    (attempt,) = await send(receiver.url)

    assert attempt.outcome == "delivered"
    assert attempt.status == 200
    assert attempt.error is None
    assert attempt.duration_ms > 0
    assert attempt.at.endswith("+00:00")
    assert receiver.verified(SECRET) == [json.loads(PAYLOAD)]
    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hooks"
    assert request.body == PAYLOAD
    assert request.headers["webhook-id"] == "evt_1"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "Percolert-Webhooks/1"


async def test_every_secret_signs_while_a_shop_rotates(receiver: WebhookReceiver) -> None:
    await send(receiver.url, secrets=(OLD_SECRET, SECRET))

    signatures = receiver.requests[0].headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(signature.startswith("v1,") for signature in signatures)
    # Each secret alone verifies: a shop that knows either accepts the delivery.
    assert receiver.verified(OLD_SECRET) == [json.loads(PAYLOAD)]
    assert receiver.verified(SECRET) == [json.loads(PAYLOAD)]
    stranger = "whsec_" + base64.b64encode(b"a secret the shop never had, 32b").decode()
    with pytest.raises(WebhookVerificationError):
        receiver.verified(stranger)


async def test_the_timestamp_given_is_the_one_signed(receiver: WebhookReceiver) -> None:
    sender = WebhookSender(receiver.url, [SECRET], allow_private=True)
    try:
        await sender.send("evt_1", PAYLOAD, timestamp=1_700_000_000.9)
    finally:
        await sender.close()

    (request,) = receiver.requests
    assert request.headers["webhook-timestamp"] == "1700000000"
    # Too old for the verifier's tolerance: compare with the library's own signature.
    moment = datetime.fromtimestamp(1_700_000_000, UTC)
    assert request.headers["webhook-signature"] == Webhook(SECRET).sign("evt_1", moment, PAYLOAD)


async def test_every_try_of_an_event_carries_its_id(receiver: WebhookReceiver) -> None:
    receiver.answer(500)
    first, second = await send(receiver.url, times=2)

    assert (first.outcome, first.status, first.error) == ("retry", 500, "HTTP 500")
    assert first.retry_after is None
    assert second.outcome == "delivered"
    assert [request.headers["webhook-id"] for request in receiver.requests] == ["evt_1", "evt_1"]
    assert receiver.verified(SECRET) == [json.loads(PAYLOAD)] * 2


@pytest.mark.parametrize("status", [400, 401, 404, 408, 500, 502, 503])
async def test_any_other_answer_is_a_retry(receiver: WebhookReceiver, status: int) -> None:
    receiver.answer(status, body=b"the shop's own words about " + SECRET.encode())
    (attempt,) = await send(receiver.url)

    assert (attempt.outcome, attempt.status, attempt.error) == ("retry", status, f"HTTP {status}")


async def test_410_means_the_endpoint_is_gone(receiver: WebhookReceiver) -> None:
    receiver.answer(410)
    (attempt,) = await send(receiver.url)

    assert (attempt.outcome, attempt.status) == ("gone", 410)


async def test_retry_after_in_seconds(receiver: WebhookReceiver) -> None:
    receiver.answer(429, headers={"Retry-After": "7"})
    (attempt,) = await send(receiver.url)

    assert (attempt.outcome, attempt.status, attempt.retry_after) == ("retry", 429, 7)


async def test_retry_after_as_an_http_date(receiver: WebhookReceiver) -> None:
    receiver.answer(503, headers={"Retry-After": formatdate(time.time() + 120, usegmt=True)})
    (attempt,) = await send(receiver.url)

    assert attempt.outcome == "retry"
    assert attempt.retry_after is not None
    assert 60 < attempt.retry_after <= 121


def test_retry_after_is_clamped_and_garbage_ignored() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("1.5", now) is None
    assert parse_retry_after(" 30 ", now) == 30
    assert parse_retry_after("999999999", now) == 86400
    assert parse_retry_after(formatdate(now - 60, usegmt=True), now) == 0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30


async def test_a_redirect_is_not_followed(receiver: WebhookReceiver) -> None:
    with WebhookReceiver() as elsewhere:
        receiver.answer(302, headers={"Location": elsewhere.url})
        (attempt,) = await send(receiver.url)

        assert (attempt.outcome, attempt.status) == ("retry", 302)
        assert attempt.error == "HTTP 302: redirect to another location not followed"
        # Had it been followed, it would have arrived before the send returned.
        assert elsewhere.requests == []
    assert len(receiver.requests) == 1


async def test_an_endless_answer_is_not_read_to_its_end(receiver: WebhookReceiver) -> None:
    """The body never ends: a sender that read it all would never return (until its long
    timeout, beyond the bound here); this one reads its bound and hangs up."""
    receiver.answer(200, endless=True)
    sender = WebhookSender(receiver.url, [SECRET], allow_private=True, timeout_seconds=300)
    try:
        with anyio.fail_after(30):
            attempt = await sender.send("evt_1", PAYLOAD)
        assert (attempt.outcome, attempt.status) == ("delivered", 200)
        # The endpoint's writes fail: the sender closed the connection.
        await anyio.to_thread.run_sync(receiver.wait_for_cut)
        # And the sender still works, on a fresh connection.
        assert (await sender.send("evt_2", PAYLOAD)).outcome == "delivered"
    finally:
        await sender.close()


async def test_a_silent_endpoint_times_out(receiver: WebhookReceiver) -> None:
    receiver.answer(200, hold=True)
    (attempt,) = await send(receiver.url, timeout_seconds=0.5)

    assert (attempt.outcome, attempt.status) == ("retry", None)
    assert attempt.error == "timed out after 0.5s"
    assert len(receiver.requests) == 1


async def test_nothing_listening_is_a_retry() -> None:
    (attempt,) = await send(f"http://127.0.0.1:{free_port()}/hooks")

    assert (attempt.outcome, attempt.status) == ("retry", None)
    assert attempt.error is not None
    assert attempt.error.startswith("cannot connect to 127.0.0.1:")


async def test_a_loopback_address_is_refused(receiver: WebhookReceiver) -> None:
    with pytest.raises(TargetRefused):
        check_url(receiver.url, allow_private=False)
    (attempt,) = await send(receiver.url, allow_private=False)

    assert (attempt.outcome, attempt.status) == ("retry", None)
    assert attempt.error == "refused: 127.0.0.1 is not a public address"
    assert receiver.requests == []


async def test_localhost_is_refused(receiver: WebhookReceiver) -> None:
    url = receiver.url.replace("127.0.0.1", "localhost")
    with pytest.raises(TargetRefused):
        check_url(url, allow_private=False)
    (attempt,) = await send(url, allow_private=False)

    assert attempt.outcome == "retry"
    assert attempt.error == "refused: localhost names this host"
    assert receiver.requests == []


async def test_private_targets_when_allowed(receiver: WebhookReceiver) -> None:
    """Through the guarded resolver: "localhost" is a name, resolved and checked."""
    url = receiver.url.replace("127.0.0.1", "localhost")
    check_url(url, allow_private=True)
    (attempt,) = await send(url, allow_private=True)

    assert attempt.outcome == "delivered"
    assert receiver.verified(SECRET) == [json.loads(PAYLOAD)]


async def test_errors_carry_neither_secret_nor_body(receiver: WebhookReceiver) -> None:
    receiver.answer(500, body=b"stack trace mentioning " + SECRET.encode())
    (attempt,) = await send(receiver.url)

    assert attempt.error == "HTTP 500"
    with pytest.raises(ValueError, match="#2 is not"):
        WebhookSender(receiver.url, [SECRET, "whsec_Q"], allow_private=True)
    with pytest.raises(ValueError, match="#1 is not") as refused:
        WebhookSender(receiver.url, ["whsec_"], allow_private=True)
    assert SECRET not in str(refused.value)
    with pytest.raises(ValueError, match="at least one"):
        WebhookSender(receiver.url, [], allow_private=True)
