"""Shops' tokens checked as a deployment would: a shared secret (HS256) or the shop's JWKS
served over real HTTP; every refusal the accounts feature promises."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization

from percolert.accounts.ids import account_user_id, is_account
from percolert.accounts.tokens import KeysUnavailable, TokenRejected, Tokens
from percolert.core.settings import Settings, SettingsError, from_environment
from tests.accounts.shop_keys import JwksEndpoint, ShopKey, jwks_server
from tests.accounts.tokens import SHOP_SECRET, shop_token

pytestmark = pytest.mark.anyio

HS256 = Settings(jwt_secret=SHOP_SECRET)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def handmade(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token put together by hand, as an attacker would (PyJWT refuses to sign these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{_b64(signature)}"


def claims(subject: str = "customer-1", expires_in: float = 300) -> dict[str, Any]:
    return {"sub": subject, "exp": int(time.time() + expires_in)}


async def test_a_valid_token_names_the_account_by_a_derived_id() -> None:
    account = await Tokens(HS256).verify(shop_token("jane@example.com"))
    assert account.subject == "jane@example.com"
    assert account.user == account_user_id("jane@example.com")
    assert is_account(account.user)
    assert "jane" not in account.user
    assert account.expires_at > time.time() + 250


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (shop_token("c", expires_in=-120), "expired"),
        (shop_token("c", expires_in=None), "`exp`"),
        (jwt.encode({"exp": int(time.time()) + 60}, SHOP_SECRET, algorithm="HS256"), "`sub`"),
        (shop_token("c", secret="another-shop-secret-0123456789abcdef"), "Signature"),
        (handmade({"alg": "none", "typ": "JWT"}, claims(), None), "HS256"),
        (handmade({"alg": "HS512", "typ": "JWT"}, claims(), SHOP_SECRET.encode()), "HS256"),
        (shop_token("c", nbf=int(time.time()) + 600), "not yet valid"),
        (shop_token("c", expires_in=400 * 24 * 3600), "more than a year"),
        (shop_token(""), "`sub`"),
        (shop_token("x" * 256), "longer"),
        (shop_token("evil\u202eadmin"), r"U\+202E"),
        ("not.a.token", "not a JWT"),
    ],
    ids=[
        "expired",
        "no-exp",
        "no-sub",
        "other-secret",
        "alg-none",
        "hs512",
        "not-yet",
        "far-exp",
        "empty-sub",
        "long-sub",
        "bidi-sub",
        "garbage",
    ],
)
async def test_refused_tokens_say_why(token: str, why: str) -> None:
    with pytest.raises(TokenRejected, match=why):
        await Tokens(HS256).verify(token)


async def test_the_leeway_covers_a_clock_a_little_behind() -> None:
    tokens = Tokens(msgspec.structs.replace(HS256, jwt_leeway_seconds=30))
    await tokens.verify(shop_token("c", expires_in=-10))
    with pytest.raises(TokenRejected, match="expired"):
        await tokens.verify(shop_token("c", expires_in=-60))


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    tokens = Tokens(msgspec.structs.replace(HS256, jwt_audience="percolert", jwt_issuer="shop"))
    await tokens.verify(shop_token("c", aud=["storefront", "percolert"], iss="shop"))
    for token, why in [
        (shop_token("c", aud="another-service", iss="shop"), "another audience"),
        (shop_token("c", iss="shop"), "`aud`"),
        (shop_token("c", aud="percolert", iss="someone-else"), "another issuer"),
        (shop_token("c", aud="percolert"), "`iss`"),
    ]:
        with pytest.raises(TokenRejected, match=why):
            await tokens.verify(token)
    # Not configured: a token's audience is the shop's business.
    await Tokens(HS256).verify(shop_token("c", aud="anything"))


@pytest.fixture
def shop() -> Iterator[JwksEndpoint]:
    with jwks_server(JwksEndpoint()) as endpoint:
        endpoint.keys = [ShopKey("2026-11", "RS256"), ShopKey("ec-1", "ES256")]
        yield endpoint


@asynccontextmanager
async def jwks_tokens(shop: JwksEndpoint, **changes: Any) -> AsyncIterator[Tokens]:
    """Tokens checked against the shop's JWKS (its HTTP session closed afterwards)."""
    tokens = Tokens(Settings(jwks_url=shop.url, jwks_allow_http=True, **changes))
    try:
        yield tokens
    finally:
        await tokens.close()


async def test_jwks_keys_are_chosen_by_kid_for_rs256_and_es256(shop: JwksEndpoint) -> None:
    async with jwks_tokens(shop) as tokens:
        for key in shop.keys:
            account = await tokens.verify(key.token("customer-7"))
            assert account.user == account_user_id("customer-7")
        assert shop.reads == 1  # one read serves every key it holds


