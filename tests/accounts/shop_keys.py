"""A shop's signing keys and the JWKS endpoint it publishes them at: a real HTTP server on
loopback (plain http, which the settings allow only with PERCOLERT_JWKS_ALLOW_HTTP)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.servers import QuietHandler, http_server


class ShopKey:
    """One private key of the shop's, named `kid`; RS256 or ES256."""

    def __init__(self, kid: str, algorithm: str = "RS256") -> None:
        self.kid = kid
        self.algorithm = algorithm
        self.private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if algorithm == "RS256"
            else ec.generate_private_key(ec.SECP256R1())
        )

    def public_jwk(self) -> dict[str, Any]:
        if isinstance(self.private, rsa.RSAPrivateKey):
            jwk: dict[str, Any] = json.loads(
                jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key())
            )
        else:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig", alg=self.algorithm)
        return jwk

    def token(self, subject: str, *, expires_in: float = 300.0, **claims: Any) -> str:
        now = time.time()
        payload = {"sub": subject, "iat": int(now), "exp": int(now + expires_in), **claims}
        return jwt.encode(
            payload, self.private, algorithm=self.algorithm, headers={"kid": self.kid}
        )


class JwksEndpoint:
    """What the shop's JWKS URL serves: `keys` (changed to rotate), or 503 while `down`.
    `reads` counts the requests it answered or refused."""

    def __init__(self) -> None:
        self.keys: list[ShopKey] = []
        # Entries published besides the keys (of other uses, or malformed).
        self.extra: list[dict[str, Any]] = []
        # Sent in pieces of this many bytes, each flushed, a moment apart (a slow network).
        self.piece: int | None = None
        self.down = False
        self.reads = 0
        self.url = ""


@contextmanager
def jwks_server(endpoint: JwksEndpoint) -> Iterator[JwksEndpoint]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            endpoint.reads += 1
            if endpoint.down:
                self.send_response(503)
                self.end_headers()
                return
            keys = [*endpoint.extra, *(key.public_jwk() for key in endpoint.keys)]
            body = json.dumps({"keys": keys}).encode()
            if endpoint.piece is None:
                self.reply(body, "application/json")
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            for start in range(0, len(body), endpoint.piece):
                self.wfile.write(body[start : start + endpoint.piece])
                self.wfile.flush()
                time.sleep(0.002)

    with http_server(Handler) as url:
        endpoint.url = f"{url}/.well-known/jwks.json"
        yield endpoint
