"""Exercise checks of notebook 09, operating the job: lag read from a checkpoint, the
micro-batches of availableNow with maxOffsetsPerTrigger, and how long catching up takes.

The expected answers are computed with plain Python (Spark's rules written out), never by Spark
itself, so a check is independent of what it grades; the notebook shows that the rules agree
with Spark.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from clickstream.course.checks import ExerciseError, attempt, call_answer, correct, is_int, need

__all__ = [
    "attempt",
    "catch_up_seconds",
    "check_catch_up",
    "check_checkpoint_lag",
    "check_micro_batches",
    "plan_batches",
    "write_spark_checkpoint",
]


# --- 09.1 lag from a checkpoint ----------------------------------------------------------


def write_spark_checkpoint(
    directory: str | Path, topic: str, batches: list[Mapping[int, int]], committed: int
) -> Path:
    """A Spark checkpoint laid out as Structured Streaming writes it, for exercises and tests.

    `batches[N]` are the end offsets ({partition: offset}) batch N was planned to read up to
    (`offsets/N`); batches 0 to `committed` also have `commits/N`. Each file has its `.N.crc`
    checksum file beside it, as Spark's do.
    """
    root = Path(directory)
    for sub in ("offsets", "commits", "sources/0"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "metadata").write_text('{"id":"00000000-0000-0000-0000-000000000009"}\n')
    for batch_id, ends in enumerate(batches):
        meta = {"batchWatermarkMs": 0, "batchTimestampMs": 1795910400000 + batch_id, "conf": {}}
        source = {topic: {str(p): int(o) for p, o in sorted(ends.items())}}
        text = f"v1\n{json.dumps(meta)}\n{json.dumps(source, separators=(',', ':'))}"
        (root / "offsets" / str(batch_id)).write_text(text)
        (root / "offsets" / f".{batch_id}.crc").write_bytes(b"crc\x00")
        if batch_id <= committed:
            (root / "commits" / str(batch_id)).write_text('v1\n{"nextBatchWatermarkMs":0}')
            (root / "commits" / f".{batch_id}.crc").write_bytes(b"crc\x00")
    return root


def _growing(partitions: int, batches: int, step: int) -> list[dict[int, int]]:
    return [{p: (b + 1) * (step + 7 * p) for p in range(partitions)} for b in range(batches)]


# (what the case shows, end offsets per planned batch, last committed batch, topic end offsets)
_LAG_CASES = [
    (
        "three batches, all committed",
        _growing(3, 3, 100),
        2,
        {0: 340, 1: 331, 2: 400},
    ),
    (
        "batch 3 planned (offsets/3) but not committed (no commits/3)",
        _growing(3, 4, 100),
        2,
        {0: 500, 1: 500, 2: 500},
    ),
    (
        "twelve batches: batch ids are numbers, '11' comes after '9'",
        _growing(2, 12, 50),
        11,
        {0: 650, 1: 700},
    ),
    (
        "partition 3 was added to the topic after the last batch",
        _growing(3, 2, 60),
        1,
        {0: 150, 1: 140, 2: 160, 3: 25},
    ),
]


def _expected_lag(batches, committed: int, ends: Mapping[int, int]) -> dict[int, int]:
    position = batches[committed]
    return {p: end - position.get(p, 0) for p, end in sorted(ends.items())}


def _lag_hint(got: dict, batches, committed: int, ends: Mapping[int, int], case: str) -> str:
    for wrong in range(len(batches)):
        if wrong != committed and got == _expected_lag(batches, wrong, ends):
            if wrong > committed:
                return (
                    f"you used offsets/{wrong}, but batch {wrong} has no commits/{wrong}: it was "
                    "planned, not finished (a restart runs it again). The position is the end "
                    "offsets of the newest batch that has a commits/N file"
                )
            return (
                f"you used offsets/{wrong}, an older batch. Sort the batch ids as numbers "
                "(int(name)), not as text: '11' < '9' as strings"
            )
    return (
        f"in the case '{case}' the lag should be {_expected_lag(batches, committed, ends)}, "
        f"not {got}: lag = end offset - the offset in the last line of offsets/N, where N is "
        "the newest batch with a commits/N file"
    )


def _check_example_checkpoints(answer: Callable) -> None:
    """Try the learner's function on each of `_LAG_CASES`, written as a Spark checkpoint."""
    topic = "clicks"
    with tempfile.TemporaryDirectory(prefix="clickstream-exercise-") as tmp:
        for index, (case, batches, committed, ends) in enumerate(_LAG_CASES):
            directory = write_spark_checkpoint(
                Path(tmp) / f"case{index}", topic, batches, committed
            )
            got = call_answer(answer, f"case '{case}'", directory, topic, dict(ends))
            need(
                isinstance(got, Mapping),
                f"expected a dict {{partition: lag}}, got {type(got).__name__}",
            )
            need(
                all(is_int(p) for p in got),
                f"partitions should be ints, got keys {sorted(map(repr, got))[:4]}: "
                "convert the checkpoint's keys with int(...)",
            )
            expected = _expected_lag(batches, committed, ends)
            missing = sorted(set(expected) - set(got))
            if missing and index == 3:
                raise ExerciseError(
                    f"partition {missing[0]} is missing: it is not in the checkpoint because it "
                    "was added to the topic after the last batch; the job has read none of it, "
                    "so its lag is its whole end offset"
                )
            need(not missing, f"partitions {missing} are missing from your answer ({case})")
            if dict(got) != expected:
                raise ExerciseError(_lag_hint(dict(got), batches, committed, ends, case))


