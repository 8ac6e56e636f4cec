"""What stored text may hold: the characters refused in the text fields of products (and, by
the same rule written as a msgspec pattern, in a watch's category: `messages.Category`).

Percolert builds keywords out of stored text with characters of its own: a category and a
price are one keyword `category U+001F cents` (`watches.store.category_price`), a product's
fields one text split on U+001E (`watches.percolator.FIELD_SEPARATOR`). A stored value holding
either forges what the keyword means: a category `audio U+001F 0000000001` sorts among the
audio prices under $0.02, so a watch on cheap audio fires for any price. Those two are C0
control characters, and nothing a shop types needs any control character in a one-line
value; one-line values (sku, name, brand, category) are also shown in lists and alerts, where
a line or paragraph separator breaks the line and a bidirectional embedding, override or
isolate reorders what follows it (a "Trojan Source" spoof). A description is running text:
tab and line breaks are its own, and so are the Unicode separators and bidi formatting that
right-to-left writing may use; its other control characters are refused all the same.
"""

from __future__ import annotations

import re

# C0 controls (U+001E and U+001F, Percolert's separators, among them), DEL and the C1 controls.
_CONTROLS = "\x00-\x1f\x7f-\x9f"
# Line and paragraph separators; bidi embeddings and overrides (U+202A-E), isolates (U+2066-9).
_LAYOUT = "\u2028\u2029\u202a-\u202e\u2066-\u2069"
# The character class a one-line value may not hold; `messages.Category`'s pattern is built
# from it.
ONE_LINE_FORBIDDEN = _CONTROLS + _LAYOUT

_ONE_LINE = re.compile(f"[{ONE_LINE_FORBIDDEN}]")
# Running text keeps tab, line feed and carriage return.
_RUNNING_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def text_problem(value: str, *, running_text: bool = False) -> str | None:
    """Why `value` may not be stored (`may not contain U+001F, ...`), None if it may.
    `running_text`: a description's rules rather than a one-line value's."""
    found = (_RUNNING_TEXT if running_text else _ONE_LINE).search(value)
    if found is None:
        return None
    character = found.group()
    return (
        f"may not contain U+{ord(character):04X}, {_kind(character)} "
        f"(character {found.start() + 1})"
    )


def _kind(character: str) -> str:
    if character in "\x1e\x1f":
        return "a control character Percolert uses as a separator"
    if character in "\u2028\u2029":
        return "a line or paragraph separator"
    if character > "\x9f":
        return "a bidirectional formatting character"
    return "a control character"


# An e-mail address as Percolert takes one (a token's `email` claim, the admin API): a plain
# addr-spec of at most 254 characters (RFC 5321's longest path), with no display name, no
# quoting or comment, and none of the characters above: nothing a header could be bent with.
EMAIL_MAX_LENGTH = 254
_ADDRESS_PART = f'[^@\\s<>"(),;:\\[\\]\\\\{ONE_LINE_FORBIDDEN}]+'
EMAIL_PATTERN = f"^{_ADDRESS_PART}@{_ADDRESS_PART}\\.{_ADDRESS_PART}$"
_EMAIL = re.compile(EMAIL_PATTERN)


def is_email(text: str) -> bool:
    return len(text) <= EMAIL_MAX_LENGTH and _EMAIL.fullmatch(text) is not None
