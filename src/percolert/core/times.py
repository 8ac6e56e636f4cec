"""Moments as Elasticsearch stores them: ISO 8601 in UTC, to the millisecond (the precision
its dates keep). One spelling for every index, so that a range query compares like with like.
And durations as people write them (24h, 7d), read in one place."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso_from_seconds(seconds: float) -> str:
    """Epoch seconds as an ISO date, to the millisecond."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def iso_to_microsecond(seconds: float) -> str:
    """Epoch seconds as an ISO date, to the microsecond: when a search was made, as its
    answer and the alerts about it say (the same moment spelt the same way in both)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def iso_from_milliseconds(milliseconds: int) -> str:
    """Whole epoch milliseconds as an ISO date, exactly (no float in between)."""
    seconds, millis = divmod(milliseconds, 1000)
    moment = datetime.fromtimestamp(seconds, UTC) + timedelta(milliseconds=millis)
    return moment.isoformat(timespec="milliseconds")


def _parse(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    # A date without a zone is UTC, as Elasticsearch reads it.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def seconds_from_iso(iso: str) -> float:
    return _parse(iso).timestamp()


def milliseconds_from_iso(iso: str) -> int:
    return round(_parse(iso).timestamp() * 1000)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def duration_seconds(text: str) -> float | None:
    """A duration as seconds: a number of seconds, or one with a unit (90s, 30m, 24h, 7d,
    1w); None when `text` is not one, or is negative or infinite."""
    text = text.strip()
    if not text:
        return None
    unit = _DURATION_UNITS.get(text[-1].lower())
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None
