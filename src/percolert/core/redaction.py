"""What of a shopper's search text may reach other shoppers: the words, without what looks
personal, and not too much of them.

An alert carries someone else's search text. Shoppers type more into a search box than
product names — an address to ship to, a phone number, an order or card number, a link —
so anything shaped like those is replaced by a placeholder before an alert is made, and the
text is cut to `MAX_ALERT_QUERY_LENGTH` characters. Matching never sees the redacted text:
watches match the search as typed.
"""

from __future__ import annotations

import re
import unicodedata

MAX_ALERT_QUERY_LENGTH = 100

# Order matters: a link may hold an address or digits, an address may hold digits.
_LINK = re.compile(
    r"\b[a-z][a-z0-9+.-]*://\S*"  # any scheme
    r"|\bwww\.\S+"
    r"|\b[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}/\S*",  # a bare host with a path: shop.example/cart
    re.IGNORECASE,
)
# "jane@example.com", and "jane @ example.com" as typed to dodge a filter.
_EMAIL = re.compile(r"[^\s@]+ ?@ ?[^\s@]+")
# Seven or more digits, alone or in groups joined by up to three of space, dot, comma,
# underscore, slash, parentheses or any dash: phone, card, account and order numbers.
# Model numbers ("wh-1000xm5", "rtx 4090") are shorter. `\d` includes every script's digits.
_NUMBER = re.compile(r"\+?\(?\d(?:[ .,_/()\-\u2010-\u2015\u2212]{0,3}\d){6,}\)?")

EMAIL = "[email]"
LINK = "[link]"
NUMBER = "[number]"


def _plain(text: str) -> str:
    """One way of writing each thing: compatibility forms folded (a fullwidth at sign or digit, a
    no-break or thin space), invisible format characters (zero-width spaces, soft hyphens)
    dropped, and every run of whitespace one space, so that none of them splits a number or
    an address the patterns would otherwise see."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(char for char in text if unicodedata.category(char) != "Cf")
    return " ".join(text.split())


def redact(text: str, limit: int = MAX_ALERT_QUERY_LENGTH) -> str:
    """`text` with links, e-mail addresses and long numbers replaced, whitespace collapsed
    and cut to `limit` characters (ending in "…" when cut). Redacting twice changes
    nothing more."""
    text = _plain(text)
    text = _LINK.sub(LINK, text)
    text = _EMAIL.sub(EMAIL, text)
    text = _NUMBER.sub(NUMBER, text)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text
