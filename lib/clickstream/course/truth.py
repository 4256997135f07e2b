"""Ground truth and exercise checks for the stateful notebooks: 05 (stateful analytics) and
06 (bad data and anomalies).

Same contract as `clickstream.exercises`: a check prints "✓ correct" or raises `ExerciseError`
saying what is wrong and how to get closer; notebooks run exercises through `attempt`. Every
expected answer is computed here from the simulator's records with plain Python (sort, group,
count), never with Spark or the streaming job, so the notebooks can also use these functions as
the ground truth that Spark, `clickstream.process.pipeline` and the job are compared with.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clickstream.exercises import ExerciseError, _as_utc, _correct, _need, attempt

__all__ = [
    "ExerciseError",
    "JobOutcome",
    "attempt",
    "check_quarantine_counts",
    "check_session_funnel",
    "check_threshold_windows",
    "check_top_revenue",
    "funnel_counts",
    "gap_sessions",
    "job_outcome",
    "product_totals",
    "top_products",
    "unique_events",
    "window_error_counts",
]

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FUNNEL_CODE = {"add_to_cart": 1, "purchase": 2}


def _us(event_time: str) -> int:
    from clickstream.events import parse_event_time

    return (parse_event_time(event_time) - _EPOCH) // timedelta(microseconds=1)


def _dt(us: int) -> datetime:
    """Epoch microseconds -> an aware UTC datetime, exactly."""
    return _EPOCH + timedelta(microseconds=us)


# --- ground truth from the simulator's records -------------------------------------------


def unique_events(records: Iterable) -> list[dict]:
    """The genuine events of simulator records, each event_id once, in the order sent.

    The simulator marks the extra copies it injects (producer retries) as kind "duplicate";
    they are skipped, as are malformed records.
    """
    out, seen = [], set()
    for record in records:
        if record.kind not in ("valid", "late") or record.event["event_id"] in seen:
            continue
        seen.add(record.event["event_id"])
        out.append(record.event)
    return out


def product_totals(events: Iterable[dict]) -> dict[str, dict[str, Any]]:
    """{product_id: views, carts, purchases, revenue} over `events` (revenue summed in cents)."""
    totals: dict[str, list[int]] = {}
    for e in events:
        product, kind = e.get("product_id"), e["event_type"]
        if not product or kind not in ("page_view", "add_to_cart", "purchase"):
            continue
        t = totals.setdefault(product, [0, 0, 0, 0])
        t[("page_view", "add_to_cart", "purchase").index(kind)] += 1
        if kind == "purchase" and e.get("price") is not None:
            t[3] += round(e["price"] * 100)
    return {
        p: {"views": v, "carts": c, "purchases": n, "revenue": cents / 100}
        for p, (v, c, n, cents) in sorted(totals.items())
    }


def top_products(events: Iterable[dict], n: int = 5, by: str = "revenue") -> list[tuple[str, Any]]:
    """The `n` products with the most `by` (views, carts, purchases or revenue), ties by id."""
    totals = product_totals(events)
    ranked = sorted(totals.items(), key=lambda item: (-item[1][by], item[0]))
    return [(product, stats[by]) for product, stats in ranked[:n]]


def _stage(steps: list[tuple[int, str, int]]) -> int:
    """0..3: how far a session got through view -> cart -> purchase, in (time, id) order."""
    stage = 0
    for _, _, code in sorted(steps):
        if code == stage:
            stage += 1
            if stage == 3:
                break
    return stage


def _funnel_code(e: dict) -> int | None:
    if e["event_type"] == "page_view":
        return 0 if e.get("product_id") else None
    return _FUNNEL_CODE.get(e["event_type"])


def funnel_counts(
    events: Iterable[dict], window_s: int | None = None
) -> dict[datetime | None, tuple[int, int, int]]:
    """Sessions (user_id, session_id) that viewed a product, then added to cart after that, then
    purchased after that: {window_start: (viewed, carted, purchased)} per tumbling window of
    `window_s` (steps within the window), or {None: (...)} over the whole stream."""
    steps: dict = defaultdict(lambda: defaultdict(list))
    for e in events:
        code = _funnel_code(e)
        if code is None:
            continue
        t = _us(e["event_time"])
        window = None if window_s is None else _dt(t - t % (window_s * _US))
        steps[window][(e["user_id"], e["session_id"])].append((t, e["event_id"], code))
    out = {}
    for window in sorted(steps, key=lambda w: (w is not None, w)):
        stages = [_stage(s) for s in steps[window].values()]
        out[window] = tuple(sum(s >= k for s in stages) for k in (1, 2, 3))
    return out


def gap_sessions(events: Iterable[dict], gap_s: float, by_session_id: bool = True) -> list[dict]:
    """Gap-based sessions: a session ends when `gap_s` pass without an event of its key, the
    (user_id, session_id) pair or, with `by_session_id=False`, the user alone.

    Rows like the job's: window_start (first event) and window_end (last event + gap) as exact
    datetimes, user_id, session_id (None per user), duration_s, events; sorted by start, end
    and key.
    """
    by_key: dict = defaultdict(list)
    for e in events:
        key = (e["user_id"], e["session_id"] if by_session_id else None)
        by_key[key].append((_us(e["event_time"]), e["event_id"]))
    gap = round(gap_s * _US)
    rows = []
    for (user, session), items in by_key.items():
        items.sort()
        run = [items[0][0]]
        for t, _ in items[1:]:
            if t - run[-1] < gap:
                run.append(t)
                continue
            rows.append(_session_row(user, session, run, gap))
            run = [t]
        rows.append(_session_row(user, session, run, gap))
    return sorted(
        rows,
        key=lambda r: (r["window_start"], r["window_end"], r["user_id"], r["session_id"] or ""),
    )


def _session_row(user: str, session: str | None, times: list[int], gap: int) -> dict:
    return {
        "window_start": _dt(times[0]),
        "window_end": _dt(times[-1] + gap),
        "user_id": user,
        "session_id": session,
        "duration_s": (times[-1] - times[0]) / _US,
        "events": len(times),
    }


@dataclass
class JobOutcome:
    """What the streaming job's rules make of a stream, record by record (see `job_outcome`)."""

    counters: dict[str, int]
    quarantine: Counter = field(default_factory=Counter)  # full reason -> records
    accepted: list[dict] = field(default_factory=list)
    late_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    watermark: datetime | None = None  # after the last batch


