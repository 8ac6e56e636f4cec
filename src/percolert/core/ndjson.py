"""Reading NDJSON files a line at a time, for loaders that report bad lines by number and
load the good ones (`percolert ingest`, `percolert watches load`). A line nested too deep to
decode safely (`percolert.core.jsondepth`) is a bad line like any other."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from percolert.core.jsondepth import TooDeep, check_depth

T = TypeVar("T")


class BadLine(msgspec.Struct, frozen=True):
    """A line that is not what the file holds: its number (from 1) and why."""

    line: int
    reason: str


def read_lines(
    path: Path,
    decode: Callable[[bytes], T],
    what: str,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, T] | BadLine]:
    """Each non-blank line of `path` decoded, with its number, or a BadLine in its place
    (`what` names the expected thing in the reason). `on_progress` gets the bytes read."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if on_progress is not None:
                on_progress(len(raw))
            if not raw.strip():
                continue
            try:
                check_depth(raw)
                yield number, decode(raw)
            except TooDeep as error:
                yield BadLine(number, f"too deep: {error}")
            except msgspec.ValidationError as error:
                yield BadLine(number, f"invalid {what}: {error}")
            except msgspec.DecodeError as error:
                yield BadLine(number, f"not valid JSON: {error}")