def _check_real_checkpoint(answer: Callable, checkpoint: str | Path, bootstrap: str) -> int:
    """Compare the learner's function with `clickstream lag` on a job's own checkpoint; return
    the number of partitions compared."""
    from clickstream.process.lag import checkpoint_lag

    rows = checkpoint_lag(checkpoint, bootstrap)
    spark_dir = Path(checkpoint)
    spark_dir = spark_dir / "spark" if (spark_dir / "spark" / "offsets").is_dir() else spark_dir
    for topic_name in sorted({r.topic for r in rows}):
        ends = {r.partition: r.end for r in rows if r.topic == topic_name}
        expected = {r.partition: r.lag for r in rows if r.topic == topic_name}
        got = call_answer(answer, "the notebook's checkpoint", spark_dir, topic_name, ends)
        need(
            dict(got) == expected,
            f"on the notebook's own checkpoint ({topic_name}) your lags are {dict(got)}, "
            f"`clickstream lag` says {expected}",
        )
    return len(rows)


def check_checkpoint_lag(
    answer: Any, checkpoint: str | Path | None = None, bootstrap: str | None = None
) -> None:
    """Exercise 09.1: `lag_per_partition(checkpoint, topic, end_offsets) -> {partition: lag}`.

    Tried on example checkpoints (`write_spark_checkpoint`), then, if `checkpoint` and
    `bootstrap` are given, on that real checkpoint against `clickstream.process.lag.checkpoint_lag`.
    """
    need(
        callable(answer),
        "expected the function lag_per_partition(checkpoint, topic, end_offsets), got "
        f"{type(answer).__name__}",
    )
    _check_example_checkpoints(answer)
    real = ""
    if checkpoint is not None and bootstrap is not None:
        partitions = _check_real_checkpoint(answer, checkpoint, bootstrap)
        real = f", and the notebook's checkpoint agrees with `clickstream lag` ({partitions} partitions)"
    correct(f"{len(_LAG_CASES)} example checkpoints{real}")


# --- 09.2 micro-batches with maxOffsetsPerTrigger -----------------------------------------


def plan_batches(backlog: Mapping[int, int], cap: int | None) -> list[int]:
    """Records per micro-batch when availableNow drains `backlog` ({partition: records}).

    Spark's Kafka source splits `cap` (maxOffsetsPerTrigger) over the partitions in proportion
    to what each still has to read, rounding each share down (up when it is below 1, so that a
    small partition is never starved), and never beyond a partition's end.
    """
    left = {p: n for p, n in backlog.items() if n > 0}
    if not left:
        return []
    if cap is None:
        return [sum(left.values())]
    sizes = []
    while left:
        total = sum(left.values())
        taken = {}
        for p, n in left.items():
            share = cap * (n / total)
            taken[p] = min(n, math.ceil(share) if share < 1 else math.floor(share))
        sizes.append(sum(taken.values()))
        left = {p: n - taken[p] for p, n in left.items() if n - taken[p] > 0}
    return sizes


_BATCH_CASES = [
    ({0: 1000}, 250),
    ({0: 1001}, 250),
    ({0: 800, 1: 700, 2: 500}, None),
    ({0: 0, 1: 0}, 100),
    ({0: 1370, 1: 1025, 2: 605}, 1000),
    ({0: 900, 1: 600, 2: 300, 3: 200}, 400),
    ({0: 5000, 1: 1}, 1000),
]


