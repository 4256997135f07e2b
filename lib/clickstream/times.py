"""Times as the pipeline stores them: UTC, whole seconds, ISO 8601 with a `Z`.

Windows, rollup buckets, alerts and batch health all hold times like `2026-11-28T10:15:00Z`,
which sort as text and read the same in SQLite, Redis and PostgreSQL. Every module formats and
parses them here. (Event times on the wire keep milliseconds: see `clickstream.events`.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
