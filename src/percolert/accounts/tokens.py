"""Who a shop's token says its customer is: the JWT checked by PyJWT, never by hand.

A deployment takes one kind of key, so that no token can choose how it is checked: a shared
secret (HS256 only) or the shop's JWKS (RS256 or ES256, the algorithm the chosen key is
for). `alg: none`, an HS256 token signed with a public key, a key the JWKS lacks: each is
refused. `exp` and `sub` are required; `aud` and `iss` are checked when configured; `nbf`
and `iat` when present; clocks may differ by the configured leeway.
"""

from __future__ import annotations

import math
import time

import jwt
import msgspec

from percolert.accounts.ids import MAX_SUBJECT_LENGTH, account_user_id
from percolert.accounts.jwks import JwksKeys, JwksUnavailable
from percolert.core.fields import is_email, text_problem
from percolert.core.settings import Settings


class TokenRejected(Exception):
    """The token is not one to act on; the message says why (for the client: it names
    nothing secret)."""


class KeysUnavailable(TokenRejected):
    """The shop's keys cannot be read: the token may be fine (a 503 rather than a 401)."""


class Account(msgspec.Struct, frozen=True):
    """A verified token: the shop's customer (`subject`), their user id here, and when the
    token stops counting (epoch seconds, leeway included)."""

    subject: str
    user: str
    expires_at: float
    # The `email` claim, for e-mail to the customer when away (None: none, malformed, or
    # `email_verified` false).
    email: str | None = None


class Tokens:
    """Verifies the tokens of one deployment (`settings.accounts` must be true)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.accounts, "no jwt_secret nor jwks_url"
        self._secret = settings.jwt_secret
        self.jwks = JwksKeys(settings) if settings.jwks_url is not None else None
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str) -> Account:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise TokenRejected(f"not a JWT: {error}") from None
        key, algorithm = await self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRejected(f"the token has no `{error.claim}` claim") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("the token is from another issuer") from None
        except jwt.PyJWTError as error:
            raise TokenRejected(f"invalid token: {error}") from None
        return Account(
            subject=(subject := _subject(claims.get("sub"))),
            user=account_user_id(subject),
            expires_at=_expiry(claims["exp"]) + self._leeway,
            email=_email(claims),
        )

    async def _key_for(self, header: dict[str, object]) -> tuple[str | jwt.PyJWK, str]:
        algorithm = header.get("alg")
        # The header's values are the sender's: never repeated back (logs, headers).
        if self.jwks is None:
            if algorithm != "HS256":
                raise TokenRejected("the token must be signed with HS256")
            assert self._secret is not None
            return self._secret, "HS256"
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("the token names no key (`kid`)")
        try:
            key = await self.jwks.key(kid)
        except JwksUnavailable as error:
            raise KeysUnavailable(str(error)) from None
        if key is None:
            raise TokenRejected("the token names a key the shop does not publish")
        if algorithm != key.algorithm_name:
            raise TokenRejected(f"the token's key is for {key.algorithm_name}, not its `alg`")
        return key, key.algorithm_name


def _subject(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TokenRejected("the token's `sub` must be a non-empty string")
    if len(value) > MAX_SUBJECT_LENGTH:
        raise TokenRejected(f"the token's `sub` is longer than {MAX_SUBJECT_LENGTH} characters")
    problem = text_problem(value)
    if problem is not None:
        raise TokenRejected(f"the token's `sub` {problem}")
    return value


def _email(claims: dict[str, object]) -> str | None:
    """The customer's address from the `email` claim: a plain addr-spec (no display name,
    nothing a header could be bent with), unless the shop says it is not verified. A claim
    that is not an address is left out rather than refusing the token: e-mail is extra."""
    value = claims.get("email")
    if claims.get("email_verified") is False or not isinstance(value, str):
        return None
    return value if is_email(value) else None


# A token living longer than this is a mistake (or a forgery's way to a date no clock holds).
_LONGEST_LIFE_SECONDS = 366 * 24 * 3600


def _expiry(value: object) -> float:
    # PyJWT has checked that it is a number; a float NaN or infinity is not a moment.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected("the token's `exp` is not a time")
    if value > time.time() + _LONGEST_LIFE_SECONDS:
        raise TokenRejected("the token's `exp` is more than a year off: issue short-lived tokens")
    return float(value)
