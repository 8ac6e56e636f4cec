"""Errors out of task groups: the one to report when concurrent work failed."""

from __future__ import annotations


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a group, looking inside nested groups (a task group in a task
    group): what one failed piece of concurrent work raised."""
    first = group.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first
