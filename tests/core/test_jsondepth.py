"""The nesting scan that guards every JSON decoder against recursion: the same depth as a
decoder would find, whatever the strings hold and however the document is cut into pieces."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from percolert.core.jsondepth import MAX_DEPTH, DepthScanner, TooDeep, check_depth

# Strings full of what the scan must skip: quotes, backslashes, brackets, and non-ASCII.
_TEXT = st.text(alphabet=st.sampled_from('ab"\\[]{}é\n\u2028'), max_size=8)
_DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=40,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def feed_all(scanner: DepthScanner, pieces: Iterable[bytes]) -> None:
    for piece in pieces:
        scanner.feed(piece)


def nested(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


def test_documents_up_to_the_bound_pass_and_deeper_ones_do_not() -> None:
    check_depth(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    check_depth(nested(MAX_DEPTH))
    with pytest.raises(TooDeep, match=f"deeper than {MAX_DEPTH} levels"):
        check_depth(b"[" * (MAX_DEPTH + 1))
    with pytest.raises(TooDeep):
        check_depth(nested(MAX_DEPTH + 1))


def test_what_made_the_decoder_recurse_is_refused_at_once() -> None:
    """The bodies that were a 500: 20,000 nested arrays, 6,000 nested objects."""
    for document in (b"[" * 20_000, b'{"a":' * 6_000):
        with pytest.raises(RecursionError):
            msgspec.json.decode(document)
        with pytest.raises(TooDeep):
            check_depth(document)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b'"' + b"[" * 100 + b'"', id="brackets in a string"),
        pytest.param(b'["\\"' + b"[" * 100 + b'"]', id="an escaped quote does not end it"),
        pytest.param(
            b'{"k\\\\": "' + b"{" * 100 + b'"}', id="an escaped backslash does not escape"
        ),
        pytest.param(b"]" * 100 + b"[" * MAX_DEPTH, id="closers too many count nothing"),
    ],
)
def test_what_a_string_holds_is_not_nesting(document: bytes) -> None:
    check_depth(document)


def test_an_escaped_backslash_before_the_closing_quote_ends_the_string() -> None:
    with pytest.raises(TooDeep):
        check_depth(b'["\\\\"' + b"[" * MAX_DEPTH)


@given(_DOCUMENTS, st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_the_depth_is_the_decoder_s_however_the_document_is_cut(
    value: Any, cuts: list[int]
) -> None:
    document = json.dumps(value, ensure_ascii=False).encode()
    depth = depth_of(value)
    for limit in (depth - 1, depth):
        if limit < 0:
            continue
        scanner = DepthScanner(limit)
        bounds = [0, *sorted(cut for cut in cuts if cut < len(document)), len(document)]
        pieces = [document[start:end] for start, end in itertools.pairwise(bounds)]
        if limit < depth:
            with pytest.raises(TooDeep):
                feed_all(scanner, pieces)
        else:
            feed_all(scanner, pieces)


def test_a_document_fed_a_byte_at_a_time() -> None:
    document = b'{"a": "x\\"[[[[", "b": [[["\\\\"]]], "c": {"d": [' + b"[" * 40
    bytes_of = [bytes([byte]) for byte in document]
    with pytest.raises(TooDeep):
        feed_all(DepthScanner(MAX_DEPTH), bytes_of)
    feed_all(DepthScanner(5), bytes_of[: document.index(b"[" * 40)])
