"""Exercise checks of notebook 06, bad data and anomalies: the quarantine, windows with too many
errors, and the contract's checks as column expressions in a streaming query.

The expected answers come from the event contract (`clickstream.events`) and
`clickstream.course.truth`, in plain Python, never from Spark or the streaming job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from clickstream.course.checks import (
    ExerciseError,
    as_utc,
    attempt,
    correct,
    need,
    need_columns,
    plan_text,
    run_available_now,
    streaming_answer,
)
from clickstream.course.truth import job_outcome, window_error_counts

__all__ = [
    "EXPRESSIBLE",
    "attempt",
    "check_contract_reasons",
    "check_quarantine_counts",
    "check_threshold_windows",
    "contract_reasons",
    "plan_text",
]

# Reasons a column expression over `from_json`'s columns can tell exactly. Records that are not
# JSON objects, or have a field of the wrong type, need the job's second, VARIANT parse.
EXPRESSIBLE = ("missing_field", "unknown_event_type", "bad_event_time")
_PYTHON_UDF = ("BatchEvalPython", "ArrowEvalPython", "PythonUDF")


# --- 06.1 the quarantine -------------------------------------------------------------------


def _quarantine_hint(got: dict, expected: Counter, full: Counter) -> str:
    """Which usual mistake gives the counts `got`: full reasons, unknown prefixes, totals."""
    from clickstream import events

    if got == dict(full) or any(":" in k for k in got):
        return (
            "those are full reasons such as 'wrong_type:price'; group them by their prefix "
            "(events.reason_prefix(reason))"
        )
    if set(got) - set(events.REASONS):
        return (
            f"{sorted(set(got) - set(events.REASONS))[:3]} are not reason prefixes "
            f"({', '.join(events.REASONS)})"
        )
    if sum(got.values()) > sum(expected.values()):
        return (
            f"{sum(got.values())} records counted, the topic holds {sum(expected.values())}: "
            "was something counted twice?"
        )
    if sum(got.values()) < sum(expected.values()):
        return (
            f"only {sum(got.values())} of {sum(expected.values())} records counted: read the "
            "whole topic, from the beginning"
        )
    return "some reasons have the wrong count: take the `reason` field of every message"


def check_quarantine_counts(answer: Any, records) -> None:
    """Exercise 06.1: {reason prefix: records} of the records the contract rejects."""
    from clickstream import events

    need(
        isinstance(answer, Mapping),
        f"expected a dict {{reason prefix: count}}, got {type(answer).__name__}",
    )
    full = Counter()
    for record in records:
        reason = events.parse_value(record.value)[1]
        if reason is not None:
            full[reason] += 1
    expected = Counter()
    for reason, n in full.items():
        expected[events.reason_prefix(reason)] += n
    got = {str(k): v for k, v in answer.items()}
    if got == dict(expected):
        correct(
            f"{sum(expected.values())} records in quarantine, {len(expected)} reasons, none lost"
        )
        return
    hint = _quarantine_hint(got, expected, full)
    raise ExerciseError(f"the quarantine counts are not right yet: {hint}.")


# --- 06.2 windows with too many errors -----------------------------------------------------


def _flagged(
    counts: Mapping[datetime, tuple[int, int]], rate: float, errors: int, strict: bool = False
) -> set:
    """The windows of `counts` ({start: (events, errors)}) at (or above, if `strict`) `rate`
    with at least `errors` errors."""
    return {
        w
        for w, (n, e) in counts.items()
        if (e / n > rate if strict else e / n >= rate) and e >= errors
    }


def _threshold_hint(
    got: set, expected: set, counts: Mapping, window_s: int, min_rate: float, min_errors: int
) -> str:
    """Which usual mistake flags the windows `got`: no minimum of errors, >, or no rate."""
    if got == _flagged(counts, min_rate, 0):
        return (
            f"a window also needs at least {min_errors} errors (one error in two events is not "
            "an incident)"
        )
    if got == _flagged(counts, min_rate, min_errors, strict=True):
        return (
            f"'at least {min_rate:.0%}' includes the windows at exactly {min_rate:.0%} (>=, not >)"
        )
    if got == {w for w, (_, e) in counts.items() if e >= min_errors}:
        return (
            f"that keeps every window with {min_errors} errors; compare the *rate* "
            f"errors / events with {min_rate}"
        )
    if got - set(counts):
        return (
            f"{len(got - set(counts))} of these are not window starts of {window_s}-second "
            "windows; read the job's `errors` metric"
        )
    return (
        f"{len(got & expected)} of yours are right, {len(got - expected)} extra, "
        f"{len(expected - got)} missing; use error_rate >= {min_rate} and "
        f"errors >= {min_errors}"
    )


def check_threshold_windows(
    answer: Any,
    records,
    window_s: int,
    delay_s: float,
    batch_size: int,
    min_rate: float = 0.05,
    min_errors: int = 5,
) -> None:
    """Exercise 06.2: the windows whose error rate is at least `min_rate` with at least
    `min_errors` errors, among the events the job accepted."""
    need(
        isinstance(answer, (set, frozenset, list, tuple)),
        f"expected a set of window starts, got {type(answer).__name__}",
    )
    try:
        got = {as_utc(w) for w in answer}
    except (TypeError, ValueError) as exc:
        raise ExerciseError(f"window starts should be datetimes or ISO strings ({exc})") from None
    counts = window_error_counts(job_outcome(records, delay_s, batch_size).accepted, window_s)
    expected = _flagged(counts, min_rate, min_errors)
    if got == expected:
        correct(
            f"{len(expected)} windows at or above {min_rate:.0%} errors with at least "
            f"{min_errors} errors"
        )
        return
    hint = _threshold_hint(got, expected, counts, window_s, min_rate, min_errors)
    raise ExerciseError(f"{len(got)} windows given, {len(expected)} expected: {hint}.")


# --- 06.3 a contract check as a column expression ------------------------------------------


def contract_reasons(records) -> dict[int, str | None]:
    """{offset: the contract's reason (None when valid)} for the records of a one-partition
    topic (offset = position) that column expressions can judge: valid events and those
    rejected as missing_field, unknown_event_type or bad_event_time."""
    from clickstream import events

    out = {}
    for offset, record in enumerate(records):
        reason = events.parse_value(record.value)[1]
        if reason is None or events.reason_prefix(reason) in EXPRESSIBLE:
            out[offset] = reason
    return out


def _reason_hint(want: str | None) -> str:
    from clickstream import events

    if want is None:
        return "a valid event gets reason null"
    prefix = events.reason_prefix(want)
    if prefix == "missing_field":
        return (
            "a required field that is null or empty is missing_field:<name>, the first one in "
            "the contract's order (events.REQUIRED_FIELDS), before any other check"
        )
    if prefix == "unknown_event_type":
        return (
            "an event_type not in events.EVENT_TYPES (isin) is 'unknown_event_type:' followed "
            "by the value, checked before the event time"
        )
    return (
        "event_time must match events.EVENT_TIME_REGEX (rlike) and be a real time "
        "(F.try_to_timestamp(...) not null)"
    )


def check_contract_reasons(answer: Any, records) -> None:
    """Exercise 06.3: per record (`offset`), the contract's `reason` as a column expression, no
    UDF; checked on the records an expression over `from_json`'s columns can judge."""
    df = streaming_answer(answer, "the checked stream")
    plan = plan_text(df)
    udf = next((name for name in _PYTHON_UDF if name in plan), None)
    need(
        udf is None,
        f"the reason comes from a Python UDF (the plan runs {udf}): write it with column "
        "functions (F.when, isin, rlike, F.try_to_timestamp), which run in the JVM",
    )
    need_columns(df, ("offset", "reason"), "keep the Kafka offset and add a column reason")
    got: dict[int, Any] = {}
    for batch in run_available_now(df.select("offset", "reason"), "append"):
        for row in batch:
            got[row["offset"]] = row["reason"]
    expected = contract_reasons(records)
    missing = [o for o in expected if o not in got]
    if missing:
        raise ExerciseError(
            f"{len(missing)} records are missing from the result, the first at offset "
            f"{missing[0]}: keep every record, with reason null when it is valid"
        )
    wrong = [o for o, want in expected.items() if got[o] != want]
    if not wrong:
        rejected = sum(1 for r in expected.values() if r is not None)
        correct(
            f"{len(expected)} records judged as the contract does ({rejected} rejected), "
            "with column expressions only"
        )
        return
    first = wrong[0]
    raise ExerciseError(
        f"{len(wrong)} reasons differ; at offset {first} yours is {got[first]!r}, the "
        f"contract's {expected[first]!r}: {_reason_hint(expected[first])}."
    )
