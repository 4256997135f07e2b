"""Exercise checks of notebook 05, stateful analytics: the top products by revenue, the funnel
over whole sessions, and sessions per user as a streaming query the learner writes.

The expected answers come from `clickstream.course.truth`, computed from the simulator's
records with plain Python, never with Spark or the streaming job.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
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
from clickstream.course.truth import (
    US,
    event_us,
    from_us,
    funnel_code,
    funnel_counts,
    gap_sessions,
    product_totals,
    top_products,
    unique_events,
)

__all__ = [
    "attempt",
    "check_session_funnel",
    "check_top_revenue",
    "check_user_sessions",
    "closed_sessions",
]


# --- 05.1 the top products by revenue ------------------------------------------------------


def _revenue_answer(answer: Any) -> dict[str, float]:
    if isinstance(answer, Mapping):
        pairs = list(answer.items())
    elif isinstance(answer, (list, tuple)):
        try:
            pairs = [(p, r) for p, r in answer]
        except (TypeError, ValueError):
            raise ExerciseError(
                "expected {product_id: revenue} or a list of (product_id, revenue) pairs"
            ) from None
    else:
        raise ExerciseError(f"expected a dict {{product_id: revenue}}, got {type(answer).__name__}")
    try:
        return {str(p): float(r) for p, r in pairs}
    except (TypeError, ValueError):
        raise ExerciseError("revenues should be numbers, e.g. {'P066': 506.87}") from None


def _revenue_hint(got: dict[str, float], wrong: Iterable[str], records, distinct) -> str:
    """Why the revenues of the products `wrong` differ: duplicates, or every price summed."""
    with_copies = product_totals(
        r.event for r in records if r.kind in ("valid", "late", "duplicate")
    )
    every_price: dict[str, int] = Counter()
    for e in distinct:
        if e.get("product_id") and e.get("price") is not None:
            every_price[e["product_id"]] += round(e["price"] * 100)
    if all(abs(got[p] - with_copies[p]["revenue"]) <= 0.005 for p in wrong):
        return (
            "the stream holds duplicates (producer retries): count each event_id once "
            "(dropDuplicates(['event_id'])) before summing"
        )
    if all(abs(got[p] - every_price[p] / 100) <= 0.005 for p in wrong):
        return (
            "that sums the price of every event that carries one (views and carts too); "
            "revenue is the price of purchase events only"
        )
    return "revenue is the sum of `price` over the product's purchase events"


def check_top_revenue(answer: Any, records, n: int = 5) -> None:
    """Exercise 05.1: {product_id: revenue} of the `n` products with the most revenue, each
    event counted once."""
    got = _revenue_answer(answer)
    need(bool(got), "the answer is empty: which products earned the most?")
    distinct = unique_events(records)
    totals = product_totals(distinct)
    expected = top_products(distinct, n)
    threshold = expected[-1][1]
    unknown = [p for p in got if p not in totals]
    need(not unknown, f"{unknown[:3]} are not products that appear in the stream")
    wrong = {
        p: (r, totals[p]["revenue"])
        for p, r in got.items()
        if abs(r - totals[p]["revenue"]) > 0.005
    }
    if wrong:
        product, (yours, right) = next(iter(wrong.items()))
        hint = _revenue_hint(got, wrong, records, distinct)
        raise ExerciseError(
            f"{product} earned {right:.2f}, not {yours:.2f} ({len(wrong)} revenues differ): {hint}."
        )
    need(
        len(got) == n,
        f"{len(got)} products given, expected the top {n}: sort by revenue, descending, and "
        f"keep the first {n}",
    )
    low = [p for p, r in got.items() if r < threshold - 0.005]
    need(
        not low,
        f"{low[:3]} are not among the top {n}: the {n}th product earned {threshold:.2f}. Sort "
        "by revenue descending (F.desc('revenue')), over the whole stream, not one window",
    )
    correct(
        f"the top {n} earned {sum(got.values()):,.2f} together; "
        f"{expected[0][0]} leads with {expected[0][1]:,.2f}"
    )


# --- 05.2 the funnel over whole sessions ---------------------------------------------------


def _funnel_hint(got: tuple, expected: tuple, distinct: list[dict]) -> str:
    """Which usual mistake gives the funnel `got`: windows summed, order ignored, any view."""
    per_window = funnel_counts(distinct, 60)
    summed = tuple(sum(w[k] for w in per_window.values()) for k in range(3))
    sessions: dict = defaultdict(set)
    for e in distinct:
        code = funnel_code(e)
        if code is not None:
            sessions[(e["user_id"], e["session_id"])].add(code)
    unordered = tuple(
        sum(all(c in s for c in range(k + 1)) for s in sessions.values()) for k in range(3)
    )
    any_step = tuple(sum(k in s for s in sessions.values()) for k in range(3))
    all_views = len(
        {(e["user_id"], e["session_id"]) for e in distinct if e["event_type"] == "page_view"}
    )
    if got == summed:
        return (
            "that is the sum of the per-window funnels: a session that spans two windows counts "
            "twice. Group by (user_id, session_id) only"
        )
    if got in (unordered, any_step):
        return (
            "order matters: a cart counts only after a product view, a purchase only after a "
            "cart. Sort each session's steps by (event_ts, event_id) and walk through them"
        )
    if got[0] == all_views:
        return "`viewed` counts sessions that viewed a *product* page (product_id not null)"
    if got[0] != expected[0]:
        return f"viewed should be {expected[0]}: sessions with at least one product page view"
    return "count each session once, and the steps in order: view, then cart, then purchase"


def check_session_funnel(answer: Any, records) -> None:
    """Exercise 05.2: (viewed, carted, purchased) sessions over the whole stream, in order."""
    need(
        isinstance(answer, (tuple, list)) and len(answer) == 3,
        f"expected three numbers (viewed, carted, purchased), got {answer!r}",
    )
    try:
        got = tuple(int(x) for x in answer)
    except (TypeError, ValueError):
        raise ExerciseError(f"expected three whole numbers, got {answer!r}") from None
    distinct = unique_events(records)
    expected = funnel_counts(distinct)[None]
    if got == expected:
        correct(
            f"{expected[0]} sessions viewed a product, {expected[1]} then carted it, "
            f"{expected[2]} then purchased ({expected[2] / expected[0]:.1%} conversion)"
        )
        return
    hint = _funnel_hint(got, expected, distinct)
    raise ExerciseError(f"{got} is not the funnel {expected}: {hint}.")


# --- 05.3 session windows in append mode ---------------------------------------------------


def closed_sessions(
    events: Iterable[dict], gap_s: float, delay_s: float, by_session_id: bool = False
) -> list[dict]:
    """The gap-based sessions (`gap_sessions`) that a `delay_s`-second watermark has closed once
    every event is in: in append mode Spark emits a session when the watermark (the newest
    event time minus the delay) reaches its end, the last event plus the gap."""
    events = list(events)
    if not events:
        return []
    watermark = from_us(max(event_us(e["event_time"]) for e in events) - round(delay_s * US))
    return [
        s
        for s in gap_sessions(events, gap_s, by_session_id=by_session_id)
        if s["window_end"] <= watermark
    ]


def _session_keys(rows: Iterable[dict]) -> set[tuple]:
    return {(r["user_id"], r["window_start"], r["window_end"], r["events"]) for r in rows}


def _sessions_plan(answer: Any) -> str:
    """The plan of the learner's sessions, once it has the operators and columns needed."""
    df = streaming_answer(answer, "the sessions")
    plan = plan_text(df)
    need_operator(
        plan,
        ("EventTimeWatermark",),
        "the plan has no watermark (EventTimeWatermark): call .withWatermark('event_ts', ...) "
        "first, or a session never ends",
    )
    need_operator(
        plan,
        ("SessionWindowStateStoreSave", "MergingSessions"),
        "the plan has no session window (SessionWindowStateStoreSave): group by user_id and "
        "F.session_window('event_ts', ...)",
    )
    need_columns(
        df,
        ("user_id", "session_start", "session_end", "events"),
        "select user_id, the window's start and end as session_start and session_end, and events",
    )
    return plan


