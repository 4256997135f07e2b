"""The dashboard's data functions, without Streamlit: numbers, freshness and bounded reads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from clickstream.bench.dashboard import bench_refresh, fill
from clickstream.dashboard import data as dd
from clickstream.serve.store import open_store
from tests.dashboard import known_data
from tests.dashboard.known_data import EXPECTED


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


class CountingStore:
    """Wraps a store and records every read, to check that each one is bounded."""

    def __init__(self, store):
        self.store = store
        self.reads: list[tuple[str, object, object]] = []

    def read(self, name, since=None, until=None, limit=None, where=None):
        self.reads.append((name, since, limit))
        return self.store.read(name, since=since, until=until, limit=limit, where=where)

    def __getattr__(self, name):
        return getattr(self.store, name)

    def counters(self):
        return {r["name"]: r["value"] for r in self.read("counters")}


def test_snapshot_numbers(store_url):
    with open_store(store_url) as store:
        known_data.fill(store)
        snap = dd.load_snapshot(store)
    h = snap.headline
    assert snap.status.ok
    assert snap.range.newest == utc("2026-11-28T10:39:00Z")
    assert snap.range.since == utc("2026-11-28T10:10:00Z")
    assert h.page_views_per_min == EXPECTED["page_views_per_min"]
    assert h.page_views_delta == EXPECTED["page_views_delta"]
    assert h.headline_window == utc("2026-11-28T10:38:00Z")
    assert (h.current_events, h.current_complete) == (EXPECTED["current_events"], False)
    assert (h.active_users, h.active_users_delta) == (88, 1)
    assert h.error_rate == pytest.approx(0.03)
    assert h.conversion == pytest.approx(0.1)
    assert list(snap.funnel["sessions"]) == list(EXPECTED["funnel_30min"])
    assert snap.products.iloc[0]["product_id"] == "P002"
    assert snap.quality.quarantined == 5
    assert (snap.quality.late_dropped, snap.quality.duplicates) == (4, 6)
    assert list(snap.open_alerts["alert_id"]) == ["a-open"]
    assert snap.health.batch_id == 40 and not snap.health.stale
    assert snap.sessions.count == 30


def test_every_read_of_a_refresh_is_bounded(tmp_path):
    """A refresh reads the newest window, then only its time range: not the whole history."""
    url = f"sqlite:///{tmp_path / 'day.db'}"
    with open_store(url) as store:
        fill(store, minutes=180)
    with open_store(url, readonly=True) as store:
        counting = CountingStore(store)
        snap = dd.load_snapshot(counting, minutes=15)
    windowed = [r for r in counting.reads if r[0] not in ("alerts", "quarantine", "counters")]
    assert windowed, counting.reads
    for name, since, limit in windowed:
        assert since is not None or limit is not None, (name, since, limit)
    assert len(counting.reads) <= 14
    assert snap.range.since == utc("2026-11-27T23:45:00Z")
    assert snap.traffic["window_start"].nunique() == 15
    assert snap.segments.windows == 15

    with open_store(url, readonly=True) as store:
        counting = CountingStore(store)
        options = dd.filter_options(counting)
    assert all(since is not None or limit for _, since, limit in counting.reads), counting.reads
    assert options["device"] == ["desktop", "mobile", "tablet"]
    assert len(options["country"]) == 14 and len(options["category"]) == 8


def test_headline_without_event_time_treats_every_window_as_complete():
    traffic = dd.traffic_frame(
        [
            {**known_data.win(m), "event_type": "page_view", "count": known_data.page_views(m)}
            for m in range(3)
        ]
    )
    tr = dd.time_range(utc(known_data.ws(2)), 60.0, 30)
    empty = dd.active_users_frame([])
    h = dd.headline(traffic, empty, dd.errors_frame([]), {"viewed": 0}, tr, None)
    assert (h.page_views_per_min, h.page_views_delta) == (104, 2)
    assert h.current_complete and h.active_users is None and h.conversion is None


def test_page_views_per_minute_from_shorter_windows():
    rows = [
        {
            "window_start": f"2026-11-28T10:00:{s:02d}Z",
            "window_end": f"2026-11-28T10:00:{s + 10:02d}Z",
            "event_type": "page_view",
            "count": 30,
        }
        for s in (0, 10, 20)
    ]
    tr = dd.time_range(utc("2026-11-28T10:00:20Z"), 10.0, 5)
    h = dd.headline(
        dd.traffic_frame(rows), dd.active_users_frame([]), dd.errors_frame([]), {}, tr, None
    )
    assert h.page_views_per_min == 180  # 30 per 10 s window


def test_freshness_and_staleness():
    rows = [{"job": "j", "batch_id": 3, "committed_at": 1000.0, "duration_ms": 250}]
    fresh = dd.health_summary(rows, now=1002.4)
    assert fresh.freshness == "data is 2 s old" and not fresh.stale
    stale = dd.health_summary(rows, now=1000.0 + 125)
    assert stale.stale
    assert stale.freshness == (
        "stale since 1970-01-01 00:16:40 UTC (2 min 5 s without a new batch)"
    )
    assert dd.health_summary([]).freshness == "no batch has been committed yet"


def test_top_products_and_paths_ordering():
    rows = [known_data.product_row(m, *p) for m in range(4) for p in known_data.PRODUCTS]
    assert list(dd.top_products(rows, "views")["product_id"]) == ["P004", "P003", "P002", "P001"]
    assert list(dd.top_products(rows, "revenue", n=2)["product_id"]) == ["P002", "P004"]
    assert dd.top_products([], "revenue").empty


def test_filters_map_to_store_columns():
    f = dd.Filters(category="books", country="DE")
    assert f.segments() == {"category": "books", "country": "DE"}
    assert f.products() == {"category": "books"}
    assert f.label() == "category=books, country=DE"
    assert dd.Filters().label() == "all"


def test_status_of_missing_and_empty_stores(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with open_store(url) as store:
        snap = dd.load_snapshot(store)
    assert snap.status.state == "empty"
    assert snap.status.message.startswith("No data yet: is the streaming job running?")


def test_bench_refresh_reports_timings(store_url):
    result = bench_refresh(
        store_url, minutes=90, repeats=2, ranges=("15 minutes",), ledger_batches=1000
    )
    assert result.rows > 90 * 400 and result.ledger_batches == 1000
    assert list(result.timings_ms) == [
        "new batch, range 15 minutes: data",
        "no new batch (any range)",
    ]
    assert all(ms > 0 for values in result.timings_ms.values() for ms in values)
    assert len(result.before_ms["15 minutes"]) == 2 and result.ratio("15 minutes") > 0
    # A new batch of one minute: that minute's rows are re-read, not the range's.
    assert result.rows_read["15 minutes"] < 600
    text = "\n".join(result.lines())
    assert "median" in text and "machine:" in text and "x faster" in text
