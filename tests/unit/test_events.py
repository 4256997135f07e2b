"""The event contract: validation, reasons, time handling, serialization and the Spark schema."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream import events

DESIGN_EXAMPLE = {
    "event_id": "e8b1",
    "event_time": "2026-11-28T10:15:03.120Z",
    "user_id": "u_0042",
    "session_id": "s_9f1c",
    "event_type": "page_view",
    "page": "/product/P017",
    "product_id": "P017",
    "price": 19.99,
    "device": "mobile",
    "country": "DE",
    "referrer": "search",
    "status_code": 200,
}
CONTRACT_FIELDS = list(DESIGN_EXAMPLE)
REQUIRED = ["event_id", "event_time", "user_id", "session_id", "event_type", "page"]

utc_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-18 * 60, max_value=18 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
nonempty_text = st.text(min_size=1, max_size=20)
optional_text = st.none() | st.text(max_size=20)


@st.composite
def valid_events(draw: st.DrawFn) -> dict:
    """Any record the contract accepts, including edge values (int prices, offsets, nulls)."""
    moment = draw(utc_datetimes).astimezone(draw(offsets))
    return {
        "event_id": draw(nonempty_text),
        "event_time": draw(st.sampled_from([events.format_event_time(moment), moment.isoformat()])),
        "user_id": draw(nonempty_text),
        "session_id": draw(nonempty_text),
        "event_type": draw(st.sampled_from(events.EVENT_TYPES)),
        "page": draw(nonempty_text),
        "product_id": draw(optional_text),
        "price": draw(
            st.none()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.integers(-(10**6), 10**6)
        ),
        "device": draw(optional_text),
        "country": draw(optional_text),
        "referrer": draw(optional_text),
        "status_code": draw(st.none() | st.integers(-(2**31), 2**31 - 1)),
    }


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner)
)


def test_field_table_is_the_documented_contract():
    assert list(events.FIELD_NAMES) == CONTRACT_FIELDS
    assert list(events.REQUIRED_FIELDS) == REQUIRED
    assert events.EVENT_TYPES == (
        "page_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "purchase",
        "error",
    )
    assert events.REASONS == (
        "not_utf8",
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "unknown_event_type",
        "bad_event_time",
    )


def test_design_example_is_valid():
    assert events.validate(DESIGN_EXAMPLE) is None
    assert events.parse_value(json.dumps(DESIGN_EXAMPLE).encode()) == (DESIGN_EXAMPLE, None)


@given(valid_events())
def test_valid_events_validate_and_round_trip(event):
    assert events.validate(event) is None
    assert events.parse_value(events.to_json_bytes(event)) == (event, None)


@given(valid_events(), st.sampled_from(REQUIRED), st.sampled_from(["drop", None, ""]))
def test_missing_required_field_is_named(event, name, how):
    if how == "drop":
        del event[name]
    else:
        event[name] = how
    assert events.validate(event) == f"missing_field:{name}"


@given(valid_events(), st.sampled_from(CONTRACT_FIELDS[6:]))
def test_optional_fields_may_be_absent_or_null(event, name):
    event.pop(name)
    assert events.validate(event) is None
    event[name] = None
    assert events.validate(event) is None


WRONG_VALUES = {
    str: st.integers() | st.booleans() | st.floats() | st.lists(st.text(), max_size=2),
    float: st.text() | st.booleans() | st.just(math.nan) | st.just(math.inf) | st.just([1.0]),
    int: st.text()
    | st.booleans()
    | st.floats()
    | st.just(2**31)
    | st.just(-(2**31) - 1)
    | st.just({"code": 200}),
}


@given(st.data())
def test_wrong_types_are_rejected_with_the_field_name(data):
    event = data.draw(valid_events())
    field = data.draw(st.sampled_from(events.FIELDS))
    event[field.name] = data.draw(WRONG_VALUES[field.type])
    assert events.validate(event) == f"wrong_type:{field.name}"


def test_numbers_follow_the_contract():
    base = dict(DESIGN_EXAMPLE)
    assert events.validate({**base, "price": 20}) is None  # ints are numbers
    assert events.validate({**base, "price": True}) == "wrong_type:price"
    assert events.validate({**base, "status_code": 200.0}) == "wrong_type:status_code"
    assert events.validate({**base, "status_code": False}) == "wrong_type:status_code"


@given(valid_events(), st.text(max_size=60).filter(lambda t: t not in events.EVENT_TYPES))
def test_unknown_event_type_is_reported_with_a_short_detail(event, event_type):
    event["event_type"] = event_type
    reason = events.validate(event)
    if event_type == "":
        assert reason == "missing_field:event_type"
    else:
        assert reason == f"unknown_event_type:{event_type[:40]}"


BAD_TIMES = [
    "2026-11-28 10:15:03Z",  # space instead of T
    "2026-11-28T10:15:03",  # no zone: ambiguous
    "2026-11-28T10:15:03.120",
    "2026-11-28T10:15Z",  # no seconds
    "2026-11-28",
    "28/11/2026 10:15:03",
    "2026-13-01T00:00:00Z",  # month 13
    "2026-02-30T00:00:00Z",
    "2026-11-28T24:00:00Z",
    "2026-11-28T10:15:60Z",
    "2026-11-28T10:15:03+0100",  # offset without colon
    "2026-11-28T10:15:03+24:00",
    "2026-11-28T10:15:03+01:60",
    "2026-11-28T10:15:03.Z",
    "2026-11-28T10:15:03.1234567890Z",
    "2026-11-28T10:15:03z",
    "2026-11-28T10:15:03Z\n",
    "２０２６-11-28T10:15:03Z",  # full-width digits
    "0000-01-01T00:00:00Z",
    "yesterday",
]


@pytest.mark.parametrize("bad", BAD_TIMES)
def test_bad_event_times_are_quarantined(bad):
    assert events.validate({**DESIGN_EXAMPLE, "event_time": bad}) == "bad_event_time"
    with pytest.raises(ValueError):
        events.parse_event_time(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T10:15:03Z", datetime(2026, 11, 28, 10, 15, 3, tzinfo=UTC)),
        ("2026-11-28T10:15:03.1Z", datetime(2026, 11, 28, 10, 15, 3, 100000, UTC)),
        (
            "2026-11-28T10:15:03.123456789Z",
            datetime(2026, 11, 28, 10, 15, 3, 123456, UTC),
        ),
        ("2026-11-28T11:15:03.120+01:00", datetime(2026, 11, 28, 10, 15, 3, 120000, UTC)),
        ("2026-11-28T05:45:03-04:30", datetime(2026, 11, 28, 10, 15, 3, tzinfo=UTC)),
        ("2026-11-28T10:15:03-00:00", datetime(2026, 11, 28, 10, 15, 3, tzinfo=UTC)),
    ],
)
def test_parse_event_time_accepts_z_and_offsets(text, expected):
    parsed = events.parse_event_time(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@given(utc_datetimes, offsets)
def test_format_then_parse_keeps_the_millisecond(moment, zone):
    text = events.format_event_time(moment.astimezone(zone))
    assert text.endswith("Z") and len(text) == 24
    assert events.parse_event_time(text) == moment.replace(
        microsecond=moment.microsecond // 1000 * 1000
    )


def test_format_event_time_refuses_naive_datetimes():
    assert events.format_event_time(datetime(2026, 11, 28, 10, 15, 3, 120999, UTC)) == (
        "2026-11-28T10:15:03.120Z"
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        events.format_event_time(datetime(2026, 11, 28))


@given(st.text(max_size=40))
def test_time_rule_is_the_same_in_parser_and_validator(text):
    try:
        events.parse_event_time(text)
        parses = True
    except ValueError:
        parses = False
    if text:
        assert (events.validate({**DESIGN_EXAMPLE, "event_time": text}) is None) == parses


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"event_id": "\xc3"}', "not_utf8"),
        (b"", "not_json"),
        (None, "not_json"),
        ("{", "not_json"),
        (b"GET /product/P017 HTTP/1.1", "not_json"),
        (b'{"price": NaN}', "not_json"),
        (b"Infinity", "not_json"),
        (b"[" * 100_000, "not_json"),
        (b"[]", "not_object"),
        (b'[{"event_id": "x"}]', "not_object"),
        (b"42", "not_object"),
        (b'"page_view"', "not_object"),
        (b"null", "not_object"),
        (b"{}", "missing_field:event_id"),
    ],
)
def test_parse_value_reasons(raw, reason):
    assert events.parse_value(raw) == (None, reason)


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_parse_value_never_raises_and_reasons_are_stable(raw):
    record, reason = events.parse_value(raw)
    assert (record is None) != (reason is None)
    if reason is not None:
        assert events.reason_prefix(reason) in events.REASONS


@given(json_values)
def test_validate_never_raises_on_any_json(value):
    reason = events.validate(value)
    assert reason is None or events.reason_prefix(reason) in events.REASONS


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(CONTRACT_FIELDS) | st.text(max_size=5), json_scalars))
def test_validate_never_raises_on_contract_like_dicts(record):
    reason = events.validate(record)
    assert reason is None or events.reason_prefix(reason) in events.REASONS


def test_to_json_bytes_is_compact_ordered_and_keeps_unicode():
    event = {"b": 1, "a": "Zürich", "c": None, "d": 19.99}
    assert events.to_json_bytes(event) == '{"b":1,"a":"Zürich","c":null,"d":19.99}'.encode()
    with pytest.raises(ValueError):
        events.to_json_bytes({"price": math.nan})


@given(valid_events())
def test_to_json_bytes_matches_json_dumps(event):
    expected = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    assert events.to_json_bytes(event) == expected


def test_spark_schema_is_derived_from_the_field_table():
    types = pytest.importorskip("pyspark.sql.types")
    schema = events.spark_schema()
    assert schema.fieldNames() == CONTRACT_FIELDS
    by_name = {f.name: f.dataType for f in schema.fields}
    assert by_name["event_time"] == types.StringType()  # parsed by the job, so bad ones quarantine
    assert by_name["price"] == types.DoubleType()
    assert by_name["status_code"] == types.IntegerType()
    assert all(isinstance(by_name[n], types.StringType) for n in REQUIRED)
    assert all(f.nullable for f in schema.fields)


def test_importing_the_contract_does_not_import_pyspark():
    code = "import sys, clickstream.events; print('pyspark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_event_time_regex_is_anchored_and_agrees_with_python():
    import re

    pattern = re.compile(events.EVENT_TIME_REGEX)
    assert pattern.match("2026-11-28T10:15:03.120Z")
    assert not pattern.match("x2026-11-28T10:15:03.120Z")
    assert not pattern.match("2026-11-28T10:15:03.120Zx")
