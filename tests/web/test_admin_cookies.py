"""The admin page's cookie: signed under the deployment's secret and the admin token, so a
new token (or none) ends every cookie signed before it; logged out, it ends for good."""

from __future__ import annotations

from percolert.web.admin_page import AdminCookies

SECRET = "a-deployment-secret-0123456789abcdef"


def test_a_new_admin_token_ends_the_cookies_of_the_old_one() -> None:
    cookie = AdminCookies(SECRET, "the-first-admin-token").issue()
    assert AdminCookies(SECRET, "the-first-admin-token").verify(cookie) is not None
    assert AdminCookies(SECRET, "the-second-admin-token").verify(cookie) is None
    assert AdminCookies(SECRET, None).verify(cookie) is None
    assert (
        AdminCookies("another-secret-0123456789abcdef", "the-first-admin-token").verify(cookie)
        is None
    )


def test_a_logged_out_cookie_is_refused_and_other_sessions_go_on() -> None:
    cookies = AdminCookies(SECRET, "the-admin-token-0123")
    cookie, other = cookies.issue(), cookies.issue()
    nonce = cookies.verify(cookie)
    assert nonce is not None
    cookies.revoke(nonce)
    assert cookies.verify(cookie) is None
    assert cookies.verify(other) is not None  # another admin's session goes on
