"""What of a search text an alert may carry: product words stay, personal things go."""

from __future__ import annotations

import pytest

from percolert.core.redaction import MAX_ALERT_QUERY_LENGTH, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kindle for jane@example.com", "kindle for [email]"),
        ("gift for Jane.Doe+shop@mail.example.co.uk please", "gift for [email] please"),
        ("call me 555-123-4567 about the tv", "call me [number] about the tv"),
        ("+1 (555) 123-4567", "[number]"),
        ("+44 20 7946 0958 charger", "[number] charger"),
        ("order 123456789 headphones", "order [number] headphones"),
        ("card 4111 1111 1111 1111", "card [number]"),
        ("٠١٢٣٤٥٦٧٨٩ kindle", "[number] kindle"),  # Arabic-Indic digits are digits too
        ("see https://shop.example/cart?id=42 kindle", "see [link] kindle"),
        ("www.example.org/wishlist", "[link]"),
        ("example.com/u/jane kindle", "[link] kindle"),
        ("ftp://jane:secret@files.example", "[link]"),
        # Written to slip past a filter, or as copy-paste leaves it:
        ("iphone 4111\u00a01111\u00a01111\u00a01111", "iphone [number]"),  # no-break spaces
        ("iphone 4111\t1111   1111\u20091111", "iphone [number]"),  # tab, spaces, thin space
        ("card 4111 - 1111 - 1111 - 1111", "card [number]"),
        ("card 4111,1111,1111,1111", "card [number]"),
        ("card 4111_1111_1111_1111", "card [number]"),
        ("card 4111\u20131111\u20131111\u20131111", "card [number]"),  # en dashes
        ("card 4111\u200b1111\u200b1111\u200b1111", "card [number]"),  # zero-width spaces
        ("card \uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11", "card [number]"),  # fullwidth
        ("kindle for john @ gmail.com", "kindle for [email]"),
        ("kindle for john\uff20gmail.com", "kindle for [email]"),  # fullwidth at sign
    ],
)
def test_personal_things_are_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Kindle Paperwhite",
        "sony wh-1000xm5",
        "rtx 4090",
        "iphone 16 pro 256gb",
        "usb-c charger 65w",
        "samsung 990 pro 2tb",
        "ER-0001",
        "tv 2024 55 inch",
    ],
)
def test_product_words_and_model_numbers_stay(text: str) -> None:
    assert redact(text) == text


def test_whitespace_is_collapsed() -> None:
    assert redact("  kindle\n\tpaperwhite  ") == "kindle paperwhite"


def test_long_text_is_cut_with_an_ellipsis() -> None:
    text = "kindle " * 40
    cut = redact(text)
    assert len(cut) <= MAX_ALERT_QUERY_LENGTH
    assert cut.endswith("…")
    assert cut.startswith("kindle kindle")
    assert redact("a" * MAX_ALERT_QUERY_LENGTH) == "a" * MAX_ALERT_QUERY_LENGTH


@pytest.mark.parametrize(
    "text",
    [
        "kindle for jane@example.com",
        "call 555 123 4567 https://x.example/a",
        "ipad " * 50,
        "card 4111 - 1111 - 1111 - 1111",
        "john @ gmail.com",
    ],
)
def test_redacting_twice_changes_nothing_more(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