def _sessions_hint(
    got: set, expected: set, distinct: list[dict], records, plan: str, gap_s: float, delay_s: float
) -> str:
    """Which usual mistake gives the sessions `got`, or the first session that differs."""
    copies = [r.event for r in records if r.kind in ("valid", "late", "duplicate")]
    hint = delay_hint(plan, delay_s)
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
            f"{side} the session of {first[0]} from {hms(first[1])} to {hms(first[2])} with "
            f"{first[3]} events ({len(got)} sessions given, {len(expected)} expected)"
        )
    return hint


def check_user_sessions(answer: Any, records, gap_s: float = 60, delay_s: float = 60) -> None:
    """Exercise 05.3: sessions per user (a `gap_s`-second session window over the events, each
    event_id once) with a `delay_s`-second watermark; in append mode it must emit exactly the
    sessions the watermark has closed. Assumes no event is later than the delay."""
    plan = _sessions_plan(answer)
    got = set()
    for batch in run_available_now(
        answer.select("user_id", "session_start", "session_end", "events"), "append"
    ):
        for r in batch:
            got.add(
                (r["user_id"], as_utc(r["session_start"]), as_utc(r["session_end"]), r["events"])
            )
    distinct = unique_events(records)
    expected = _session_keys(closed_sessions(distinct, gap_s, delay_s))
    if got == expected:
        still_open = len(gap_sessions(distinct, gap_s, by_session_id=False)) - len(expected)
        correct(
            f"{len(expected)} sessions closed by the watermark, {still_open} still open (in the "
            "state, waiting for more events or for the watermark)"
        )
        return
    hint = _sessions_hint(got, expected, distinct, records, plan, gap_s, delay_s)
    raise ExerciseError(f"the sessions are not right yet: {hint}.")
