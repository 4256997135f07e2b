"""Exercise checks where the learner writes the Spark query itself (notebooks 03 to 06).

The answer is a streaming DataFrame, not a number. A check makes sure it is one, reads its
plan for the operators the exercise is about (a watermark, a state store, a session window; no
Python UDF), runs it over what the topic holds with `availableNow` in the output mode the
exercise names, and compares the rows with ground truth computed from the simulator's records
in plain Python, never with `clickstream.process.pipeline` or the streaming job. Same contract as
`clickstream.exercises`: "✓ correct", or an `ExerciseError` that says in one sentence what is
wrong.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from clickstream.exercises import ExerciseError, _as_utc, _correct, _need, attempt
from clickstream.exercises_stateful import _US, _dt, _us, gap_sessions, job_outcome, unique_events

__all__ = [
    "ExerciseError",
    "attempt",
    "check_contract_reasons",
    "check_final_windows",
    "check_unique_events",
    "check_user_sessions",
    "closed_sessions",
    "contract_reasons",
    "final_windows",
    "plan_text",
    "run_available_now",
]

# Reasons a column expression over `from_json`'s columns can tell exactly. Records that are not
# JSON objects, or have a field of the wrong type, need the job's second, VARIANT parse.
EXPRESSIBLE = ("missing_field", "unknown_event_type", "bad_event_time")
_PYTHON_UDF = ("BatchEvalPython", "ArrowEvalPython", "PythonUDF")
_UNITS_S = {"day": 86400, "hour": 3600, "minute": 60, "second": 1, "millisecond": 1e-3}


# --- running a learner's query -----------------------------------------------------------


def _streaming(answer: Any, what: str):
    from pyspark.sql import DataFrame

    _need(
        isinstance(answer, DataFrame),
        f"expected a streaming DataFrame ({what}), got {type(answer).__name__}: return the "
        "DataFrame itself, before .writeStream",
    )
    _need(
        answer.isStreaming,
        f"this is a batch DataFrame: build {what} on the stream (spark.readStream), so that "
        "Spark runs it incrementally and keeps its state between micro-batches",
    )
    return answer


def plan_text(df) -> str:
    """The plans `df.explain(extended=True)` prints: parsed, analyzed, optimized, physical."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        df.explain(extended=True)
    return buffer.getvalue()


def _need_operator(plan: str, names: Sequence[str], message: str) -> None:
    _need(any(name in plan for name in names), message)


def _plan_delay_s(plan: str) -> float | None:
    """The watermark delay the plan's EventTimeWatermark names, in seconds (None if none)."""
    match = re.search(r"EventTimeWatermark [^\n]*?, ([^\n]+)", plan)
    if match is None:
        return None
    total = 0.0
    for number, unit in re.findall(
        r"(\d+(?:\.\d+)?) (day|hour|minute|second|millisecond)", match[1]
    ):
        total += float(number) * _UNITS_S[unit]
    return total


def _need_columns(df, names: Sequence[str], hint: str) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ExerciseError(
            f"the result has no column {missing[0]!r} (it has {df.columns}): {hint}"
        )


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "getMessage", lambda: None)() or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def run_available_now(df, mode: str) -> list[list]:
    """Run streaming `df` over what its source holds now (`availableNow`) in output `mode`,
    under a query name and a checkpoint of its own; return each micro-batch's rows."""
    from pyspark.errors import AnalysisException, StreamingQueryException

    batches: list[list] = []
    checkpoint = tempfile.mkdtemp(prefix="clickstream-exercise-")
    try:
        try:
            query = (
                df.writeStream.outputMode(mode)
                .foreachBatch(lambda batch, _: batches.append(batch.collect()))
                .queryName(f"exercise_{uuid.uuid4().hex[:10]}")
                .option("checkpointLocation", checkpoint)
                .trigger(availableNow=True)
                .start()
            )
        except AnalysisException as exc:
            raise ExerciseError(
                f"Spark refuses to run it in {mode} mode: {_first_line(exc)}"
            ) from None
        try:
            query.awaitTermination()
        except StreamingQueryException as exc:
            raise ExerciseError(f"the query failed while running: {_first_line(exc)}") from None
        finally:
            query.stop()
    finally:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return batches


def _delay_hint(plan: str, delay_s: float) -> str | None:
    delay = _plan_delay_s(plan)
    if delay is not None and abs(delay - delay_s) > 1e-6:
        return f"your watermark delay is {delay:g} s, the exercise asks for {delay_s:g} s"
    return None


