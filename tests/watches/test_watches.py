"""The watches domain's pure parts: ids, what makes two watches the same, and its refusals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from percolert.core.messages import WatchSpec
from percolert.core.text import TextNormalizer
from percolert.watches import store as watches
from percolert.watches.store import is_watch_id, meaning, watch_id
from percolert.web import errors


@pytest.mark.parametrize("owner", [None, "alice"])
def test_every_issued_id_is_recognised(owner: str | None) -> None:
    normalizer = TextNormalizer()
    for terms in ("kindle", "noise cancelling headphones", "ünïcödé 42", "a"):
        spec = WatchSpec(terms=terms)
        assert is_watch_id(watch_id(owner, normalizer.watch_tokens(terms, phrase=False), spec))


@pytest.mark.parametrize(
    "text",
    ["", "_search", "..", "w-", "w-" + "0" * 21, "W-" + "0" * 20, "w-" + "0" * 19 + "\n"],
)
def test_anything_else_is_not_an_id(text: str) -> None:
    assert not is_watch_id(text)


def test_meaning_ignores_order_and_repeats_except_in_a_phrase() -> None:
    def of(tokens: list[str], phrase: bool = False) -> tuple[object, ...]:
        return meaning(tokens, phrase=phrase, category=None, max_price=None)

    assert of(["dup", "watch"]) == of(["watch", "dup"]) == of(["watch", "dup", "dup"])
    assert of(["dup", "watch"], phrase=True) != of(["watch", "dup"], phrase=True)
    assert of(["dup", "watch"], phrase=True) != of(["dup", "watch"])
    assert of(["kindl"], phrase=True) == of(["kindl"])  # one word: the same query
    assert meaning(["a"], phrase=False, category="tv", max_price=None) != of(["a"])


def test_every_refusal_of_the_domain_has_one_http_status() -> None:
    kinds = set(watches.WatchError.__subclasses__())
    assert kinds == set(errors._WATCH_ERRORS)
    codes = [code for _, code in errors._WATCH_ERRORS.values()]
    assert len(set(codes)) == len(codes)


def test_the_domain_does_not_import_the_http_layer() -> None:
    tree = ast.parse(Path(watches.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not any(
        name and (name == "percolert.web.errors" or name.startswith("starlette"))
        for name in imported
    )
