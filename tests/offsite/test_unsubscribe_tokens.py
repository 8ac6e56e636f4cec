"""Unsubscribe tokens: they read back as what they were made of, refuse any change, and carry
nothing of the shopper but the random id they were given."""

from __future__ import annotations

import base64
import secrets

import pytest

from percolert.offsite.unsubscribe import (
    TOKEN_MAX_LENGTH,
    BadUnsubscribeToken,
    UnsubscribeTarget,
    UnsubscribeTokens,
)

SECRET = "a-secret-of-the-deployment"


@pytest.mark.parametrize(
    "target",
    [
        UnsubscribeTarget("watch", "w-0123456789abcdef0123"),
        UnsubscribeTarget("all", "mk_Yp3Lq8sT2vR9wX1zA4bC"),
        UnsubscribeTarget("watch", "an.id.with.dots"),
    ],
)
def test_a_token_reads_back_as_its_target(target: UnsubscribeTarget) -> None:
    tokens = UnsubscribeTokens(SECRET)
    token = tokens.make(target)
    assert token.replace("-", "").replace("_", "").replace(".", "").isalnum()  # URL-safe
    assert len(token) < 128
    assert tokens.read(token) == target


def test_the_two_kinds_differ() -> None:
    tokens = UnsubscribeTokens(SECRET)
    watch = tokens.make(UnsubscribeTarget("watch", "same-id"))
    everything = tokens.make(UnsubscribeTarget("all", "same-id"))
    assert watch != everything
    assert tokens.read(everything).kind == "all"


def test_a_tampered_token_is_refused() -> None:
    tokens = UnsubscribeTokens(SECRET)
    token = tokens.make(UnsubscribeTarget("watch", "w-0123456789abcdef0123"))
    payload, signature = token.rsplit(".", 1)
    # Another watch's payload under this signature, and this payload under a changed one.
    other = base64.urlsafe_b64encode(b'"w.w-someone-elses-watch"').rstrip(b"=").decode()
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for forged in (f"{other}.{signature}", f"{payload}.{flipped}", token[:-1], token + "x"):
        with pytest.raises(BadUnsubscribeToken):
            tokens.read(forged)


def test_a_token_of_another_secret_is_refused() -> None:
    theirs = UnsubscribeTokens("another-deployment").make(UnsubscribeTarget("all", "key"))
    with pytest.raises(BadUnsubscribeToken):
        UnsubscribeTokens(SECRET).read(theirs)


@pytest.mark.parametrize(
    "garbage",
    ["", ".", "abc", "abc.def", "w.id", "é.ü", "\x00\n", "a" * 10_000, "a." * 400],
)
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(BadUnsubscribeToken):
        UnsubscribeTokens(SECRET).read(garbage)


def test_an_over_long_token_is_refused_before_its_signature_is_checked() -> None:
    tokens = UnsubscribeTokens(SECRET)
    # Random, so the serializer's compression cannot shrink it under the limit.
    with pytest.raises(ValueError, match="over 512"):
        tokens.make(UnsubscribeTarget("watch", secrets.token_urlsafe(TOKEN_MAX_LENGTH)))
    with pytest.raises(BadUnsubscribeToken, match="too long"):
        tokens.read("x" * (TOKEN_MAX_LENGTH + 1))


def test_a_value_signed_with_the_same_secret_but_not_a_target_is_refused() -> None:
    tokens = UnsubscribeTokens(SECRET)
    not_a_target = tokens.make(UnsubscribeTarget("watch", "x")).replace(
        base64.urlsafe_b64encode(b'"w.x"').rstrip(b"=").decode(), "bad"
    )
    with pytest.raises(BadUnsubscribeToken):
        tokens.read(not_a_target)


def test_a_token_holds_only_the_id_it_was_given() -> None:
    owner = "user-7c1e2f0a"  # the watch owner's user id, never given to the token
    target = UnsubscribeTarget("watch", "w-5d41402abc4b2a76b971")
    token = UnsubscribeTokens(SECRET).make(target)
    payload = token.rsplit(".", 1)[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert decoded == b'"w.w-5d41402abc4b2a76b971"'
    assert owner not in token
    assert owner.encode() not in decoded


def test_an_empty_secret_or_id_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        UnsubscribeTokens("")
    with pytest.raises(ValueError, match="id"):
        UnsubscribeTokens(SECRET).make(UnsubscribeTarget("all", ""))
