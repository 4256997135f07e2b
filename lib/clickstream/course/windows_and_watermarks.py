"""Exercise checks for notebooks 04 onwards (event time, state, bad data), like `exercises`.

Same contract as `clickstream.exercises`: a check prints "✓ correct" or raises `ExerciseError`
saying what is wrong and how to get closer; notebooks run exercises through `attempt`. The
expected answers are computed here from the simulator's records with plain Python, never
with Spark or the streaming job, so a check is independent of the code it grades.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from clickstream.exercises import ExerciseError, _as_utc, _correct, _need, attempt

__all__ = [
    "ExerciseError",
    "attempt",
    "check_dropped_events",
    "check_sliding_page_views",
    "dropped_by_watermark",
    "sliding_counts",
]


def _epoch_ms(event_time: str) -> int:
    from clickstream.events import parse_event_time

    return round(parse_event_time(event_time).timestamp() * 1000)


# --- 04 windows and watermarks -----------------------------------------------------------


def sliding_counts(event_times: Iterable[str], window_s: int, slide_s: int) -> dict[datetime, int]:
    """{window start: events} in epoch-aligned sliding windows of `window_s`, every `slide_s`."""
    counts: Counter[int] = Counter()
    window_ms, slide_ms = window_s * 1000, slide_s * 1000
    for text in event_times:
        ms = _epoch_ms(text)
        start = ms - ms % slide_ms  # the last window that starts at or before the event
        while start > ms - window_ms:
            counts[start] += 1
            start -= slide_ms
    return {datetime.fromtimestamp(s / 1000, UTC): n for s, n in sorted(counts.items())}


def check_sliding_page_views(answer: Any, arrivals, window_s: int = 60, slide_s: int = 30) -> None:
    """Exercise 04.1: {window_start: page views} in sliding windows of `window_s` every `slide_s`."""
    _need(
        isinstance(answer, Mapping),
        f"expected a dict {{window_start: count}}, got {type(answer).__name__}",
    )
    try:
        got = {_as_utc(start): n for start, n in answer.items()}
    except (TypeError, ValueError) as exc:
        raise ExerciseError(f"keys should be window starts (datetimes); ({exc})") from None
    views = [r.event["event_time"] for r in arrivals if r.event["event_type"] == "page_view"]
    expected = sliding_counts(views, window_s, slide_s)
    if got == expected:
        _correct(
            f"{len(expected)} sliding windows; each page view counted in "
            f"{window_s // slide_s} of them"
        )
        return
    everything = sliding_counts((r.event["event_time"] for r in arrivals), window_s, slide_s)
    tumbling = sliding_counts(views, window_s, window_s)
    if got == everything:
        hint = "those are all events: keep only event_type == 'page_view'"
    elif got == tumbling or sum(got.values()) * (window_s // slide_s) == sum(expected.values()):
        hint = (
            f"each page view is counted once: that is a tumbling window. A sliding window "
            f"needs the slide too, F.window('event_ts', '{window_s} seconds', '{slide_s} seconds')"
        )
    elif len(got) != len(expected):
        hint = (
            f"you have {len(got)} windows, expected {len(expected)}: windows start every "
            f"{slide_s} s, including the ones that only partly overlap the data"
        )
    else:
        hint = "some counts differ: group by the event time (event_ts), not the Kafka timestamp"
    raise ExerciseError(f"the sliding-window page views are not right yet: {hint}.")


def _batch_watermarks(
    times_ms: list[int], delay_ms: int, batch_size: int, lag: int = 1
) -> list[int | None]:
    """Per record, the watermark it is judged by: the max event time of the batches up to
    `lag` batches before its own, minus the delay (None while there is none)."""
    marks: list[int | None] = []
    seen: list[int] = []  # the max event time after each batch
    for number, start in enumerate(range(0, len(times_ms), batch_size)):
        batch = times_ms[start : start + batch_size]
        mark = seen[number - lag] - delay_ms if number >= lag else None
        marks.extend([mark] * len(batch))
        seen.append(max(batch) if not seen else max(seen[-1], max(batch)))
    return marks


def dropped_by_watermark(
    arrivals, delay_s: float, batch_size: int, window_s: int | None = None
) -> set[str]:
    """Event ids a watermark of `delay_s` drops when `arrivals` come in batches of `batch_size`.

    Spark filters late input with the watermark of the *previous* batch (the max event time of
    the batches before that one, minus the delay). With `window_s` None, the streaming job's
    rule (Spark's `dropDuplicatesWithinWatermark`, its first stateful step): an event older
    than that watermark is dropped. With a window length, Spark's rule for a windowed
    aggregation: an event is dropped only when its tumbling window ends at or before it.
    """
    times = [_epoch_ms(r.event["event_time"]) for r in arrivals]
    marks = _batch_watermarks(times, round(delay_s * 1000), batch_size, lag=2)
    dropped = set()
    for record, ms, mark in zip(arrivals, times, marks, strict=True):
        if mark is None:
            continue
        if window_s is None:
            late = ms < mark
        else:
            late = ms - ms % (window_s * 1000) + window_s * 1000 <= mark
        if late:
            dropped.add(record.event["event_id"])
    return dropped


def _dropped_by_own_batch_watermark(arrivals, delay_s: float, batch_size: int) -> set[str]:
    times = [_epoch_ms(r.event["event_time"]) for r in arrivals]
    marks = _batch_watermarks(times, round(delay_s * 1000), batch_size, lag=1)
    return {
        r.event["event_id"]
        for r, ms, mark in zip(arrivals, times, marks, strict=True)
        if mark is not None and ms < mark
    }


def check_dropped_events(answer: Any, arrivals, delay_s: float, batch_size: int) -> None:
    """Exercise 04.2: the event ids the job's watermark (record rule) drops."""
    _need(
        isinstance(answer, (set, frozenset, list, tuple)),
        f"expected a set of event ids, got {type(answer).__name__}",
    )
    got = {str(x) for x in answer}
    expected = dropped_by_watermark(arrivals, delay_s, batch_size)
    if got == expected:
        _correct(f"a {delay_s:g}-second watermark drops {len(expected)} events")
        return
    if got == dropped_by_watermark(arrivals, delay_s, batch_size, window_s=60):
        hint = (
            "that is Spark's rule for 1-minute windows (drop only when the window has "
            "closed); the job compares the event time itself with the watermark"
        )
    elif got == dropped_by_watermark(arrivals, delay_s, 1):
        hint = (
            "that is the record-by-record rule; Spark and the job move the watermark once "
            f"per micro-batch of {batch_size} records, using only earlier batches"
        )
    elif got == _dropped_by_own_batch_watermark(arrivals, delay_s, batch_size):
        hint = (
            "that compares with each batch's own watermark; Spark judges late events by the "
            "watermark of the previous batch (`late_if_before`)"
        )
    elif got - expected and not expected - got:
        hint = (
            f"{len(got - expected)} of yours are kept: Spark judges late events by the "
            "previous batch's watermark (the first two batches drop nothing)"
        )
    elif expected - got and not got - expected:
        hint = f"{len(expected - got)} dropped events are missing from your answer"
    else:
        hint = "compare each event_time with the previous batch's watermark (late_if_before)"
    raise ExerciseError(f"{len(got)} ids given, {len(expected)} expected: {hint}.")
