"""The user id of a shop's customer: derived from the token's `sub`, never the `sub` itself.

A shop's customer ids may be e-mail addresses or other personal data; the derived id keeps
them out of every index, log and Redis key (pseudonymised: a guessed id can be confirmed by
hashing it, so erasure removes the data itself), and has the shape of any user id here (URL-safe
letters, digits, `-` and `_`). It is 48 characters long, an anonymous session's 22: the two
never meet. The same `sub` always gives the same id, so a shop can erase or export an
account by its own customer id.
"""

from __future__ import annotations

import base64
import hashlib

_PREFIX = "acct_"
# Shops' customer ids are short; a longer `sub` is refused rather than hashed unseen.
MAX_SUBJECT_LENGTH = 255


def account_user_id(subject: str) -> str:
    digest = hashlib.sha256(b"percolert.account\0" + subject.encode()).digest()
    return _PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def is_account(user: str) -> bool:
    """Whether a user id is an account's (rather than an anonymous session's)."""
    return user.startswith(_PREFIX) and len(user) == len(_PREFIX) + 43
