"""Times as the pipeline stores them: UTC, whole seconds, ISO 8601 with a `Z`.

Windows, rollup buckets, alerts and batch health all hold times like `2026-11-28T10:15:00Z`,
which sort as text and read the same in SQLite, Redis and PostgreSQL. Every module formats and
parses them here. (Event times on the wire keep milliseconds: see `clickstream.events`.)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from clickstream.errors import StreamJobError

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_US = 1_000_000


def iso(value) -> str | None:
    """A datetime, epoch seconds or ISO text -> '2026-11-28T10:15:00Z' (None stays None).

    A naive datetime is taken as UTC: Spark hands back naive datetimes in the session's time
    zone, which the course sets to UTC.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value.endswith("Z") and len(value) == 20:
            return value
        value = parse_iso(value)
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, tz=UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(ISO_FORMAT)


def iso_us(us: int) -> str:
    """Epoch microseconds -> '2026-11-28T10:15:00Z' (truncated to the second)."""
    return datetime.fromtimestamp(us // _US, UTC).strftime(ISO_FORMAT)


def parse_iso(text: str) -> datetime:
    """ISO text ('...Z' or with an offset) -> an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def epoch_seconds(value) -> float:
    """A datetime, epoch seconds or ISO text -> epoch seconds."""
    return parse_iso(iso(value)).timestamp()


def to_us(dt: datetime) -> int:
    """Aware datetime -> epoch microseconds, exactly (no float rounding)."""
    return (dt - _EPOCH) // _ONE_US


# -- durations, as the job's settings give them ('10 seconds', '1 minute') ----------------------
_UNITS = {
    "ms": 1_000,
    "millisecond": 1_000,
    "milliseconds": 1_000,
    "s": _US,
    "sec": _US,
    "secs": _US,
    "second": _US,
    "seconds": _US,
    "m": 60 * _US,
    "min": 60 * _US,
    "mins": 60 * _US,
    "minute": 60 * _US,
    "minutes": 60 * _US,
    "h": 3600 * _US,
    "hour": 3600 * _US,
    "hours": 3600 * _US,
    "d": 86400 * _US,
    "day": 86400 * _US,
    "days": 86400 * _US,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def duration_us(text: str, name: str = "duration") -> int:
    """'10 seconds', '1 minute', '90s', '2 min' -> microseconds."""
    match = _DURATION.match(str(text))
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or not unit:
        raise StreamJobError(
            f"{name} {text!r} is not a duration: write it like '10 seconds', '1 minute', '2 "
            "minutes' or '1 hour'."
        )
    return round(float(match.group(1)) * unit)
