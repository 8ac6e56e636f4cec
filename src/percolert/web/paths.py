"""Where a request goes, as the app's routes see it."""

from __future__ import annotations

from starlette.types import Scope

from percolert.offsite.unsubscribe import UNSUBSCRIBE_PATH

# Where a session begins: the page asks here before its first API call and its socket.
SESSION_PATH = "/api/session"
# Everything under it works for a session: a request without one is given one there.
API_PREFIX = "/api/"
# The JavaScript SDK's modules, which the shop's storefronts may load.
SDK_PREFIX = "/static/sdk/"
# For the load balancer and the scraper: behind PERCOLERT_METRICS_TOKEN.
MONITORING_PATHS = frozenset({"/metrics", "/readyz"})
# Where the SDK says an alert was followed to the shop (web/insights_api.py).
VISITS_PATH = "/api/alerts/visits"
# A Centrifugo connection token for the caller (web/realtime_api.py).
REALTIME_TOKEN_PATH = "/api/realtime/token"  # noqa: S105 (a path, not a password)
# The admin's demand page, and its API behind the page's cookie (web/admin_page.py).
ADMIN_PAGE_PATH = "/admin"
ADMIN_PAGE_API_PREFIX = "/admin/api/"
# The admin API's accounts, by the shop's customer id: personal data (an e-mail address,
# say), which logs never show.
ACCOUNTS_PREFIX = "/api/admin/accounts/"
# An account's e-mail preferences (web/offsite_api.py).
PREFERENCES_PATH = "/api/me/preferences"
# E-mail's unsubscribe links: the token in them turns e-mail off, which logs never show.
UNSUBSCRIBE_PREFIX = UNSUBSCRIBE_PATH


def route_path(scope: Scope) -> str:
    """The path the app's routes match on: below its mount point (`root_path`), if any."""
    return str(scope["path"]).removeprefix(scope.get("root_path", ""))


def loggable_path(scope: Scope) -> str:
    """The request's path as logs show it: a shop's customer id left out."""
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    for prefix, hidden in ((ACCOUNTS_PREFIX, "{customer_id}"), (UNSUBSCRIBE_PREFIX, "{token}")):
        if path.startswith(root + prefix):
            return root + prefix + hidden
    return path