def _hms(moment: datetime) -> str:
    return f"{moment:%H:%M:%S}"


# --- 03: a windowed count with a watermark, in append mode --------------------------------


def final_windows(event_times: Iterable[str], window_s: int, delay_s: float) -> dict[datetime, int]:
    """{window start: events} of the tumbling windows of `window_s` that are final once every
    event is in: Spark's rule for append mode, a window comes out when the watermark (the
    newest event time minus `delay_s`) has reached its end. Assumes nothing arrived late."""
    times = [_us(t) for t in event_times]
    if not times:
        return {}
    watermark = max(times) - round(delay_s * _US)
    width = window_s * _US
    counts = Counter(t - t % width for t in times)
    return {_dt(s): n for s, n in sorted(counts.items()) if s + width <= watermark}


def _valid_event_times(config) -> list[str]:
    from clickstream.source.simulator import Simulator

    return [e["event_time"] for e in unique_events(Simulator(config).records())]


def check_final_windows(answer: Any, config, window_s: int = 30, delay_s: float = 20) -> None:
    """Exercise 03.4: a streaming count of valid events per `window_s`-second window with a
    `delay_s`-second watermark; run in append mode, it must emit exactly the final windows."""
    df = _streaming(answer, "the windowed count")
    plan = plan_text(df)
    _need_operator(
        plan,
        ("EventTimeWatermark",),
        "the plan has no watermark (EventTimeWatermark): add .withWatermark('event_ts', ...) "
        "before the groupBy, or Spark never knows when a window is final",
    )
    _need_operator(
        plan,
        ("StateStoreSave",),
        "the plan has no streaming aggregation (StateStoreSave): group by "
        "F.window('event_ts', ...) and count",
    )
    _need_columns(
        df,
        ("window_start", "count"),
        "select F.col('window.start').alias('window_start') and 'count'",
    )
    got: Counter = Counter()
    for batch in run_available_now(df.select("window_start", "count"), "append"):
        for row in batch:
            got[_as_utc(row["window_start"])] += row["count"]
    times = _valid_event_times(config)
    expected = final_windows(times, window_s, delay_s)
    if dict(got) == expected:
        every = {_us(t) // (window_s * _US) for t in times}
        _correct(
            f"{len(expected)} final {window_s}-second windows, {sum(expected.values())} events; "
            f"{len(every) - len(expected)} more still open, kept in Spark's state"
        )
        return
    hint = _delay_hint(plan, delay_s)
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
            f"window {_hms(first)}: yours {got.get(first, 'missing')}, expected "
            f"{expected.get(first, 'not final yet')}"
            + (
                " (count valid events only: only_valid(parsed))"
                if first in expected and got.get(first, 0) > expected[first]
                else ""
            )
        )
    raise ExerciseError(f"the final windows are not right yet: {hint}.")


# --- 04: de-duplication within the watermark, the job's first stateful step -------------


def check_unique_events(answer: Any, arrivals, delay_s: float, batch_size: int) -> None:
    """Exercise 04.3: a stream de-duplicated by event_id within a `delay_s`-second watermark,
    read in micro-batches of `batch_size` records from one partition; in append mode it must
    emit each event once, except those the watermark drops as late."""
    df = _streaming(answer, "the de-duplicated stream")
    plan = plan_text(df)
    _need_operator(
        plan,
        ("EventTimeWatermark",),
        "the plan has no watermark (EventTimeWatermark): call .withWatermark('event_ts', ...) "
        "before de-duplicating",
    )
    _need_operator(
        plan,
        ("StreamingDeduplicateWithinWatermark", "StreamingDeduplicate"),
        "the plan has no de-duplication (StreamingDeduplicateWithinWatermark): call "
        ".dropDuplicatesWithinWatermark(['event_id']) after the watermark",
    )
    _need_columns(df, ("event_id",), "keep the event columns, at least event_id")
    batches = run_available_now(df.select("event_id"), "append")
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
        _correct(
            f"{len(expected)} events kept, {len(outcome.late_ids)} dropped as late and "
            f"{len(outcome.duplicate_ids)} copies removed, as the job does"
        )
        return
    hint = _delay_hint(plan, delay_s)
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
    raise ExerciseError(f"the de-duplicated stream is not right yet: {hint}.")


# --- 05: session windows in append mode --------------------------------------------------


