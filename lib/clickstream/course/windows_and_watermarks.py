"""Exercise checks of notebook 04, windows and watermarks: sliding windows, the events a
watermark drops, and the job's first stateful step (de-duplication within the watermark) as a
streaming query the learner writes.

The expected answers are computed here from the simulator's records with plain Python, never
with Spark or the streaming job, so a check is independent of the code it grades.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from clickstream.course.checks import (
    ExerciseError,
    as_utc,
    attempt,
    correct,
    delay_hint,
    need,
    need_columns,
    need_operator,
    plan_text,
    run_available_now,
    streaming_answer,
)
from clickstream.course.truth import JobOutcome, job_outcome

__all__ = [
    "attempt",
    "check_dropped_events",
    "check_sliding_page_views",
    "check_unique_events",
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
    need(
        isinstance(answer, Mapping),
        f"expected a dict {{window_start: count}}, got {type(answer).__name__}",
    )
    try:
        got = {as_utc(start): n for start, n in answer.items()}
    except (TypeError, ValueError) as exc:
        raise ExerciseError(f"keys should be window starts (datetimes); ({exc})") from None
    views = [r.event["event_time"] for r in arrivals if r.event["event_type"] == "page_view"]
    expected = sliding_counts(views, window_s, slide_s)
    if got == expected:
        correct(
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
    need(
        isinstance(answer, (set, frozenset, list, tuple)),
        f"expected a set of event ids, got {type(answer).__name__}",
    )
    got = {str(x) for x in answer}
    expected = dropped_by_watermark(arrivals, delay_s, batch_size)
    if got == expected:
        correct(f"a {delay_s:g}-second watermark drops {len(expected)} events")
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


# --- 04.3: de-duplication within the watermark, the job's first stateful step ------------


def _deduplicated_plan(answer: Any) -> str:
    """The plan of the learner's de-duplicated stream, once it has the operators needed."""
    df = streaming_answer(answer, "the de-duplicated stream")
    plan = plan_text(df)
    need_operator(
        plan,
        ("EventTimeWatermark",),
        "the plan has no watermark (EventTimeWatermark): call .withWatermark('event_ts', ...) "
        "before de-duplicating",
    )
    need_operator(
        plan,
        ("StreamingDeduplicateWithinWatermark", "StreamingDeduplicate"),
        "the plan has no de-duplication (StreamingDeduplicateWithinWatermark): call "
        ".dropDuplicatesWithinWatermark(['event_id']) after the watermark",
    )
    need_columns(df, ("event_id",), "keep the event columns, at least event_id")
    return plan


def _unique_events_hint(
    got: Counter,
    batches: list[list],
    outcome: JobOutcome,
    plan: str,
    delay_s: float,
    batch_size: int,
) -> str:
    """What is wrong with the event ids `got`, compared with what the job keeps (`outcome`)."""
    expected = [e["event_id"] for e in outcome.accepted]
    hint = delay_hint(plan, delay_s)
    extra = [i for i in outcome.late_ids if i in got]
    missing = [i for i in expected if i not in got]
    if hint is None and extra and "StreamingDeduplicateWithinWatermark" not in plan:
        hint = (
            "dropDuplicates(['event_id']) keeps every id forever and judges nothing late (its "
            "key has no event time): use dropDuplicatesWithinWatermark(['event_id'])"
        )
    if hint is None and extra and len(extra) == len(outcome.late_ids):
        data_batches = sum(1 for b in batches if b)
        hint = (
            f"it keeps all {len(extra)} events the job drops as late: read the topic in "
            f"micro-batches of {batch_size} records (maxOffsetsPerTrigger), so that the "
            f"watermark moves between them (your query ran {data_batches} batch(es) with rows)"
        )
    if hint is None and extra:
        hint = f"{len(extra)} events the job drops as late are in yours, the first {extra[0]}"
    if hint is None and missing:
        hint = f"{len(missing)} events the job keeps are missing from yours, the first {missing[0]}"
    if hint is None:
        hint = f"{len(set(got) - set(expected))} event ids in yours are not events of the topic"
    return hint


def check_unique_events(answer: Any, arrivals, delay_s: float, batch_size: int) -> None:
    """Exercise 04.3: a stream de-duplicated by event_id within a `delay_s`-second watermark,
    read in micro-batches of `batch_size` records from one partition; in append mode it must
    emit each event once, except those the watermark drops as late."""
    plan = _deduplicated_plan(answer)
    batches = run_available_now(answer.select("event_id"), "append")
    got = Counter(row["event_id"] for batch in batches for row in batch)
    outcome = job_outcome(arrivals, delay_s, batch_size)
    expected = [e["event_id"] for e in outcome.accepted]
    twice = [i for i, n in got.items() if n > 1]
    if twice:
        raise ExerciseError(
            f"event {twice[0]} came out {got[twice[0]]} times: de-duplicate by event_id alone "
            "(dropDuplicatesWithinWatermark(['event_id']))"
        )
    if set(got) == set(expected):
        correct(
            f"{len(expected)} events kept, {len(outcome.late_ids)} dropped as late and "
            f"{len(outcome.duplicate_ids)} copies removed, as the job does"
        )
        return
    hint = _unique_events_hint(got, batches, outcome, plan, delay_s, batch_size)
    raise ExerciseError(f"the de-duplicated stream is not right yet: {hint}.")
