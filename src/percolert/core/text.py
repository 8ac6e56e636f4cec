"""Text normalisation shared by watches and search events, done in the application.

Both sides of a percolation go through the same function: lower-cased, accents folded,
split into words, each word stemmed with the Snowball English stemmer ("headphones" and
"Headphone" both become "headphon"). Doing this here rather than in an Elasticsearch analyzer
makes matching identical on the 7.17 dev node (which has no stemmers) and on real clusters,
and lets watches be stored as plain term conjunctions, which the percolator pre-selects by
their terms alone.
"""

from __future__ import annotations

import re
import unicodedata

import snowballstemmer

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")

# Small English function words: dropped from a watch's terms (so "case for iphone" matches
# a search for "iphone case") unless nothing else is left. Phrase watches keep them.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
    ]
)

_CACHE_LIMIT = 100_000


class TextNormalizer:
    """Turns text into stemmed tokens. Holds a stemmer and a cache; one per process."""

    def __init__(self) -> None:
        self._stemmer = snowballstemmer.stemmer("english")
        self._stems: dict[str, str] = {}

    def words(self, text: str) -> list[str]:
        if text.isascii():
            # Nothing to fold: the per-character pass below was most of a bulk watch load's
            # client time (docs/benchmarks/watch-load.md).
            return _WORD.findall(text.lower())
        folded = unicodedata.normalize("NFKD", text.casefold())
        plain = "".join(char for char in folded if not unicodedata.combining(char))
        return _WORD.findall(plain)

    def _stem(self, word: str) -> str:
        stem = self._stems.get(word)
        if stem is None:
            stem = str(self._stemmer.stemWord(word))
            if len(self._stems) >= _CACHE_LIMIT:
                self._stems.clear()
            self._stems[word] = stem
        return stem

    def tokens(self, text: str) -> list[str]:
        """Every word of `text`, stemmed, in order (search text for percolation)."""
        return [self._stem(word) for word in self.words(text)]

    def watch_tokens(self, text: str, *, phrase: bool) -> list[str]:
        """The tokens a watch requires: stop words dropped unless a phrase or all stop words."""
        words = self.words(text)
        if not phrase:
            content = [word for word in words if word not in STOP_WORDS]
            words = content or words
        return [self._stem(word) for word in words]
