"""Bulk requests' item results: which failed items are worth sending again."""

from __future__ import annotations

from typing import Any

# Bulk item failures worth writing again: the cluster was busy, failing or closed to writes
# for now (a block an operator or the disk monitor lifts), not refusing the document.
_TOO_MANY_REQUESTS = 429
_SERVER_ERROR = 500
_PASSING_ERRORS = frozenset({"cluster_block_exception"})


def worth_retrying(result: dict[str, Any]) -> bool:
    """Whether a failed bulk item (its result under the action's name) may succeed later."""
    status = int(result.get("status", 0))
    error = result.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    return status == _TOO_MANY_REQUESTS or status >= _SERVER_ERROR or kind in _PASSING_ERRORS


# A conditional write (create, if_seq_no) refused because the document is not as expected.
CONFLICT = 409