def check_micro_batches(
    answer: Any,
    backlog: Mapping[int, int] | None = None,
    measured: Mapping[int | None, int] | None = None,
) -> None:
    """Exercise 09.2: `micro_batches(backlog, cap) -> int`, as availableNow will run them.

    Tried on fixed cases, then on the notebook's `backlog` with the caps it `measured`
    ({cap: number of batches Spark ran}).
    """
    need(
        callable(answer),
        f"expected the function micro_batches(backlog, cap), got {type(answer).__name__}",
    )
    cases = [(dict(b), c, len(plan_batches(b, c))) for b, c in _BATCH_CASES]
    if backlog is not None and measured:
        cases += [(dict(backlog), cap, n) for cap, n in measured.items()]
    for backlog_case, cap, expected in cases:
        what = f"backlog {backlog_case}, cap {cap}"
        got = call_answer(answer, what, dict(backlog_case), cap)
        need(is_int(got), f"expected an int (the number of batches), got {got!r} for {what}")
        if got == expected:
            continue
        total = sum(backlog_case.values())
        if total == 0:
            hint = "there is nothing to read, so there is no batch at all"
        elif cap is None:
            hint = "without a cap availableNow reads the whole backlog in one batch"
        elif got == math.ceil(total / cap):
            hint = (
                "that is ceil(total / cap), as if every batch held exactly `cap` records. Spark "
                "gives each partition floor(cap x its share of what is left) records (at least 1 "
                "if it has any left), so a batch usually holds a few records fewer than the cap "
                "and the remainder can need one more batch: simulate it batch by batch"
            )
        else:
            hint = (
                "simulate the batches: in each, every partition with records left gets "
                "floor(cap x left_p / total_left) (ceil if that is below 1), at most what it has"
            )
        raise ExerciseError(f"for {what} Spark runs {expected} batches, not {got}: {hint}")
    extra = f", including the {len(measured)} runs measured above" if backlog and measured else ""
    correct(f"{len(cases)} backlogs and caps{extra}")


# --- 09.3 catching up ------------------------------------------------------------------


def catch_up_seconds(lag: float, input_rate: float, processing_rate: float) -> float:
    """Seconds until a job `lag` records behind catches up (math.inf if it never does)."""
    if lag <= 0:
        return 0.0
    if processing_rate <= input_rate:
        return math.inf
    return lag / (processing_rate - input_rate)


_CATCH_UP_CASES = [
    (12_000, 100.0, 400.0),
    (0, 50.0, 200.0),
    (90_000, 1_000.0, 2_500.0),
    (5_000, 200.0, 200.0),
    (5_000, 300.0, 200.0),
]


def check_catch_up(answer: Any) -> None:
    """Exercise 09.3: `catch_up(lag, input_rate, processing_rate) -> seconds` (math.inf: never)."""
    need(
        callable(answer),
        "expected the function catch_up(lag, input_rate, processing_rate), got "
        f"{type(answer).__name__}",
    )
    for lag, rate_in, rate_proc in _CATCH_UP_CASES:
        what = f"lag {lag:,} records, {rate_in:g} records/s in, {rate_proc:g} records/s processed"
        got = call_answer(answer, what, lag, rate_in, rate_proc)
        expected = catch_up_seconds(lag, rate_in, rate_proc)
        need(
            isinstance(got, (int, float)) and not isinstance(got, bool),
            f"expected a number of seconds, got {got!r} for {what}",
        )
        if math.isinf(expected):
            need(
                math.isinf(got) and got > 0,
                f"for {what} the job never catches up (it processes no faster than records "
                f"arrive): return math.inf, not {got!r}",
            )
            continue
        if math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9):
            continue
        if rate_proc and math.isclose(got, lag / rate_proc, rel_tol=1e-9):
            hint = (
                "that ignores the records that keep arriving while it catches up: the lag "
                "shrinks only by processing_rate - input_rate per second"
            )
        else:
            hint = "the lag shrinks by (processing_rate - input_rate) records per second"
        raise ExerciseError(f"for {what} it takes {expected:g} s, not {got!r}: {hint}")
    correct(f"{len(_CATCH_UP_CASES)} cases, including two where the job never catches up")
