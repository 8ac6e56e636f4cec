"""A tiny shop on its own origin that embeds Percolert: its own login, a backend that vouches
for its logged-in customer with a JWT, and the SDK's components on its pages.

What a real shop does the same way:
- its customers log in with the shop (here: any name, no password — a demo);
- its backend signs a short-lived JWT for the customer (`sub` = the shop's customer id,
  `email` = their address, for alerts while they are away; `exp`, `aud`) with a private key,
  and publishes the public keys as a JWKS (`/.well-known/jwks.json`), which Percolert reads
  (`PERCOLERT_JWKS_URL`);
- its pages load the SDK and give it a `getToken` callback that asks the backend (`/token`).

Run: `python examples/shop/shop.py --port 8001 --percolert http://127.0.0.1:8000`, with
Percolert started with PERCOLERT_JWKS_URL=http://127.0.0.1:8001/.well-known/jwks.json,
PERCOLERT_JWKS_ALLOW_HTTP=true (a plain-http JWKS: development only),
PERCOLERT_JWT_AUDIENCE=percolert and PERCOLERT_ALLOWED_ORIGINS=http://127.0.0.1:8001.
`percolert up --shop` does all of that.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).resolve().parent
AUDIENCE = "percolert"
COOKIE = "shop_session"
# Shops' customer ids here are names; a real shop's are its account ids.
MAX_NAME = 40


def address_of(name: str) -> str:
    """The customer's e-mail address. A real shop has it from the sign-up; this one makes
    it from the name, at example.com, a domain reserved for examples (RFC 2606)."""
    local = re.sub(r"[^a-z0-9]+", ".", name.lower()).strip(".")
    return f"{local or 'customer'}@example.com"


class SigningKeys:
    """The shop's RSA keys: the newest signs; the previous stays published until tokens it
    signed have expired (a rotation)."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.rotate()

    def rotate(self) -> str:
        kid = f"shop-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = [(kid, key), *self.keys[:1]]
        return kid

    def jwks(self) -> dict[str, Any]:
        published = []
        for kid, key in self.keys:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig", alg="RS256")
            published.append(jwk)
        return {"keys": published}

    def sign(self, customer: str, seconds: float) -> tuple[str, float]:
        kid, key = self.keys[0]
        expires_at = time.time() + seconds
        claims = {
            "sub": customer,
            # Where Percolert mails the customer's alerts while they are away. A shop with an
            # address it has not confirmed adds `"email_verified": False`, and none is sent.
            "email": address_of(customer),
            "aud": AUDIENCE,
            "iat": int(time.time()),
            "exp": int(expires_at),
        }
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid}), expires_at


def create_shop(percolert_url: str, *, token_seconds: float = 600.0) -> Starlette:
    """The shop's app; `percolert_url`: where its pages load the SDK and talk to Percolert."""
    keys = SigningKeys()
    sessions = URLSafeTimedSerializer(secrets.token_hex(32), salt="shop.session")
    page = (HERE / "index.html").read_text(encoding="utf-8")
    percolert = percolert_url.rstrip("/")

    def session(request: Request) -> dict[str, Any]:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return {}
        try:
            value = sessions.loads(raw, max_age=7 * 24 * 3600)
        except BadSignature:
            return {}
        return value if isinstance(value, dict) and isinstance(value.get("name"), str) else {}

    def customer(request: Request) -> str | None:
        name = session(request).get("name")
        return name if isinstance(name, str) else None

    def set_session(response: Response, name: str, *, merge: bool) -> None:
        value = sessions.dumps({"name": name, "merge": merge})
        response.set_cookie(COOKIE, value, httponly=True, samesite="lax")

    async def index(request: Request) -> Response:
        current = session(request)
        name = customer(request)
        # Once, on the page right after a login: this browser's anonymous watches move into
        # the account then (a flag of the session, not of the URL, which anyone can link).
        merge = bool(current.get("merge"))
        filled = (
            page.replace("{{PERCOLERT_URL}}", html.escape(percolert, quote=True))
            # Inside a script element, where HTML escapes are not read: JSON, "<" escaped.
            .replace("{{SDK_URL}}", json.dumps(f"{percolert}/static/sdk/").replace("<", "\\u003c"))
            .replace("{{CUSTOMER}}", html.escape(name or "", quote=True))
            .replace("{{MERGE}}", "1" if merge else "")
        )
        response = HTMLResponse(filled, headers={"Cache-Control": "no-store"})
        if merge and name is not None:
            set_session(response, name, merge=False)
        return response

    def same_origin(request: Request) -> bool:
        """A login only from the shop's own page: another site's form must not log a
        visitor in as someone else (whose account would then get their watches)."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site == "same-origin"
        origin = request.headers.get("origin")
        return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"

    async def login(request: Request) -> Response:
        if not same_origin(request):
            return JSONResponse({"error": "log in from the shop's own page"}, status_code=403)
        # A form post, url-encoded (the standard library reads it: no multipart here).
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        name = (form.get("name") or [""])[0].strip()
        if not name or len(name) > MAX_NAME or not name.isprintable():
            return RedirectResponse("/?error=name", status_code=303)
        response = RedirectResponse("/", status_code=303)
        set_session(response, name, merge=True)
        return response

    async def logout(request: Request) -> Response:
        if not same_origin(request):
            return JSONResponse({"error": "log out from the shop's own page"}, status_code=403)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def token(request: Request) -> Response:
        # Same-origin only (no CORS here): another site's page cannot read a token.
        name = customer(request)
        if name is None:
            return JSONResponse({"error": "not logged in"}, status_code=401)
        signed, expires_at = keys.sign(name, token_seconds)
        return JSONResponse(
            {"token": signed, "expires_at": expires_at}, headers={"Cache-Control": "no-store"}
        )

    async def jwks(request: Request) -> Response:
        return JSONResponse(keys.jwks(), headers={"Cache-Control": "max-age=60"})

    async def rotate(request: Request) -> Response:
        # Development only: the example shows a rotation; a real shop rotates on its own.
        if request.client is None or request.client.host not in ("127.0.0.1", "::1"):
            return JSONResponse({"error": "local only"}, status_code=403)
        return JSONResponse({"kid": keys.rotate()})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/token", token),
            Route("/.well-known/jwks.json", jwks),
            Route("/admin/rotate-key", rotate, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--percolert", default="http://127.0.0.1:8000", help="Percolert's URL")
    parser.add_argument("--token-seconds", type=float, default=600.0)
    args = parser.parse_args()
    app = create_shop(args.percolert, token_seconds=args.token_seconds)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
