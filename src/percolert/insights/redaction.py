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

# An address however it is spelled out: "a@b.c", "a @ b.c", "a(at)b.c", "a [at] b.c".
_EMAIL = re.compile(r"\S+\s*(?:@|\(at\)|\[at\])\s*\S+")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# Six digits or more, however they are spaced, dashed or glued to words ("call5551234567"):
# phone, card, account and order numbers. Model numbers have fewer digits in a row
# ("wh-1000xm5") and stay.
_LONG_NUMBER = re.compile(r"\+?\d(?:[\s().,_/-]{0,3}\d){5,}")
# An IBAN written without spaces (with them, its digits are a long number).
_IBAN = re.compile(r"\b[a-z]{2}\d{2}[a-z0-9]{10,30}\b")
_SPACES = re.compile(r"\s+")


def redacted(text: str) -> str:
    """`text` casefolded, in Unicode's compatibility form, spaces collapsed, personal data
    replaced with `[email]`, `[link]` or `[number]`, cut to MAX_LENGTH characters."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in folded)
    folded = _URL.sub(" [link] ", folded)
    folded = _EMAIL.sub(" [email] ", folded)
    folded = _IBAN.sub(" [number] ", folded)
    folded = _LONG_NUMBER.sub(" [number] ", folded)
    return _SPACES.sub(" ", folded).strip()[:MAX_LENGTH].rstrip()
