"""Exercise checks of notebook 03, structured streaming basics: counts with Spark, then a
windowed count with a watermark that the learner writes as a streaming query."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from clickstream.course.checks import (
    ExerciseError,
    as_utc,
    attempt,
    correct,
    delay_hint,
    hms,
    need,
    need_columns,
    need_operator,
    plan_text,
    run_available_now,
    streaming_answer,
)
from clickstream.course.truth import US, event_us, from_us, unique_events

__all__ = [
    "attempt",
    "check_device_counts",
    "check_final_windows",
    "check_page_views_per_country",
    "check_window_counts",
    "final_windows",
    "run_available_now",
    "sample_events",
]


def _simulated_events(config) -> list[dict]:
    """The events `config` generates, each event_id once."""
    from clickstream.source.simulator import Simulator

    return unique_events(Simulator(config).records())


# --- 03.1 to 03.3: counts with Spark -------------------------------------------------------


def sample_events(config, sample_size: int) -> list[dict]:
    """The valid events among the first `sample_size` records `config` generates."""
    from itertools import islice

    from clickstream.source.simulator import Simulator

    records = islice(Simulator(config).records(), sample_size)
    return [r.event for r in records if r.kind == "valid"]


def check_page_views_per_country(answer: Any, config, sample_size: int) -> None:
    """Exercise 03.1: {country: page views} among the sample's events, counted with Spark."""
    if hasattr(answer, "to_dict") and not isinstance(answer, Mapping):
        raise ExerciseError(
            f"expected a dict {{country: count}}, got a {type(answer).__name__}: turn it into a "
            "dict (the rows of a Spark result with collect(), a pandas Series with .to_dict())"
        )
    need(
        isinstance(answer, Mapping),
        f"expected a dict {{country: count}}, got {type(answer).__name__}; collect the rows of "
        "your result into a dict",
    )
    sample = sample_events(config, sample_size)
    expected = dict(Counter(e.get("country") for e in sample if e["event_type"] == "page_view"))
    every_type = dict(Counter(e.get("country") for e in sample))
    got = dict(answer)
    if got == expected:
        correct(f"{sum(expected.values())} page views in {len(expected)} countries")
        return
    if got == every_type:
        raise ExerciseError(
            "those are the counts of every event type: keep only the page views first "
            '(where(F.col("event_type") == "page_view")), then group by country'
        )
    missing = sorted(set(expected) - set(got), key=str)
    extra = sorted(set(got) - set(expected), key=str)
    need(
        not extra,
        f"unexpected keys {extra[:5]}: the keys should be countries, such as {sorted(expected)[:3]}",
    )
    need(not missing, f"countries missing from your answer: {missing}")
    wrong = sorted(c for c in expected if got[c] != expected[c])
    raise ExerciseError(
        f"the counts for {wrong[:5]} are off ({sum(got.values())} page views in total, "
        f"expected {sum(expected.values())}): count the rows of spark_df whose event_type is "
        '"page_view", per country'
    )


