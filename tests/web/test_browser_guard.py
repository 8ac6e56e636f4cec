"""Cross-site writes are refused and every response carries the security headers, against a
real server: changes need a JSON body and the shop's own page (Origin, else Sec-Fetch-Site)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from percolert.core.settings import Settings
from percolert.web.app import create_app
from percolert.web.middleware.security_headers import content_security_policy
from tests.servers import run_server
from tests.shoppers import Shopper

pytestmark = pytest.mark.anyio

PARTNER = "https://partner.example"


@pytest.fixture(scope="module")
def server(catalog_settings: Settings) -> Iterator[str]:
    with run_server(msgspec.structs.replace(catalog_settings, allowed_origins=(PARTNER,))) as url:
        yield url


async def _post(shopper: Shopper, headers: dict[str, str], body: bytes) -> httpx.Response:
    return await shopper.http.post("/api/watches", content=body, headers=headers)


JSON = {"content-type": "application/json"}
BODY = b'{"terms": "kindle"}'


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {"content-type": "application/jsonp"},
        {},
    ],
)
async def test_a_body_that_is_not_json_is_415(server: str, headers: dict[str, str]) -> None:
    async with Shopper(server) as a:
        own = {"origin": server, **headers}
        refused = await _post(a, own, BODY)
        assert refused.status_code == 415
        assert refused.json()["error"]["code"] == "unsupported_media_type"
        assert (await a.http.get("/api/watches")).json()["watches"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"origin": "http://127.0.0.1:1"},  # the same host on another port is another origin
        {"origin": "http://localhost"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # a sibling subdomain
        # Origin decides when present, whatever Sec-Fetch-Site says.
        {"origin": "http://evil.example", "sec-fetch-site": "same-origin"},
    ],
)
async def test_a_foreign_page_cannot_write(server: str, headers: dict[str, str]) -> None:
    async with Shopper(server) as a:
        watch = await a.watch("iphone")
        for body, content_type in ((BODY, JSON), (BODY, {"content-type": "text/plain"})):
            refused = await _post(a, {**headers, **content_type}, body)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["code"] == "forbidden_origin"
        removal = await a.http.delete(f"/api/watches/{watch['id']}", headers=headers)
        assert removal.status_code == 403
        listed = (await a.http.get("/api/watches")).json()["watches"]
        assert [item["id"] for item in listed] == [watch["id"]]
        await a.unwatch(watch["id"])


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "SERVER"},
        {"origin": "SERVER/"},
        {"origin": PARTNER},
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},
        {},  # no browser: curl, a script (see the README's security section)
    ],
)
async def test_the_own_page_and_allowed_origins_may_write(
    server: str, headers: dict[str, str]
) -> None:
    headers = {name: value.replace("SERVER", server) for name, value in headers.items()}
    async with Shopper(server) as a:
        created = await _post(
            a, {**headers, "content-type": "application/json; charset=utf-8"}, BODY
        )
        assert created.status_code == 201, created.text
        # A DELETE carries no body, so it needs no content type.
        removed = await a.http.delete(f"/api/watches/{created.json()['id']}", headers=headers)
        assert removed.status_code == 204, removed.text


async def test_a_delete_with_a_body_must_be_json(server: str) -> None:
    async with Shopper(server) as a:
        watch = await a.watch("kindle")
        refused = await a.http.request(
            "DELETE",
            f"/api/watches/{watch['id']}",
            content=b"x",
            headers={"origin": server, "content-type": "text/plain"},
        )
        assert refused.status_code == 415
        await a.unwatch(watch["id"])


def test_every_response_carries_the_security_headers(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    for path in ("/", "/static/app.js", "/api/watches", "/healthz", "/no-such-page"):
        response = httpx.get(f"{server}{path}", timeout=10)
        policy = response.headers["content-security-policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["connect-src"] == f"'self' ws://127.0.0.1:{port}"
        assert directives["frame-ancestors"] == "'none'"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"


def test_an_unexpected_error_is_a_500_with_the_security_headers_too(
    catalog_settings: Settings,
) -> None:
    """Starlette answers an unhandled exception outside every middleware of the app."""
    app = create_app(catalog_settings)

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    app.router.routes.append(Route("/broken", broken))
    with run_server(catalog_settings, app=app) as url:
        response = httpx.get(f"{url}/broken", timeout=10)
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_policy_names_the_socket_by_the_scheme_and_ignores_a_hostile_host() -> None:
    def scope(host: bytes, scheme: str) -> dict[str, object]:
        return {"type": "http", "scheme": scheme, "headers": [(b"host", host)]}

    assert "connect-src 'self' wss://shop.example;" in content_security_policy(
        scope(b"shop.example", "https")
    )
    assert "connect-src 'self' ws://[::1]:8000;" in content_security_policy(
        scope(b"[::1]:8000", "http")
    )
    hostile = content_security_policy(scope(b"x; script-src *", "http"))
    assert "connect-src 'self';" in hostile
    assert "*" not in hostile
