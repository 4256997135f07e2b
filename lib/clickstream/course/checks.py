"""What every exercise check shares, in the style of apache/flink-training.

Each exercise in a notebook is a function the learner completes; until then it raises
`NotImplementedError` naming the exercise and where its solution is. The notebook runs it
through `attempt`, which reports "not attempted yet" instead of stopping the notebook, then
hands the answer to a `check_*` function of the notebook's module. A check prints "✓ correct"
or raises `ExerciseError` with a message that says what is wrong and how to get closer. The
solution notebooks call the same checks directly, so CI proves every reference solution passes
them.

The second half runs a learner's streaming query (notebooks 03 to 06): it makes sure the answer
is a streaming DataFrame, reads its plan for the operators the exercise is about, and runs it
over what the topic holds with `availableNow` in the output mode the exercise names.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

CORRECT = "✓ correct"


class ExerciseError(AssertionError):
    """An answer is not right yet; the message says why."""


def attempt(exercise: Callable[[], Any], check: Callable[..., Any], *args, **kwargs) -> bool | None:
    """Run `exercise()` and check its answer with `check(answer, *args, **kwargs)`.

    Returns None if the exercise is not attempted yet (it raised NotImplementedError), True if
    the answer is correct, False if not (the reason is printed). Either way the notebook goes
    on; errors in the learner's own code still raise, with their traceback.
    """
    try:
        answer = exercise()
    except NotImplementedError as exc:
        print(f"… not attempted yet: {exc}")
        return None
    try:
        check(answer, *args, **kwargs)
    except ExerciseError as exc:
        print(f"✗ not right yet: {exc}")
        return False
    return True


def correct(detail: str = "") -> None:
    """Print "✓ correct", followed by `detail` when given."""
    print(f"{CORRECT}{': ' + detail if detail else ''}")


def need(condition: bool, message: str) -> None:
    """Raise ExerciseError(`message`) unless `condition` holds."""
    if not condition:
        raise ExerciseError(message)


def is_int(value: Any) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_answer(answer: Any, what: str) -> int:
    """`answer` if it is an int; otherwise an ExerciseError that names `what` was expected."""
    need(
        is_int(answer),
        f"expected {what} as an int, got {type(answer).__name__} {answer!r}"
        + (" (convert it with int(...))" if isinstance(answer, (str, float)) else ""),
    )
    return answer


def as_utc(value: Any) -> datetime:
    """A window start the learner gave (a datetime, naive or aware, or ISO text) as aware UTC."""
    if isinstance(value, str):
        from clickstream.events import parse_event_time

        return parse_event_time(value if value[-1:] in "Z+-" else value.replace(" ", "T") + "Z")
    if isinstance(value, datetime):
        # Spark hands back naive datetimes in the session time zone, which the course sets to UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    raise ExerciseError(f"window starts should be datetimes, got {type(value).__name__}")


def hms(moment: datetime) -> str:
    """'10:15:00': a time of day for a message."""
    return f"{moment:%H:%M:%S}"


def call_answer(function: Callable, what: str, *args) -> Any:
    """Run the learner's function; turn its exception into a message that names the case."""
    try:
        return function(*args)
    except ExerciseError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the learner, with the case
        raise ExerciseError(f"your function raised {type(exc).__name__}: {exc} ({what})") from exc


# --- running a learner's streaming query -------------------------------------------------

_UNITS_S = {"day": 86400, "hour": 3600, "minute": 60, "second": 1, "millisecond": 1e-3}


def streaming_answer(answer: Any, what: str):
    """`answer` if it is a streaming DataFrame; otherwise an ExerciseError naming `what`."""
    from pyspark.sql import DataFrame

    need(
        isinstance(answer, DataFrame),
        f"expected a streaming DataFrame ({what}), got {type(answer).__name__}: return the "
        "DataFrame itself, before .writeStream",
    )
    need(
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


def need_operator(plan: str, names: Sequence[str], message: str) -> None:
    """Raise ExerciseError(`message`) unless the plan runs one of the operators `names`."""
    need(any(name in plan for name in names), message)


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


def need_columns(df, names: Sequence[str], hint: str) -> None:
    """Raise ExerciseError naming the first of `names` that `df` lacks, and `hint`."""
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


def delay_hint(plan: str, delay_s: float) -> str | None:
    """A hint when the plan's watermark delay is not the `delay_s` the exercise asks for."""
    delay = _plan_delay_s(plan)
    if delay is not None and abs(delay - delay_s) > 1e-6:
        return f"your watermark delay is {delay:g} s, the exercise asks for {delay_s:g} s"
    return None