def job_outcome(records: Iterable, delay_s: float, batch_size: int) -> JobOutcome:
    """Replay the streaming job's rules on records read from ONE partition in micro-batches of
    `batch_size` (maxOffsetsPerTrigger): validate with the contract (quarantine with the
    reason), drop events older than the watermark Spark judges late events by (the previous
    batch's: newest event time of the batches before it, minus `delay_s`), then drop event
    ids already seen."""
    from clickstream import events

    records = list(records)
    delay = round(delay_s * _US)
    out = JobOutcome(counters=dict.fromkeys(("records", "quarantined", "late_dropped"), 0))
    out.counters.update(duplicates_removed=0, events=0)
    newest: int | None = None
    newest_after: list[int | None] = []  # the newest event time after each batch
    seen: set[str] = set()
    for number, start in enumerate(range(0, len(records), batch_size)):
        before_previous = newest_after[number - 2] if number >= 2 else None
        watermark = None if before_previous is None else before_previous - delay
        for record in records[start : start + batch_size]:
            out.counters["records"] += 1
            event, reason = events.parse_value(record.value)
            if reason is not None:
                out.counters["quarantined"] += 1
                out.quarantine[reason] += 1
                continue
            t = _us(event["event_time"])
            newest = t if newest is None else max(newest, t)
            if watermark is not None and t < watermark:
                out.counters["late_dropped"] += 1
                out.late_ids.append(event["event_id"])
            elif event["event_id"] in seen:
                out.counters["duplicates_removed"] += 1
                out.duplicate_ids.append(event["event_id"])
            else:
                seen.add(event["event_id"])
                out.counters["events"] += 1
                out.accepted.append(event)
        newest_after.append(newest)
    if newest is not None:
        out.watermark = _dt(newest - delay)
    return out


