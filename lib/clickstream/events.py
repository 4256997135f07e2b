"""The clickstream event contract, defined once.

`FIELDS` is the single source of truth: Python validation (`validate`, `parse_value`) and the
Spark schema (`spark_schema`) are both derived from it. Rejections carry a reason of the form
``prefix`` or ``prefix:detail``; the prefixes in `REASONS` are stable because the streaming job
counts quarantined records per reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pyspark is heavy; only `spark_schema` imports it, and only when called
    from pyspark.sql.types import StructType

EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "error",
)


@dataclass(frozen=True)
class Field:
    """One field of the contract: its JSON name, Python type, whether required, Spark type."""

    name: str
    type: type
    required: bool
    spark_type: str


FIELDS: tuple[Field, ...] = (
    Field("event_id", str, True, "StringType"),
    # A string in the raw schema too: the job parses it, so unparseable times can be quarantined.
    Field("event_time", str, True, "StringType"),
    Field("user_id", str, True, "StringType"),
    Field("session_id", str, True, "StringType"),
    Field("event_type", str, True, "StringType"),
    Field("page", str, True, "StringType"),
    Field("product_id", str, False, "StringType"),
    Field("price", float, False, "DoubleType"),
    Field("device", str, False, "StringType"),
    Field("country", str, False, "StringType"),
    Field("referrer", str, False, "StringType"),
    Field("status_code", int, False, "IntegerType"),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
REQUIRED_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.required)

# Reason prefixes, in the order checks are made. A reason is "prefix" or "prefix:detail".
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
BAD_EVENT_TIME = "bad_event_time"
REASONS: tuple[str, ...] = (
    NOT_UTF8,
    NOT_JSON,
    NOT_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    UNKNOWN_EVENT_TYPE,
    BAD_EVENT_TIME,
)

# Strict ISO-8601: date, "T", time, optional fraction, then "Z" or a +HH:MM/-HH:MM offset.
# [0-9] rather than \d because Python's \d also matches non-ASCII digits. The anchored form is
# valid Java regex too, so the Spark job can apply the same rule with `rlike`.
_EVENT_TIME_CORE = (
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})"
)
EVENT_TIME_REGEX = f"^{_EVENT_TIME_CORE}$"
_EVENT_TIME_RE = re.compile(_EVENT_TIME_CORE)

# The range of event times the streaming job accepts (`event_time_range_reason`): a record
# dated before 2000 or more than a day after it was produced is a broken clock, not an event,
# and would otherwise move the watermark (or hold windows open) for everybody.
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
DEFAULT_MAX_AHEAD = timedelta(days=1)
TOO_EARLY = f"{BAD_EVENT_TIME}:before_2000"
TOO_FAR_AHEAD = f"{BAD_EVENT_TIME}:ahead_of_clock"  # of the Kafka record's timestamp

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1  # Spark IntegerType would turn larger values to null
_DETAIL_MAX = 40  # keep reasons short even when the offending value is huge
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)


def reason_prefix(reason: str) -> str:
    """The stable prefix of a reason ("wrong_type:price" -> "wrong_type")."""
    return reason.split(":", 1)[0]


def parse_event_time(value: str) -> datetime:
    """Parse a contract event_time into a UTC-aware datetime; raise ValueError if it is not one."""
    match = _EVENT_TIME_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not an ISO-8601 time with Z or a UTC offset: {value!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        tz = UTC if zone == "Z" else _offset(zone)
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tz
        )
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"invalid event_time {value!r}: {exc}") from None


def _offset(zone: str) -> timezone:
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    # ISO-8601 offsets as Java (and so Spark) accept them: at most 18 hours.
    if minutes > 59 or hours * 60 + minutes > 18 * 60:
        raise ValueError("offset out of range (at most +/-18:00)")
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if zone[0] == "-" else delta)


def format_event_time(dt: datetime) -> str:
    """Format an aware datetime as the contract's UTC form, e.g. "2026-11-28T10:15:03.120Z"."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"event times must be timezone-aware, got naive {dt!r}")
    utc = dt.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _type_ok(field: Field, value: Any) -> bool:
    if field.type is str:
        return isinstance(value, str)
    if isinstance(value, bool):  # bool is an int subclass; never a number in this contract
        return False
    if field.type is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, int) and _INT32_MIN <= value <= _INT32_MAX


def validate(record: Any) -> str | None:
    """None if `record` satisfies the contract, else a reason such as "wrong_type:price"."""
    if not isinstance(record, dict):
        return NOT_OBJECT
    for field in FIELDS:
        value = record.get(field.name)
        # An empty required string identifies nothing, so it counts as missing.
        if value is None or (field.required and value == ""):
            if field.required:
                return f"{MISSING_FIELD}:{field.name}"
            continue
        if not _type_ok(field, value):
            return f"{WRONG_TYPE}:{field.name}"
    event_type = record["event_type"]
    if event_type not in _EVENT_TYPE_SET:
        return f"{UNKNOWN_EVENT_TYPE}:{event_type[:_DETAIL_MAX]}"
    try:
        parse_event_time(record["event_time"])
    except ValueError:
        return BAD_EVENT_TIME
    return None


def event_time_range_reason(
    event_time: datetime, produced: datetime, max_ahead: timedelta = DEFAULT_MAX_AHEAD
) -> str | None:
    """None if a valid event time is within the job's sane range, else its quarantine reason:
    before 2000, or more than `max_ahead` past `produced` (the record's Kafka timestamp)."""
    if event_time < EARLIEST_EVENT_TIME:
        return TOO_EARLY
    if event_time > produced + max_ahead:
        return TOO_FAR_AHEAD
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_value(raw: bytes | str | None) -> tuple[dict | None, str | None]:
    """Decode and validate a raw message value: (record, None) if valid, else (None, reason)."""
    if raw is None:
        return None, NOT_JSON
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None, NOT_UTF8
    try:
        # NaN/Infinity are not JSON, and Spark's parser rejects them too.
        record = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None, NOT_JSON
    reason = validate(record)
    return (record, None) if reason is None else (None, reason)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def to_json_bytes(event: Any) -> bytes:
    """Serialize compactly and deterministically (key order as given) to UTF-8 JSON bytes."""
    return _ENCODER.encode(event).encode("utf-8")


def spark_schema() -> StructType:
    """The raw-topic Spark schema, built from `FIELDS` (event_time stays a string)."""
    from pyspark.sql import types as T

    # Every field is nullable: from_json yields null for absent or mistyped values, and the
    # job must see those records to quarantine them rather than have Spark reject the schema.
    return T.StructType(
        [T.StructField(f.name, getattr(T, f.spark_type)(), nullable=True) for f in FIELDS]
    )