def closed_sessions(
    events: Iterable[dict], gap_s: float, delay_s: float, by_session_id: bool = False
) -> list[dict]:
    """The gap-based sessions (`gap_sessions`) that a `delay_s`-second watermark has closed once
    every event is in: in append mode Spark emits a session when the watermark (the newest
    event time minus the delay) reaches its end, the last event plus the gap."""
    events = list(events)
    if not events:
        return []
    watermark = _dt(max(_us(e["event_time"]) for e in events) - round(delay_s * _US))
    return [
        s
        for s in gap_sessions(events, gap_s, by_session_id=by_session_id)
        if s["window_end"] <= watermark
    ]


def _session_keys(rows: Iterable[dict]) -> set[tuple]:
    return {(r["user_id"], r["window_start"], r["window_end"], r["events"]) for r in rows}


def check_user_sessions(answer: Any, records, gap_s: float = 60, delay_s: float = 60) -> None:
    """Exercise 05.3: sessions per user (a `gap_s`-second session window over the events, each
    event_id once) with a `delay_s`-second watermark; in append mode it must emit exactly the
    sessions the watermark has closed. Assumes no event is later than the delay."""
    df = _streaming(answer, "the sessions")
    plan = plan_text(df)
    _need_operator(
        plan,
        ("EventTimeWatermark",),
        "the plan has no watermark (EventTimeWatermark): call .withWatermark('event_ts', ...) "
        "first, or a session never ends",
    )
    _need_operator(
        plan,
        ("SessionWindowStateStoreSave", "MergingSessions"),
        "the plan has no session window (SessionWindowStateStoreSave): group by user_id and "
        "F.session_window('event_ts', ...)",
    )
    _need_columns(
        df,
        ("user_id", "session_start", "session_end", "events"),
        "select user_id, the window's start and end as session_start and session_end, and events",
    )
    got = set()
    for batch in run_available_now(
        df.select("user_id", "session_start", "session_end", "events"), "append"
    ):
        for r in batch:
            got.add(
                (r["user_id"], _as_utc(r["session_start"]), _as_utc(r["session_end"]), r["events"])
            )
    distinct = unique_events(records)
    expected = _session_keys(closed_sessions(distinct, gap_s, delay_s))
    if got == expected:
        still_open = len(gap_sessions(distinct, gap_s, by_session_id=False)) - len(expected)
        _correct(
            f"{len(expected)} sessions closed by the watermark, {still_open} still open (in the "
            "state, waiting for more events or for the watermark)"
        )
        return
    copies = [r.event for r in records if r.kind in ("valid", "late", "duplicate")]
    hint = _delay_hint(plan, delay_s)
    if hint is None and got == _session_keys(closed_sessions(copies, gap_s, delay_s)):
        hint = (
            "the copies are counted too: de-duplicate by event_id "
            "(dropDuplicatesWithinWatermark) before the session window"
        )
    if hint is None and got == _session_keys(closed_sessions(distinct, gap_s, delay_s, True)):
        hint = "those are sessions per (user_id, session_id): group by user_id alone"
    if hint is None:
        for other in (30, 60, 90, 120, 300, 1800):
            if other != gap_s and got == _session_keys(closed_sessions(distinct, other, delay_s)):
                hint = f"those sessions have a gap of {other} s, the exercise asks for {gap_s:g} s"
                break
    if hint is None:
        first = min(got ^ expected, key=lambda s: (s[1], s[0]))
        side = "yours has" if first in got else "yours lacks"
        hint = (
            f"{side} the session of {first[0]} from {_hms(first[1])} to {_hms(first[2])} with "
            f"{first[3]} events ({len(got)} sessions given, {len(expected)} expected)"
        )
    raise ExerciseError(f"the sessions are not right yet: {hint}.")


# --- 06: a contract check as a column expression -----------------------------------------


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
    df = _streaming(answer, "the checked stream")
    plan = plan_text(df)
    udf = next((name for name in _PYTHON_UDF if name in plan), None)
    _need(
        udf is None,
        f"the reason comes from a Python UDF (the plan runs {udf}): write it with column "
        "functions (F.when, isin, rlike, F.try_to_timestamp), which run in the JVM",
    )
    _need_columns(df, ("offset", "reason"), "keep the Kafka offset and add a column reason")
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
        _correct(
            f"{len(expected)} records judged as the contract does ({rejected} rejected), "
            "with column expressions only"
        )
        return
    first = wrong[0]
    raise ExerciseError(
        f"{len(wrong)} reasons differ; at offset {first} yours is {got[first]!r}, the "
        f"contract's {expected[first]!r}: {_reason_hint(expected[first])}."
    )