def window_error_counts(events: Iterable[dict], window_s: int) -> dict[datetime, tuple[int, int]]:
    """{window_start: (events, errors)} in tumbling windows of `window_s` seconds."""
    counts: dict[int, list[int]] = {}
    for e in events:
        t = _us(e["event_time"])
        slot = counts.setdefault(t - t % (window_s * _US), [0, 0])
        slot[0] += 1
        slot[1] += e["event_type"] == "error"
    return {_dt(s): (n, bad) for s, (n, bad) in sorted(counts.items())}


# --- 05 stateful analytics ---------------------------------------------------------------


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


def check_top_revenue(answer: Any, records, n: int = 5) -> None:
    """Exercise 05.1: {product_id: revenue} of the `n` products with the most revenue, each
    event counted once."""
    got = _revenue_answer(answer)
    _need(bool(got), "the answer is empty: which products earned the most?")
    distinct = unique_events(records)
    totals = product_totals(distinct)
    expected = top_products(distinct, n)
    threshold = expected[-1][1]
    with_copies = product_totals(
        r.event for r in records if r.kind in ("valid", "late", "duplicate")
    )
    every_price: dict[str, int] = Counter()
    for e in distinct:
        if e.get("product_id") and e.get("price") is not None:
            every_price[e["product_id"]] += round(e["price"] * 100)
    unknown = [p for p in got if p not in totals]
    _need(not unknown, f"{unknown[:3]} are not products that appear in the stream")
    wrong = {
        p: (r, totals[p]["revenue"])
        for p, r in got.items()
        if abs(r - totals[p]["revenue"]) > 0.005
    }
    if wrong:
        product, (yours, right) = next(iter(wrong.items()))
        if all(abs(got[p] - with_copies[p]["revenue"]) <= 0.005 for p in wrong):
            hint = (
                "the stream holds duplicates (producer retries): count each event_id once "
                "(dropDuplicates(['event_id'])) before summing"
            )
        elif all(abs(got[p] - every_price[p] / 100) <= 0.005 for p in wrong):
            hint = (
                "that sums the price of every event that carries one (views and carts too); "
                "revenue is the price of purchase events only"
            )
        else:
            hint = "revenue is the sum of `price` over the product's purchase events"
        raise ExerciseError(
            f"{product} earned {right:.2f}, not {yours:.2f} ({len(wrong)} revenues differ): {hint}."
        )
    _need(
        len(got) == n,
        f"{len(got)} products given, expected the top {n}: sort by revenue, descending, and "
        f"keep the first {n}",
    )
    low = [p for p, r in got.items() if r < threshold - 0.005]
    _need(
        not low,
        f"{low[:3]} are not among the top {n}: the {n}th product earned {threshold:.2f}. Sort "
        "by revenue descending (F.desc('revenue')), over the whole stream, not one window",
    )
    _correct(
        f"the top {n} earned {sum(got.values()):,.2f} together; "
        f"{expected[0][0]} leads with {expected[0][1]:,.2f}"
    )


