"""How deeply a JSON document nests, found without decoding it.

msgspec decodes nested arrays and objects by recursion: a few thousand `[` (a 4 KiB body)
exhaust Python's recursion limit and it raises RecursionError, not a DecodeError. The
documents Percolert takes (watches, products, catalog lines) nest two or three levels, so
anything deeper than `MAX_DEPTH` is refused before a decoder sees it.

The scan is linear and keeps only its state (depth, inside a string or not, a pending
escape), so a document can be fed in pieces as it arrives. Strings are skipped with their
escapes, then only brackets count; both steps run in C (a regular expression, `translate`,
`accumulate`), about a millisecond for 64 KiB of brackets. Whether the document is valid
JSON is the decoder's to say: the scan only counts.
"""

from __future__ import annotations

import re
from itertools import accumulate

# Far more than any document Percolert takes, far less than what makes a decoder recurse
# into trouble.
MAX_DEPTH = 32

# A whole string, escapes included; and the rest of one begun in an earlier piece.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRING_END = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_STEP = [0] * 256
for _opener in b"[{":
    _STEP[_opener] = 1
for _closer in b"]}":
    _STEP[_closer] = -1


class TooDeep(ValueError):
    """A JSON document nests arrays and objects deeper than `limit` levels."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"nested deeper than {limit} levels of arrays and objects")
        self.limit = limit


def _escapes_next(string_part: bytes) -> bool:
    """Whether a piece of a string ends with a backslash that escapes what follows."""
    return (len(string_part) - len(string_part.rstrip(b"\\"))) % 2 == 1


class DepthScanner:
    """Follows one JSON document fed in pieces (`feed`), raising TooDeep as soon as a piece
    takes it deeper than `limit`."""

    __slots__ = ("_depth", "_escaped", "_in_string", "limit")

    def __init__(self, limit: int = MAX_DEPTH) -> None:
        self.limit = limit
        self._depth = 0
        self._in_string = False
        # The previous piece ended inside a string with a backslash: the next byte is escaped.
        self._escaped = False

    def feed(self, piece: bytes) -> None:
        start = 0
        if self._in_string:
            if self._escaped:
                if not piece:
                    return
                start, self._escaped = 1, False
            end = _STRING_END.match(piece, start)
            if end is None:  # the string goes on past this piece
                self._escaped = _escapes_next(piece[start:])
                return
            start, self._in_string = end.end(), False
        outside = _STRING.sub(b"", piece[start:])
        # A quote left over begins a string that goes on past this piece (any quote after it
        # is escaped, else it would have ended the string).
        quote = outside.find(b'"')
        if quote >= 0:
            self._in_string = True
            self._escaped = _escapes_next(outside[quote + 1 :])
            outside = outside[:quote]
        brackets = outside.translate(None, _NOT_BRACKETS)
        if not brackets:
            return
        opened = brackets.count(b"[") + brackets.count(b"{")
        # The deepest point is looked for only when the openers alone could pass the limit.
        if self._depth + opened > self.limit and (
            max(accumulate(map(_STEP.__getitem__, brackets), initial=self._depth)) > self.limit
        ):
            raise TooDeep(self.limit)
        # One closer too many is invalid JSON, the decoder's to report; the count stays at 0.
        self._depth = max(0, self._depth + 2 * opened - len(brackets))


def check_depth(document: bytes, limit: int = MAX_DEPTH) -> None:
    """Raise TooDeep if `document` nests deeper than `limit` levels."""
    DepthScanner(limit).feed(document)
