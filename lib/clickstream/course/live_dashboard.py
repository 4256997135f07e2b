"""Exercise checks of notebook 08, the live dashboard: numbers read from the serving store, and
a panel of the dashboard written by the learner.

The panel's check really renders it: `render_panel` runs it in Streamlit's headless test runner
(`streamlit.testing.v1.AppTest`, the app's script in this process, no browser), once on the
notebook's store and once on a small store with known numbers and no alerts, then reads back
what the page shows.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from clickstream.course.checks import ExerciseError, attempt, correct, need

__all__ = [
    "ALERT_COLUMNS",
    "attempt",
    "check_conversion",
    "check_incidents_panel",
    "check_newest_windows",
    "fill_known_store",
    "render_panel",
]

# --- 08.1 and 08.2: numbers from the serving store -----------------------------------------


def check_conversion(answer: Any, store_url: str) -> None:
    """Exercise 08.1: purchased / viewed sessions over every window of the funnel metric."""
    from clickstream.serve.store import open_store

    with open_store(store_url, readonly=True) as store:
        rows = store.read("funnel")
    viewed = sum(r["viewed"] or 0 for r in rows)
    purchased = sum(r["purchased"] or 0 for r in rows)
    need(
        isinstance(answer, (int, float)) and not isinstance(answer, bool),
        f"expected a number (a fraction such as 0.05), got {type(answer).__name__}",
    )
    expected = purchased / viewed if viewed else 0.0
    if abs(answer - expected) > 1e-9:
        if abs(answer - 100 * expected) < 1e-6:
            raise ExerciseError("that is a percentage; return the fraction (divide by 100)")
        per_window = [r["purchased"] / r["viewed"] for r in rows if r["viewed"]]
        if per_window and abs(answer - sum(per_window) / len(per_window)) < 1e-9:
            raise ExerciseError(
                "that is the mean of the per-window rates; sum purchased and viewed over all "
                "windows first, then divide once"
            )
        raise ExerciseError(
            f"{answer} is not purchased / viewed over all {len(rows)} windows of the funnel "
            "metric: read every row (no `since`, no `limit`) and sum each column"
        )
    correct(f"{int(purchased)} of {int(viewed)} sessions that viewed a product purchased")


def check_newest_windows(answer: Any, store_url: str, n: int) -> None:
    """Exercise 08.2: the traffic rows of the `n` newest windows, as `read(limit=n)` gives them."""
    from clickstream.serve.store import open_store

    need(isinstance(answer, list), f"expected a list of rows (dicts), got {type(answer).__name__}")
    with open_store(store_url, readonly=True) as store:
        expected = store.read("traffic", limit=n)
        everything = store.read("traffic")
    windows = sorted({r.get("window_start") for r in answer if isinstance(r, Mapping)})
    need(
        len(answer) != len(everything) or len(everything) == len(expected),
        "that is every window in the store; a bounded query reads only the newest ones "
        f"(limit={n})",
    )
    need(
        len(windows) == n,
        f"the rows cover {len(windows)} windows, expected the {n} newest",
    )
    need(
        answer == expected,
        f"these are not the rows of the {n} newest windows: use store.read('traffic', limit={n})",
    )
    correct(f"{len(answer)} rows in the {n} newest windows, from one bounded query")


# --- 08.3: a panel of the dashboard --------------------------------------------------------

ALERT_COLUMNS = ["kind", "status", "opened_at", "closed_at"]
RENDER_TIMEOUT_S = 60  # one script run; the first one imports Plotly and pandas' formatters

# The known store: three one-minute windows, error rates 1.0%, 2.5% and 1.5%, no alerts.
_KNOWN_WINDOWS = (
    ("2026-11-28T10:00:00Z", 400, 4),
    ("2026-11-28T10:01:00Z", 400, 10),
    ("2026-11-28T10:02:00Z", 400, 6),
)


def _page(panel, snap) -> None:
    # The whole app AppTest runs: one panel. Its body is the script, so it stays this short.
    panel(snap)


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Inside the block, the loggers named `loggers` report only critical errors."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def render_panel(panel: Callable, snap, timeout: float = RENDER_TIMEOUT_S):
    """Run `panel(snap)` as a Streamlit app in the headless test runner; return the AppTest,
    whose elements (`.subheader`, `.metric`, `.dataframe`, `.exception`...) are what it shows."""
    from streamlit.testing.v1 import AppTest

    # Creating an AppTest outside a script run logs a "missing ScriptRunContext" warning that
    # the warning itself says to ignore; keep it out of the notebook's cells.
    with _quiet("streamlit.runtime.scriptrunner_utils.script_run_context"):
        at = AppTest.from_function(_page, args=(panel, snap), default_timeout=timeout)
    return at.run()


def fill_known_store(url: str) -> None:
    """Write three windows of traffic and errors (peak error rate 2.5%) and no alert."""
    from clickstream.serve.store import open_store

    with open_store(url) as store:
        rows: dict[str, list[dict]] = {"traffic": [], "errors": []}
        for start, events, errors in _KNOWN_WINDOWS:
            minute = int(start[14:16])
            window = {"window_start": start, "window_end": f"{start[:14]}{minute + 1:02d}:00Z"}
            rows["traffic"] += [
                {**window, "event_type": "page_view", "count": events - errors},
                {**window, "event_type": "error", "count": errors},
            ]
            rows["errors"].append(
                {**window, "events": events, "errors": errors, "error_rate": errors / events}
            )
        store.write_batch(
            "known",
            0,
            rows,
            health={
                "input_rows": 1200,
                "duration_ms": 100,
                "max_event_time": "2026-11-28T10:03:30Z",
            },
        )


def _snapshot(url: str):
    from clickstream.dashboard import data as dd
    from clickstream.serve.store import open_store

    with open_store(url, readonly=True) as store:
        return dd.load_snapshot(store)


def _shown(panel: Callable, snap, where: str):
    """The panel rendered on `snap`; an exception inside it becomes the check's message."""
    with _quiet("streamlit.error_util"):  # the check names the error and the line itself
        at = render_panel(panel, snap)
    if at.exception:
        error = at.exception[0]
        lines = str(error.value).strip().splitlines()
        raised = f"{error.proto.type or 'an error'}" + (f" ({lines[0]})" if lines else "")
        raise ExerciseError(f"on {where}, the panel raised {raised}{_failing_line(error)}")
    return at


