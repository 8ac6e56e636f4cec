"""NDJSON read a numbered line at a time: bad lines reported by number, good ones decoded."""

from __future__ import annotations

from pathlib import Path

import msgspec

from percolert.core.ndjson import BadLine, read_lines


class Item(msgspec.Struct):
    name: str


def test_a_line_nested_too_deep_is_a_bad_line_and_the_rest_are_read(tmp_path: Path) -> None:
    path = tmp_path / "items.ndjson"
    path.write_bytes(
        b'{"name": "first"}\n'
        + b'{"name": "deep", "x": '
        + b"[" * 20_000
        + b"\n"
        + b'{"name": "deep too", "x": '
        + b'{"a":' * 6_000
        + b"\n"
        + b"not json\n"
        + b'{"name": "last"}\n'
    )
    decoder = msgspec.json.Decoder(Item)
    read = list(read_lines(path, decoder.decode, "item"))
    assert read[0] == (1, Item("first"))
    assert isinstance(read[1], BadLine)
    assert read[1].line == 2
    assert "deeper than" in read[1].reason
    assert isinstance(read[2], BadLine)
    assert read[2].line == 3
    assert "deeper than" in read[2].reason
    assert isinstance(read[3], BadLine)
    assert read[3].line == 4
    assert read[4] == (5, Item("last"))
