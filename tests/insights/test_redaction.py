"""A search's text as the search log keeps it: normalised, with what may name a person
replaced; the words a shop needs to see stay."""

from __future__ import annotations

import pytest

from percolert.insights.redaction import MAX_LENGTH, redacted


@pytest.mark.parametrize(
    ("typed", "kept"),
    [
        ("Kindle  Paperwhite", "kindle paperwhite"),
        ("\uff2b\uff29\uff2e\uff24\uff2c\uff25", "kindle"),  # full-width letters
        ("mail me at joe.bloggs@example.com", "mail me at [email]"),
        ("call +1 (555) 123-4567 please", "call [number] please"),
        ("card 4111 1111 1111 1111", "card [number]"),
        ("order 123456", "order [number]"),
        ("see https://evil.example/x?y=1 kindle", "see [link] kindle"),
        ("www.example.com/phish", "[link]"),
        ("bob\u0000\u200bsmith\n", "bob smith"),
        ("john @ example.com kindle", "[email] kindle"),
        ("john(at)example.com", "[email]"),
        ("call5551234567", "call [number]"),
        ("4111,1111,1111,1111", "[number]"),
        ("4111_1111_1111_1111", "[number]"),
        ("555 - 123 - 4567", "[number]"),
        ("card: 4111111111111111x", "card: [number] x"),
        ("iban de89370400440532013000", "iban [number]"),
        # Model numbers, sizes and years are what shoppers look for: they stay.
        ("Sony WH-1000XM5", "sony wh-1000xm5"),
        ("iphone 15 pro 256gb", "iphone 15 pro 256gb"),
        ("tv 55 inch 4k 2024", "tv 55 inch 4k 2024"),
        ("12345 lego", "12345 lego"),
    ],
)
def test_redacted(typed: str, kept: str) -> None:
    assert redacted(typed) == kept


def test_long_text_is_cut() -> None:
    assert len(redacted("word " * 100)) <= MAX_LENGTH
