"""Tokens as a shop's backend would issue them, for the tests (PyJWT, as a shop might use)."""

from __future__ import annotations

import time
from typing import Any

import jwt

# A shared secret long enough for HS256 (settings refuse shorter ones).
SHOP_SECRET = "shop-secret-for-tests-0123456789abcdef"


def shop_token(
    subject: str,
    *,
    secret: str = SHOP_SECRET,
    expires_in: float | None = 300.0,
    **claims: Any,
) -> str:
    """An HS256 token for the shop's customer `subject`, expiring `expires_in` seconds from
    now (None: no `exp` at all); `claims` adds or overrides claims."""
    now = time.time()
    payload: dict[str, Any] = {"sub": subject, "iat": int(now)}
    if expires_in is not None:
        payload["exp"] = int(now + expires_in)
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
