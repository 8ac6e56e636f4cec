"""The session cookie says who a browser is and when its session began — only the server
can say either."""

from __future__ import annotations

import time

from itsdangerous import TimestampSigner

from percolert.web.middleware.sessions import SessionSigner

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
