"""Text normalisation: the same tokens for a watch and for a search that should match it."""

from __future__ import annotations

import pytest

from percolert.core.text import TextNormalizer


@pytest.fixture
def normalizer() -> TextNormalizer:
    return TextNormalizer()


@pytest.mark.parametrize(
    ("watch", "search"),
    [
        ("kindle", "KINDLE Paperwhite"),
        ("headphone", "Sony headphones!"),
        ("headphones", "headphone"),
        ("usb-c charger", "USB C chargers"),
        ("Café", "cafe latte"),
        ("battery", "batteries"),
        ("case for iphone", "iphone case"),
    ],
)
def test_watch_terms_occur_in_matching_searches(
    normalizer: TextNormalizer, watch: str, search: str
) -> None:
    assert set(normalizer.watch_tokens(watch, phrase=False)) <= set(normalizer.tokens(search))


@pytest.mark.parametrize(("watch", "search"), [("kindle", "kind"), ("ipad", "ipod")])
def test_different_words_stay_different(
    normalizer: TextNormalizer, watch: str, search: str
) -> None:
    assert not set(normalizer.watch_tokens(watch, phrase=False)) <= set(normalizer.tokens(search))


def test_stop_words_are_kept_for_phrases_and_when_nothing_else_is_left(
    normalizer: TextNormalizer,
) -> None:
    assert normalizer.watch_tokens("case for iphone", phrase=True) == ["case", "for", "iphon"]
    assert normalizer.watch_tokens("the who", phrase=False) == ["who"]
    assert normalizer.watch_tokens("to be or not", phrase=False) == ["not"]
    assert normalizer.watch_tokens("to be", phrase=False) == ["to", "be"]


def test_markup_and_symbols_are_only_words(normalizer: TextNormalizer) -> None:
    assert normalizer.tokens("<script>alert(1)</script>") == ["script", "alert", "1", "script"]
    assert normalizer.tokens("!!! ... ---") == []
