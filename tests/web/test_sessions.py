"""The session cookie says who a browser is and when its session began — only the server
can say either. Sessions begin at the API (the page asks first: POST /api/session), never
on the page, its files or the probes."""

from __future__ import annotations

import time

import httpx
import pytest
from itsdangerous import TimestampSigner
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from percolert.web.middleware.sessions import COOKIE_NAME, SessionSigner
from tests.shoppers import Shopper

SECRET = "test-secret"


class _SignedAt(TimestampSigner):
    """Signs as of a given second (cookies as issued before sessions carried their start)."""

    def __init__(self, second: int, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._second = second

    def get_timestamp(self) -> int:
        return self._second


def test_a_new_session_begins_when_it_is_issued() -> None:
    signer = SessionSigner(SECRET)
    user, token = signer.issue(now=1_700_000_000.1234)
    assert signer.verify(token) == (user, 1_700_000_000.124)  # rounded up to the millisecond


def test_the_start_cannot_be_changed_without_the_secret() -> None:
    signer = SessionSigner(SECRET)
    user, token = signer.issue(now=1_700_000_000.0)
    signed_user, started_ms, signature = token.split(".", 2)
    assert (signed_user, started_ms) == (user, "1700000000000")
    assert signer.verify(f"{user}.1600000000000.{signature}") is None
    assert SessionSigner("another-secret").verify(token) is None


def test_a_cookie_from_before_sessions_had_a_start_counts_from_the_end_of_its_second() -> None:
    """Such a cookie was signed over the user id alone, with a timestamp in whole seconds: the
    session began at the latest at the end of that second, so it counts from there."""
    an_hour_ago = int(time.time()) - 3600
    old = _SignedAt(an_hour_ago, SECRET, salt="percolert.session").sign("someone").decode()
    assert SessionSigner(SECRET).verify(old) == ("someone", an_hour_ago + 1)


def test_a_start_that_is_not_a_number_is_no_session() -> None:
    forged = TimestampSigner(SECRET, salt="percolert.session").sign("someone.soon").decode()
    assert SessionSigner(SECRET).verify(forged) is None


def test_the_page_and_its_files_start_no_session(server: str) -> None:
    for path in ("/", "/static/app.js", "/openapi.json", "/healthz", "/no-such-page"):
        answer = httpx.get(f"{server}{path}", timeout=10)
        assert "set-cookie" not in answer.headers, path


def test_a_session_is_asked_for_once(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as browser:
        first = browser.post("/api/session", json={})
        assert first.status_code == 204
        assert COOKIE_NAME in first.cookies
        again = browser.post("/api/session", json={})
        assert again.status_code == 204
        assert "set-cookie" not in again.headers


@pytest.mark.anyio
async def test_the_socket_needs_a_session_started_over_http_first(server: str) -> None:
    """A handshake starts no session (a cookie set on it may be dropped): without one it is
    refused; with the one POST /api/session gave, the socket is greeted."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            server.replace("http://", "ws://") + "/ws", origin=Origin(server), open_timeout=10
        )
    assert refused.value.response.status_code == 403
    assert "set-cookie" not in refused.value.response.headers
    async with Shopper(server) as shopper:  # it asks as the page does
        socket = await shopper.connect()
        assert socket.hello["type"] == "hello"
