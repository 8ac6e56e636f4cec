"""What stored text may hold: the one rule for products' one-line fields and their
descriptions, and the same rule as the pattern every decoder of a watch's category applies."""

from __future__ import annotations

import msgspec
import pytest

from percolert.core.fields import text_problem
from percolert.core.messages import Category, WatchSpec


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("audio\x1f0000000001", "may not contain U+001F, a control character Percolert uses"),
        ("a\x1eb", "may not contain U+001E, a control character Percolert uses"),
        ("tab\there", "may not contain U+0009, a control character (character 4)"),
        ("line\nbreak", "U+000A"),
        ("nul\x00", "U+0000"),
        ("del\x7f", "U+007F"),
        ("c1\x85", "U+0085, a control character"),
        ("para\u2029", "U+2029, a line or paragraph separator"),
        ("\u202egnp.exe", "U+202E, a bidirectional formatting character (character 1)"),
        ("isolate\u2066", "U+2066, a bidirectional formatting character"),
    ],
)
def test_one_line_values_refuse_controls_separators_and_bidi_formatting(
    value: str, reason: str
) -> None:
    problem = text_problem(value)
    assert problem is not None
    assert reason in problem


@pytest.mark.parametrize(
    "value", ["e-readers", "Kindle Paperwhite (16 GB)", "Café Crème", "אוזניות", "名前", "a\u200fb"]
)
def test_ordinary_text_of_any_script_is_taken(value: str) -> None:
    assert text_problem(value) is None
    assert text_problem(value, running_text=True) is None


def test_running_text_keeps_its_line_breaks_and_refuses_the_other_controls() -> None:
    assert text_problem("one\ttwo\r\nthree\u2028four \u202bRTL\u202c", running_text=True) is None
    for bad in ("\x1e", "\x1f", "\x00", "\x0b", "\x0c", "\x7f", "\x9f"):
        assert text_problem(f"text{bad}", running_text=True) is not None, repr(bad)


def test_a_watch_category_refuses_exactly_what_a_product_category_does() -> None:
    """`messages.Category` spells the rule out as a pattern (every decoder of a WatchSpec
    applies it): it must refuse the characters `core.fields` does, and only those."""
    differ = []
    for code in [*range(0x3000), 0xFEFF, 0x1F600]:
        character = chr(code)
        try:
            msgspec.convert(f"a{character}b", Category)
            refused = False
        except msgspec.ValidationError:
            refused = True
        if refused != (text_problem(character) is not None):
            differ.append(f"U+{code:04X}")
    assert not differ


def test_a_watch_spec_with_a_separator_in_its_category_names_the_field() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.category`"):
        msgspec.json.decode(
            b'{"terms": "headphones", "category": "audio\\u001f0000000001", "max_price": 5}',
            type=WatchSpec,
        )