def _failing_line(error) -> str:
    """' at `code`': the panel's own line that raised, from the exception's stack trace."""
    frames = list(getattr(error, "stack_trace", None) or [])
    for index, frame in enumerate(frames[:-1]):
        if frame.rstrip().endswith("panel(snap)"):  # the frame of `_page`: the panel's is next
            code = frames[index + 1].splitlines()
            if len(code) > 1:
                return f" at `{code[1].strip()}`"
    return ""


def _metric_value(at, label: str, where: str) -> str:
    found = [m for m in at.metric if m.label == label]
    labels = [m.label for m in at.metric]
    need(
        bool(found),
        f"on {where}, the panel shows no metric labelled {label!r} (it shows {labels}): "
        f"add st.metric({label!r}, value)",
    )
    return str(found[0].value)


def _check_on(panel: Callable, snap, where: str) -> tuple[int, str]:
    """Check what the panel shows for `snap`; return (alerts, peak error rate) as shown."""
    at = _shown(panel, snap, where)
    headers = [h.value for h in at.subheader]
    need(
        "Incidents" in headers,
        f"on {where}, the panel has no subheader 'Incidents' (it has {headers}): start it "
        "with st.subheader('Incidents')",
    )
    alerts = len(snap.alerts)
    shown_alerts = _metric_value(at, "Alerts", where)
    need(
        shown_alerts.replace(",", "") == str(alerts),
        f"on {where}, the metric 'Alerts' shows {shown_alerts!r} but the snapshot holds "
        f"{alerts} alert(s): show len(snap.alerts)",
    )
    peak = f"{snap.errors['error_rate'].max():.1%}"
    shown_peak = _metric_value(at, "Peak error rate", where)
    need(
        shown_peak == peak,
        f"on {where}, the metric 'Peak error rate' shows {shown_peak!r}, expected {peak!r}: "
        "the highest snap.errors['error_rate'], formatted with f'{rate:.1%}'",
    )
    in_columns = sum(len(c.metric) for c in at.columns)
    need(
        len(at.columns) >= 2 and in_columns >= 2,
        f"on {where}, the two metrics are not side by side: put them in st.columns(2)",
    )
    need(
        len(at.dataframe) >= 1,
        f"on {where}, the panel shows no table: show the alerts with st.dataframe(...)",
    )
    table = at.dataframe[0].value
    need(
        list(table.columns) == ALERT_COLUMNS,
        f"on {where}, the table's columns are {list(table.columns)}, expected {ALERT_COLUMNS}: "
        f"select them with snap.alerts[{ALERT_COLUMNS}]",
    )
    need(
        len(table) == alerts,
        f"on {where}, the table has {len(table)} row(s) but the snapshot holds {alerts} "
        "alert(s): show one row per alert",
    )
    return alerts, peak


def check_incidents_panel(answer: Any, store_url: str) -> None:
    """Exercise 08.3: `render_incidents(snap)`, the Incidents panel, rendered for real."""
    need(
        callable(answer),
        f"expected the panel function render_incidents(snap), got {type(answer).__name__}",
    )
    try:
        inspect.signature(answer).bind(object())
    except TypeError:
        raise ExerciseError(
            "the panel must take one argument, the snapshot: def render_incidents(snap)"
        ) from None
    except ValueError:
        pass  # a callable without a signature: try it
    alerts, peak = _check_on(answer, _snapshot(store_url), "the notebook's store")
    with tempfile.TemporaryDirectory(prefix="clickstream-panel-") as folder:
        known = f"sqlite:///{Path(folder) / 'known.db'}"
        fill_known_store(known)
        known_alerts, known_peak = _check_on(
            answer, _snapshot(known), "a store with three windows and no alert"
        )
    correct(
        f"{alerts} alert(s) and a peak error rate of {peak} on the notebook's store; "
        f"{known_alerts} alerts and {known_peak} on a store with no alert"
    )
