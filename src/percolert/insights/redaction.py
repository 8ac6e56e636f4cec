"""A search's text as the search log keeps it: normalised, so that "Kindle " and "kindle"
count together, and with what may identify a person replaced by a placeholder. Shoppers type
e-mail addresses, phone and card numbers, and links into search boxes; the demand view needs
what they looked for, never those.
"""

from __future__ import annotations

import re
import unicodedata

# The longest text kept: enough for any product search, not for a pasted document.
MAX_LENGTH = 100

_EMAIL = re.compile(r"\S+@\S+")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# Six digits or more, however they are spaced or dashed: phone, card, account and order
# numbers. Model numbers are letters and digits ("wh-1000xm5") and stay.
_LONG_NUMBER = re.compile(r"(?<![\w+])\+?(?:\d[\s()./-]{0,2}){6,}(?![\w])")
_SPACES = re.compile(r"\s+")


def redacted(text: str) -> str:
    """`text` casefolded, in Unicode's compatibility form, spaces collapsed, personal data
    replaced with `[email]`, `[link]` or `[number]`, cut to MAX_LENGTH characters."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in folded)
    folded = _URL.sub(" [link] ", folded)
    folded = _EMAIL.sub(" [email] ", folded)
    folded = _LONG_NUMBER.sub(" [number] ", folded)
    return _SPACES.sub(" ", folded).strip()[:MAX_LENGTH].rstrip()
