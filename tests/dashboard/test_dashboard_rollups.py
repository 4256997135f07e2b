"""Long ranges from rollups, and refreshes that re-read only what new batches touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from clickstream.dashboard import data as dd
from clickstream.serve.store import open_store
from clickstream.times import iso

WEEK = 7 * 1440
END = datetime(2026, 11, 28, tzinfo=UTC)
SEGMENTS = (("DE", "mobile", "books"), ("US", "desktop", "toys"))
PRODUCTS = (("P1", "books"), ("P2", "toys"))


def minute(m: int, boost: int = 0) -> dict[str, list[dict]]:
    """Every range metric for minute `m` before END (m = 0: the first minute of the week)."""
    start = END - timedelta(minutes=WEEK - m)
    w = {"window_start": iso(start), "window_end": iso(start + timedelta(minutes=1))}
    return {
        "traffic": [
            {**w, "event_type": "page_view", "count": 10 + m % 7 + boost},
            {**w, "event_type": "purchase", "count": 1 + boost},
        ],
        "active_users": [{**w, "users": 20 + m % 11}],
        "errors": [{**w, "events": 11 + m % 7, "errors": m % 2, "error_rate": None}],
        "funnel": [{**w, "viewed": 5, "carted": 2, "purchased": 1 + boost}],
        "segments": [
            {**w, "country": c, "device": d, "category": k, "count": 3 + i + boost}
            for i, (c, d, k) in enumerate(SEGMENTS)
        ],
        "products": [
            {
                **w,
                "product_id": p,
                "category": k,
                "views": 4,
                "carts": 1,
                "purchases": i,
                "revenue": 9.5 * i + boost,
            }
            for i, (p, k) in enumerate(PRODUCTS)
        ],  # fmt: skip
        "sessions": [
            {
                **w,
                "window_end": iso(start + timedelta(minutes=3)),
                "user_id": f"u{m}",
                "session_id": "s",
                "duration_s": 20 + m % 50,
                "events": 3,
            }
        ],  # fmt: skip
        "paths": [{**w, "from_page": "/", "to_page": "/cart", "count": 2 + boost}],
    }


KEYS_PER_WINDOW = {name: len(rows) for name, rows in minute(0).items()}
BANDS = 4  # the sessions last 20 to 69 s: the bands from 20, 30, 45 and 60 s


def row_limit(name: str, grain: int | None, buckets: int) -> int:
    """The most rows `buckets` buckets of metric `name` can hold at `grain`, plus, for the
    one-minute traffic windows, the newest window every refresh looks up."""
    if grain is None:
        return buckets * KEYS_PER_WINDOW[name] + (KEYS_PER_WINDOW[name] if name == "traffic" else 0)
    return buckets * (BANDS if name == "sessions" else KEYS_PER_WINDOW[name])


def write_minutes(store, minutes, batch_id: int, boost: int = 0) -> None:
    rows: dict[str, list[dict]] = {}
    for m in minutes:
        for name, items in minute(m, boost).items():
            rows.setdefault(name, []).extend(items)
    last = max(minutes)
    health = {"max_event_time": iso(END - timedelta(minutes=WEEK - last - 1))}
    store.write_batch("stream", batch_id, rows, health)


@pytest.fixture(scope="module")
def week_url(tmp_path_factory):
    """A week of per-minute windows of every range metric, a day per batch."""
    url = f"sqlite:///{tmp_path_factory.mktemp('week') / 'serving.db'}"
    with open_store(url) as store:
        for day in range(7):  # all but the week's last minute, which a test sends later
            write_minutes(store, range(day * 1440, min((day + 1) * 1440, WEEK - 1)), day)
    return url


# range -> (grain read, points in the traffic series)
EXPECTED_GRAIN = {
    "30 minutes": (None, 30),
    "6 hours": (None, 360),
    "24 hours": (5, 288),
    "7 days": (30, 336),
}


@pytest.mark.parametrize("label", list(EXPECTED_GRAIN))
def test_each_range_reads_its_grain_and_no_more_rows_than_it_implies(week_url, label):
    grain, points = EXPECTED_GRAIN[label]
    with open_store(week_url, readonly=True) as store:
        snap = dd.load_snapshot(store, minutes=dd.TIME_RANGES[label])
    assert snap.status.ok and snap.range.grain_min == grain
    starts = sorted(snap.traffic["window_start"].unique())
    assert len(starts) == points
    steps = {b - a for a, b in zip(starts, starts[1:], strict=False)}
    assert steps == {pd.Timedelta(minutes=grain or 1)}  # every point is one bucket of the grain
    # Each table read holds the range's buckets and nothing more; the one-minute windows are
    # read at long ranges only for the newest window and the headline's last three windows.
    for name in KEYS_PER_WINDOW:
        table = name if grain is None else f"{name}_{grain}m"
        assert 0 < snap.rows_read[table] <= row_limit(name, grain, points), (table, snap.rows_read)
    if grain is not None:
        assert snap.rows_read["traffic"] <= 1 * 2 + 3 * 2  # newest window + last three
        assert set(snap.rows_read) - {"traffic", "active_users", "errors"} == {
            f"{n}_{grain}m" for n in KEYS_PER_WINDOW
        } | {"quarantine", "counters", "alerts"}
    # The sums over the range are exact whatever the grain: one "purchase" a minute.
    total = sum(r["count"] for r in snap.held["traffic"].rows() if r["event_type"] == "purchase")
    # (The range ends with the newest window; at a grain, its bucket misses the week's last
    # minute, which has not come yet.)
    assert total == points * (grain or 1) - (1 if grain else 0)


def _same(a: dd.Snapshot, b: dd.Snapshot) -> None:
    for frame in ("traffic", "traffic_by_type", "active_users", "errors", "funnel", "products"):
        pd.testing.assert_frame_equal(getattr(a, frame), getattr(b, frame), check_exact=False)
    pd.testing.assert_frame_equal(a.paths, b.paths)
    assert a.segments == b.segments
    assert (a.sessions.count, a.sessions.median_duration_s, a.sessions.mean_events) == (
        b.sessions.count,
        b.sessions.median_duration_s,
        b.sessions.mean_events,
    )
    assert a.headline == b.headline


@pytest.mark.parametrize("label", ["30 minutes", "24 hours", "7 days"])
def test_after_a_batch_only_the_windows_it_touched_are_read_again(week_url, tmp_path, label):
    import shutil

    url = f"sqlite:///{tmp_path / 'copy.db'}"
    shutil.copy(week_url.removeprefix("sqlite:///"), tmp_path / "copy.db")
    span = dd.TIME_RANGES[label]
    with open_store(url) as writer, open_store(url, readonly=True) as reader:
        before = dd.load_snapshot(reader, minutes=span)
        grain = before.range.grain_min
        # The week's last minute arrives, and a late update raises a window 3 minutes back.
        write_minutes(writer, [WEEK - 1], batch_id=100)
        write_minutes(writer, [WEEK - 4], batch_id=101, boost=5)
        after = dd.load_snapshot(reader, minutes=span, previous=before)
        fresh = dd.load_snapshot(reader, minutes=span)
    assert after.incremental and not fresh.incremental
    _same(after, fresh)  # merging into what it held gives what reading it all gives
    assert after.headline.events_in_range == fresh.headline.events_in_range > 0
    # It read the buckets the two batches touched (minutes WEEK-4 .. WEEK-1), no others.
    touched = 1 if grain else 4
    for name in KEYS_PER_WINDOW:
        table = name if grain is None else f"{name}_{grain}m"
        limit = row_limit(name, grain, touched)
        assert 0 < after.rows_read.get(table, 0) <= limit, (table, after.rows_read)


def test_a_refresh_after_many_batches_reads_the_range_again(week_url, tmp_path):
    import shutil

    url = f"sqlite:///{tmp_path / 'copy.db'}"
    shutil.copy(week_url.removeprefix("sqlite:///"), tmp_path / "copy.db")
    with open_store(url) as writer, open_store(url, readonly=True) as reader:
        before = dd.load_snapshot(reader, minutes=30)
        for i in range(2 * dd.HEALTH_BATCHES + 1):  # more than one refresh's health shows
            writer.write_batch("other", i, {"counters": [{"name": "n", "value": i}]})
        after = dd.load_snapshot(reader, minutes=30, previous=before)
    assert not after.incremental and after.rows_read["traffic"] == row_limit("traffic", None, 30)


def test_a_day_from_rollups_and_merged_refreshes_on_every_store(store_url):
    """The same 24-hour view from SQLite, Redis and PostgreSQL: 5-minute buckets, and a refresh
    after two batches (one late) that equals reading the range again."""
    first = WEEK - 25 * 60
    with open_store(store_url) as writer, open_store(store_url, readonly=True) as reader:
        write_minutes(writer, range(first, WEEK - 12 * 60), batch_id=0)
        write_minutes(writer, range(WEEK - 12 * 60, WEEK - 1), batch_id=1)
        before = dd.load_snapshot(reader, minutes=dd.TIME_RANGES["24 hours"])
        write_minutes(writer, [WEEK - 1], batch_id=2)
        write_minutes(writer, [WEEK - 4], batch_id=3, boost=5)
        after = dd.load_snapshot(reader, minutes=1440, previous=before)
        fresh = dd.load_snapshot(reader, minutes=1440)
    assert before.range.grain_min == after.range.grain_min == 5
    assert len(before.traffic["window_start"].unique()) == 288
    assert after.incremental and after.rows_read["traffic_5m"] == 2  # one bucket, two types
    _same(after, fresh)