def check_device_counts(answer: Any, config) -> None:
    """Exercise 03.2: {device: number of valid events} for everything `config` generated."""
    need(
        isinstance(answer, Mapping),
        f"expected a dict {{device: count}}, got {type(answer).__name__}; collect the rows of "
        "your query's result into a dict",
    )
    expected = dict(Counter(e["device"] for e in _simulated_events(config)))
    got = {str(k): v for k, v in answer.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    need(not missing, f"devices missing from your answer: {missing}")
    need(
        not extra,
        f"unexpected keys {extra}: only valid events count (filter out rows with null fields)",
    )
    wrong = sorted(d for d in expected if got[d] != expected[d])
    if wrong:
        total_got, total = sum(got.values()), sum(expected.values())
        hint = (
            "some events are missing: did the query read the whole topic "
            "(startingOffsets earliest, availableNow)?"
            if total_got < total
            else "there are too many: were duplicates or the previous run counted twice?"
        )
        raise ExerciseError(f"the counts for {wrong} are off ({total_got} vs {total}); {hint}")
    correct(f"{len(expected)} devices, {sum(expected.values())} events")


def check_window_counts(answer: Any, config, window_s: int) -> None:
    """Exercise 03.3: {(window_start, event_type): count} in `window_s`-second tumbling windows."""
    from clickstream.source.simulator import Simulator, compute_ground_truth

    need(
        isinstance(answer, Mapping),
        f"expected a dict {{(window_start, event_type): count}}, got {type(answer).__name__}",
    )
    try:
        got = {(as_utc(start), etype): n for (start, etype), n in answer.items()}
    except (TypeError, ValueError) as exc:
        raise ExerciseError(
            f"keys should be (window_start, event_type) pairs; could not read them ({exc})"
        ) from None
    truth = compute_ground_truth(Simulator(config).records(), config)
    expected = truth.window_counts(window_s)
    if got == expected:
        correct(f"{len(expected)} (window, event_type) counts in {window_s}-second windows")
        return
    starts_got = sorted({s for s, _ in got})
    starts = sorted({s for s, _ in expected})
    if len(starts_got) != len(starts):
        span = (starts_got[1] - starts_got[0]).total_seconds() if len(starts_got) > 1 else None
        raise ExerciseError(
            f"you have {len(starts_got)} windows, expected {len(starts)}"
            + (
                f"; yours are {span:.0f} s apart, the exercise asks for {window_s} s"
                if span
                else ""
            )
        )
    if sum(got.values()) != sum(expected.values()):
        raise ExerciseError(
            f"your windows hold {sum(got.values())} events in total, expected "
            f"{sum(expected.values())}: count valid events only, over the whole topic"
        )
    raise ExerciseError(
        "the totals match but some (window, event_type) counts differ: group by "
        "window(event_ts, ...) and event_type, using the event time, not the Kafka timestamp"
    )


# --- 03.4: a windowed count with a watermark, in append mode ------------------------------


def final_windows(event_times: Iterable[str], window_s: int, delay_s: float) -> dict[datetime, int]:
    """{window start: events} of the tumbling windows of `window_s` that are final once every
    event is in: Spark's rule for append mode, a window comes out when the watermark (the
    newest event time minus `delay_s`) has reached its end. Assumes nothing arrived late."""
    times = [event_us(t) for t in event_times]
    if not times:
        return {}
    watermark = max(times) - round(delay_s * US)
    width = window_s * US
    counts = Counter(t - t % width for t in times)
    return {from_us(s): n for s, n in sorted(counts.items()) if s + width <= watermark}


def _windowed_count_plan(answer: Any) -> str:
    """The plan of the learner's windowed count, once it has the operators and columns needed."""
    df = streaming_answer(answer, "the windowed count")
    plan = plan_text(df)
    need_operator(
        plan,
        ("EventTimeWatermark",),
        "the plan has no watermark (EventTimeWatermark): add .withWatermark('event_ts', ...) "
        "before the groupBy, or Spark never knows when a window is final",
    )
    need_operator(
        plan,
        ("StateStoreSave",),
        "the plan has no streaming aggregation (StateStoreSave): group by "
        "F.window('event_ts', ...) and count",
    )
    need_columns(
        df,
        ("window_start", "count"),
        "select F.col('window.start').alias('window_start') and 'count'",
    )
    return plan


def _final_windows_hint(
    got: Counter, times: list[str], plan: str, window_s: int, delay_s: float
) -> str:
    """What is wrong with the windows `got`: the delay, the window length, or the first window
    that differs."""
    expected = final_windows(times, window_s, delay_s)
    hint = delay_hint(plan, delay_s)
    if hint is None:
        for other in (10, 15, 20, 60, 120, 300):
            if other != window_s and dict(got) == final_windows(times, other, delay_s):
                hint = f"those are {other}-second windows, the exercise asks for {window_s} s"
                break
    if hint is None and not got:
        hint = (
            "no window came out: in append mode a window comes out once the watermark has "
            f"passed its end; check the window length ({window_s} s) and the delay ({delay_s:g} s)"
        )
    if hint is None:
        first = min(set(got) ^ set(expected) or {w for w in expected if got[w] != expected[w]})
        hint = (
            f"window {hms(first)}: yours {got.get(first, 'missing')}, expected "
            f"{expected.get(first, 'not final yet')}"
            + (
                " (count valid events only: only_valid(parsed))"
                if first in expected and got.get(first, 0) > expected[first]
                else ""
            )
        )
    return hint


def check_final_windows(answer: Any, config, window_s: int = 30, delay_s: float = 20) -> None:
    """Exercise 03.4: a streaming count of valid events per `window_s`-second window with a
    `delay_s`-second watermark; run in append mode, it must emit exactly the final windows."""
    plan = _windowed_count_plan(answer)
    got: Counter = Counter()
    for batch in run_available_now(answer.select("window_start", "count"), "append"):
        for row in batch:
            got[as_utc(row["window_start"])] += row["count"]
    times = [e["event_time"] for e in _simulated_events(config)]
    expected = final_windows(times, window_s, delay_s)
    if dict(got) == expected:
        every = {event_us(t) // (window_s * US) for t in times}
        correct(
            f"{len(expected)} final {window_s}-second windows, {sum(expected.values())} events; "
            f"{len(every) - len(expected)} more still open, kept in Spark's state"
        )
        return
    hint = _final_windows_hint(got, times, plan, window_s, delay_s)
    raise ExerciseError(f"the final windows are not right yet: {hint}.")
