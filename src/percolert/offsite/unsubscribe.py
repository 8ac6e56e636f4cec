"""One-click unsubscribe tokens: what an e-mail's unsubscribe link carries. A token names a
watch (its e-mail turns off) or an account's mail key (all its e-mail turns off), signed so
that nobody can forge one for another address; it names nothing else of the shopper.

Tokens never expire: RFC 8058 links must work for as long as the e-mail sits in an inbox.
Changing the secret invalidates every link already sent."""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec
from itsdangerous import BadData, URLSafeSerializer

# A token longer than this was not made here: refused before any work is spent on it.
TOKEN_MAX_LENGTH = 512

# Its own salt, so a value signed elsewhere with the same secret never reads as a token.
# Where the links lead, below the service's public address (web/unsubscribe.py serves it).
UNSUBSCRIBE_PATH = "/unsubscribe/"
_SALT = "percolert.offsite.unsubscribe"
_PREFIXES: dict[str, Literal["watch", "all"]] = {"w": "watch", "a": "all"}


class UnsubscribeTarget(msgspec.Struct, frozen=True):
    """`watch`: `id` is a watch id; `all`: `id` is an account's random mail key (opaque)."""

    kind: Literal["watch", "all"]
    id: str


class BadUnsubscribeToken(ValueError):
    """A token that was tampered with, signed with another secret, or is not a token."""


class UnsubscribeTokens:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the unsubscribe secret may not be empty")
        self._serializer = URLSafeSerializer(
            secret, salt=_SALT, signer_kwargs={"digest_method": hashlib.sha256}
        )

    def make(self, target: UnsubscribeTarget) -> str:
        """A URL-safe token for `target`: the compact payload `w.<id>` or `a.<id>`, signed."""
        if not target.id:
            raise ValueError("an unsubscribe target needs an id")
        token = self._serializer.dumps(f"{target.kind[0]}.{target.id}")
        if len(token) > TOKEN_MAX_LENGTH:
            # `read` would refuse it: better no link than one that never works.
            raise ValueError(f"the id makes a token over {TOKEN_MAX_LENGTH} characters")
        return token

    def read(self, token: str) -> UnsubscribeTarget:
        if len(token) > TOKEN_MAX_LENGTH:
            raise BadUnsubscribeToken("token too long")
        try:
            payload = self._serializer.loads(token)
        except BadData:
            raise BadUnsubscribeToken("bad signature or not a token") from None
        if not isinstance(payload, str):
            raise BadUnsubscribeToken("not an unsubscribe token")
        prefix, _, target_id = payload.partition(".")
        kind = _PREFIXES.get(prefix)
        if kind is None or not target_id:
            raise BadUnsubscribeToken("not an unsubscribe token")
        return UnsubscribeTarget(kind, target_id)
