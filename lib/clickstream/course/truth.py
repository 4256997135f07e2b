"""Ground truth from the simulator's records, in plain Python (sort, group, count).

Never computed with Spark or the streaming job, so a check is independent of the code it
grades, and the notebooks use these functions as the ground truth that Spark,
`clickstream.process.pipeline` and the job are compared with (05 and 06 import this module as
`gt`). The checks of several notebooks share them: the events each event_id once, what the
job's rules make of a stream, products, funnels and sessions, windows of errors.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

US = 1_000_000  # microseconds in a second
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FUNNEL_CODE = {"add_to_cart": 1, "purchase": 2}


def event_us(event_time: str) -> int:
    """An event_time -> epoch microseconds, exactly."""
    from clickstream.events import parse_event_time

    return (parse_event_time(event_time) - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    """Epoch microseconds -> an aware UTC datetime, exactly."""
    return _EPOCH + timedelta(microseconds=us)


def expected_partition(key: str | bytes, partitions: int) -> int:
    """The partition kafka-python's default partitioner picks for `key` (murmur2, like Java's)."""
    from kafka.partitioner.default import murmur2

    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions


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


def funnel_code(e: dict) -> int | None:
    """The funnel step an event is: 0 a product view, 1 a cart, 2 a purchase (None: none)."""
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
        code = funnel_code(e)
        if code is None:
            continue
        t = event_us(e["event_time"])
        window = None if window_s is None else from_us(t - t % (window_s * US))
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
        by_key[key].append((event_us(e["event_time"]), e["event_id"]))
    gap = round(gap_s * US)
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
        "window_start": from_us(times[0]),
        "window_end": from_us(times[-1] + gap),
        "user_id": user,
        "session_id": session,
        "duration_s": (times[-1] - times[0]) / US,
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
    delay = round(delay_s * US)
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
            t = event_us(event["event_time"])
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
        out.watermark = from_us(newest - delay)
    return out


def window_error_counts(events: Iterable[dict], window_s: int) -> dict[datetime, tuple[int, int]]:
    """{window_start: (events, errors)} in tumbling windows of `window_s` seconds."""
    counts: dict[int, list[int]] = {}
    for e in events:
        t = event_us(e["event_time"])
        slot = counts.setdefault(t - t % (window_s * US), [0, 0])
        slot[0] += 1
        slot[1] += e["event_type"] == "error"
    return {from_us(s): (n, bad) for s, (n, bad) in sorted(counts.items())}