def check_session_funnel(answer: Any, records) -> None:
    """Exercise 05.2: (viewed, carted, purchased) sessions over the whole stream, in order."""
    _need(
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
        _correct(
            f"{expected[0]} sessions viewed a product, {expected[1]} then carted it, "
            f"{expected[2]} then purchased ({expected[2] / expected[0]:.1%} conversion)"
        )
        return
    per_window = funnel_counts(distinct, 60)
    summed = tuple(sum(w[k] for w in per_window.values()) for k in range(3))
    sessions: dict = defaultdict(set)
    for e in distinct:
        code = _funnel_code(e)
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
        hint = (
            "that is the sum of the per-window funnels: a session that spans two windows counts "
            "twice. Group by (user_id, session_id) only"
        )
    elif got in (unordered, any_step):
        hint = (
            "order matters: a cart counts only after a product view, a purchase only after a "
            "cart. Sort each session's steps by (event_ts, event_id) and walk through them"
        )
    elif got[0] == all_views:
        hint = "`viewed` counts sessions that viewed a *product* page (product_id not null)"
    elif got[0] != expected[0]:
        hint = f"viewed should be {expected[0]}: sessions with at least one product page view"
    else:
        hint = "count each session once, and the steps in order: view, then cart, then purchase"
    raise ExerciseError(f"{got} is not the funnel {expected}: {hint}.")


# --- 06 bad data and anomalies -----------------------------------------------------------


def check_quarantine_counts(answer: Any, records) -> None:
    """Exercise 06.1: {reason prefix: records} of the records the contract rejects."""
    from clickstream import events

    _need(
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
        _correct(
            f"{sum(expected.values())} records in quarantine, {len(expected)} reasons, none lost"
        )
        return
    if got == dict(full) or any(":" in k for k in got):
        hint = (
            "those are full reasons such as 'wrong_type:price'; group them by their prefix "
            "(events.reason_prefix(reason))"
        )
    elif set(got) - set(events.REASONS):
        hint = (
            f"{sorted(set(got) - set(events.REASONS))[:3]} are not reason prefixes "
            f"({', '.join(events.REASONS)})"
        )
    elif sum(got.values()) > sum(expected.values()):
        hint = (
            f"{sum(got.values())} records counted, the topic holds {sum(expected.values())}: "
            "was something counted twice?"
        )
    elif sum(got.values()) < sum(expected.values()):
        hint = (
            f"only {sum(got.values())} of {sum(expected.values())} records counted: read the "
            "whole topic, from the beginning"
        )
    else:
        hint = "some reasons have the wrong count: take the `reason` field of every message"
    raise ExerciseError(f"the quarantine counts are not right yet: {hint}.")


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
    _need(
        isinstance(answer, (set, frozenset, list, tuple)),
        f"expected a set of window starts, got {type(answer).__name__}",
    )
    try:
        got = {_as_utc(w) for w in answer}
    except (TypeError, ValueError) as exc:
        raise ExerciseError(f"window starts should be datetimes or ISO strings ({exc})") from None
    counts = window_error_counts(job_outcome(records, delay_s, batch_size).accepted, window_s)

    def flagged(rate: float, errors: int, strict: bool = False) -> set:
        return {
            w
            for w, (n, e) in counts.items()
            if (e / n > rate if strict else e / n >= rate) and e >= errors
        }

    expected = flagged(min_rate, min_errors)
    if got == expected:
        _correct(
            f"{len(expected)} windows at or above {min_rate:.0%} errors with at least "
            f"{min_errors} errors"
        )
        return
    if got == flagged(min_rate, 0):
        hint = (
            f"a window also needs at least {min_errors} errors (one error in two events is not "
            "an incident)"
        )
    elif got == flagged(min_rate, min_errors, strict=True):
        hint = (
            f"'at least {min_rate:.0%}' includes the windows at exactly {min_rate:.0%} (>=, not >)"
        )
    elif got == {w for w, (_, e) in counts.items() if e >= min_errors}:
        hint = (
            f"that keeps every window with {min_errors} errors; compare the *rate* "
            f"errors / events with {min_rate}"
        )
    elif got - set(counts):
        hint = (
            f"{len(got - set(counts))} of these are not window starts of {window_s}-second "
            "windows; read the job's `errors` metric"
        )
    else:
        hint = (
            f"{len(got & expected)} of yours are right, {len(got - expected)} extra, "
            f"{len(expected - got)} missing; use error_rate >= {min_rate} and "
            f"errors >= {min_errors}"
        )
    raise ExerciseError(f"{len(got)} windows given, {len(expected)} expected: {hint}.")
