"""Exercise checks of notebook 07, the serving layer: a writer that a replayed micro-batch
cannot double-count, and a metric read back from the serving store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from clickstream.course.checks import ExerciseError, attempt, correct, need

__all__ = [
    "BATCH_TABLE",
    "TOTALS",
    "attempt",
    "check_idempotent_writer",
    "check_store_window_counts",
]

BATCH_TABLE = """CREATE TABLE batch_counts (
    batch_id INTEGER NOT NULL, window_start TEXT NOT NULL, event_type TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (batch_id, window_start, event_type))"""
TOTALS = (
    "SELECT window_start, event_type, SUM(count) FROM batch_counts "
    "GROUP BY window_start, event_type"
)

# Partial counts of three micro-batches: (window_start, event_type, count).
_BATCHES = {
    0: [("2026-11-28T00:00:00Z", "page_view", 40), ("2026-11-28T00:00:00Z", "search", 5)],
    1: [("2026-11-28T00:00:00Z", "page_view", 12), ("2026-11-28T00:01:00Z", "page_view", 30)],
    2: [("2026-11-28T00:01:00Z", "page_view", 8), ("2026-11-28T00:01:00Z", "purchase", 2)],
}


def _expected_totals(batch_ids) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for batch_id in sorted(set(batch_ids)):
        for window_start, event_type, count in _BATCHES[batch_id]:
            key = (window_start, event_type)
            totals[key] = totals.get(key, 0) + count
    return totals


def _totals(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    return {(w, t): n for w, t, n in conn.execute(TOTALS)}


def check_idempotent_writer(answer: Any) -> None:
    """Exercise 07.1: `write(conn, batch_id, rows)` that a replayed batch cannot double-count."""
    need(
        callable(answer),
        f"expected the function write(conn, batch_id, rows), got {type(answer).__name__}",
    )
    write: Callable = answer
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(BATCH_TABLE)
        for step, batch_id in enumerate((0, 1, 1, 2), 1):
            write(conn, batch_id, list(_BATCHES[batch_id]))
            conn.commit()
            got = _totals(conn)
            expected = _expected_totals((0, 1, 1, 2)[:step])
            if got == expected:
                continue
            replayed = step == 3
            if (
                replayed
                and all(got.get(k, 0) >= v for k, v in expected.items())
                and got != expected
            ):
                raise ExerciseError(
                    "after batch 1 was written a second time (a replay), its counts were added "
                    "again. Write the rows keyed by (batch_id, window_start, event_type) with "
                    "INSERT OR REPLACE (or ON CONFLICT ... DO UPDATE SET count = excluded.count), "
                    "so a replay overwrites what the first attempt wrote."
                )
            raise ExerciseError(
                f"after batch {batch_id} the totals ({TOTALS!r}) are {got}, expected "
                f"{expected}: insert one row per (batch_id, window_start, event_type) into "
                "batch_counts with the row's count."
            )
    finally:
        conn.close()
    correct("a replayed batch overwrites its own rows; the totals stay right")


def check_store_window_counts(answer: Any, truth, event_type: str, window_s: int = 60) -> None:
    """Exercise 07.2: {window_start: count} of `event_type` as the serving store holds it."""
    from clickstream.serve.store import iso

    need(
        isinstance(answer, Mapping),
        f"expected a dict {{window_start: count}}, got {type(answer).__name__}",
    )
    expected = {
        iso(start): n
        for (start, kind), n in truth.window_counts(window_s).items()
        if kind == event_type
    }
    got = {iso(k): v for k, v in answer.items()}
    need(
        bool(got),
        "the dict is empty: read the traffic metric with store.read('traffic', "
        f"where={{'event_type': {event_type!r}}})",
    )
    other = {k for k in got if k not in expected}
    need(
        not other,
        f"windows {sorted(other)[:3]} hold no {event_type} events in the ground truth: did you "
        "filter on event_type?",
    )
    wrong = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
    need(
        not wrong,
        f"counts differ from the ground truth (yours, expected): {dict(list(wrong.items())[:3])}; "
        "each row's `count` column is the window's total, take it as it is",
    )
    missing = sorted(set(expected) - set(got))
    need(
        not missing,
        f"windows missing: {missing[:3]}; a `limit` keeps only the newest windows, drop it",
    )
    correct(
        f"{sum(got.values())} {event_type} events in {len(got)} windows, as in the ground truth"
    )