async def test_jwks_refusals(shop: JwksEndpoint) -> None:
    async with jwks_tokens(shop, jwks_reads_per_minute=2) as tokens:
        rsa_key = shop.keys[0]
        public_pem = rsa_key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        refused = [
            # HS/RS confusion: the public key used as an HMAC secret, under the RSA key's kid.
            (handmade({"alg": "HS256", "kid": rsa_key.kid}, claims(), public_pem), "RS256"),
            # alg none under a real kid.
            (handmade({"alg": "none", "kid": rsa_key.kid}, claims(), None), "RS256"),
            # An ES256 key's kid on a token claiming RS256 (signed by the RSA key).
            (
                jwt.encode(claims(), rsa_key.private, algorithm="RS256", headers={"kid": "ec-1"}),
                "ES256",
            ),
            # A kid the shop never published (the set read again for it).
            (ShopKey("forged", "RS256").token("c"), "does not publish"),
            # No kid at all.
            (jwt.encode(claims(), rsa_key.private, algorithm="RS256"), "no key"),
            # A shared-secret token at a JWKS deployment.
            (shop_token("c"), "no key"),
        ]
        for token, why in refused:
            with pytest.raises(TokenRejected, match=why):
                await tokens.verify(token)
        # The first read, and one more for the unknown kid: two a minute, here. Another
        # unknown kid is not read for: the shop may have rotated, so not a refusal but a
        # "try again" (503, or 1013 on a socket).
        with pytest.raises(KeysUnavailable, match="2 reads"):
            await tokens.verify(ShopKey("forged-2", "RS256").token("c"))
        assert shop.reads == 2


async def test_rotation_new_keys_are_fetched_old_tokens_work_until_they_expire(
    shop: JwksEndpoint,
) -> None:
    async with jwks_tokens(shop, jwt_leeway_seconds=0) as tokens:
        old_key = shop.keys[0]
        old_token = old_key.token("customer-1", expires_in=3)
        expires_at = jwt.decode(old_token, options={"verify_signature": False})["exp"]
        await tokens.verify(old_token)
        # The shop publishes a new key beside the old one and signs with the new one.
        new_key = ShopKey("2026-12", "RS256")
        shop.keys = [old_key, new_key]
        await tokens.verify(new_key.token("customer-1"))
        await tokens.verify(old_token)
        # Once its tokens have expired, the old key is retired.
        shop.keys = [new_key]
        while time.time() < expires_at:
            await anyio.sleep(0.05)
        with pytest.raises(TokenRejected, match="expired"):
            await tokens.verify(old_token)
        await tokens.verify(new_key.token("customer-1"))


async def test_a_large_set_with_entries_of_no_use_is_read_whole(shop: JwksEndpoint) -> None:
    """Encryption keys, a malformed entry, a shared secret: skipped, and the set, over
    100 KB arriving in pieces, is read to its end."""
    padding = "A" * 4000
    shop.extra = [
        *(
            {"kid": f"enc-{n}", "use": "enc", "kty": "RSA", "n": padding, "e": "AQAB"}
            for n in range(25)
        ),
        {"kid": "broken", "kty": "RSA", "alg": ["RS256"], "n": "x", "e": "AQAB"},
        {"kid": "secret", "kty": "oct", "k": "c2VjcmV0"},
    ]
    shop.piece = 4096
    async with jwks_tokens(shop) as tokens:
        await tokens.verify(shop.keys[0].token("customer-1"))
        with pytest.raises(TokenRejected, match="does not publish"):
            await tokens.verify(handmade({"alg": "HS256", "kid": "secret"}, claims(), b"secret"))


async def test_an_outage_keeps_the_keys_read_before(shop: JwksEndpoint) -> None:
    async with jwks_tokens(shop) as tokens:
        token = shop.keys[0].token("customer-1")
        await tokens.verify(token)
        shop.down = True
        assert tokens.jwks is not None
        with pytest.raises(TokenRejected, match="does not publish"):
            await tokens.verify(ShopKey("new", "RS256").token("c"))  # a read, refused with 503
        assert tokens.jwks.failures == 1
        await tokens.verify(token)  # still known


async def test_keys_never_read_are_unavailable_rather_than_the_token_invalid(
    shop: JwksEndpoint,
) -> None:
    shop.down = True
    async with jwks_tokens(shop) as tokens:
        with pytest.raises(KeysUnavailable):
            await tokens.verify(shop.keys[0].token("c"))


@pytest.mark.parametrize(
    ("environ", "why"),
    [
        ({"PERCOLERT_JWKS_URL": "http://shop.example/jwks.json"}, "https"),
        ({"PERCOLERT_JWKS_URL": "ftp://shop.example/jwks.json"}, "https"),
        ({"PERCOLERT_JWT_SECRET": "short"}, "32 bytes"),
        (
            {"PERCOLERT_JWT_SECRET": SHOP_SECRET, "PERCOLERT_JWKS_URL": "https://s.example/j"},
            "not both",
        ),
    ],
)
def test_settings_refuse_unsafe_key_sources(environ: dict[str, str], why: str) -> None:
    with pytest.raises(SettingsError, match=why):
        from_environment(environ)


def test_plain_http_jwks_only_when_allowed_for_development() -> None:
    settings = from_environment(
        {"PERCOLERT_JWKS_URL": "http://127.0.0.1:9/jwks.json", "PERCOLERT_JWKS_ALLOW_HTTP": "1"}
    )
    assert settings.accounts
    assert settings.jwks_url == "http://127.0.0.1:9/jwks.json"
    assert not from_environment({}).accounts
