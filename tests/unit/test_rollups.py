"""Rollups: coarser grains kept exact, in the batch's own transaction, on every store."""

from __future__ import annotations

import pytest

from clickstream.serve.rollups import (
    SESSION_BANDS,
    grain_for,
    grains_for,
    rollup_differences,
    session_band,
)
from clickstream.serve.store import StoreError, open_store


def window(minute: int, length: int = 1) -> dict:
    h, m = divmod(minute, 60)
    h2, m2 = divmod(minute + length, 60)
    return {
        "window_start": f"2026-11-28T{10 + h:02d}:{m:02d}:00Z",
        "window_end": f"2026-11-28T{10 + h2:02d}:{m2:02d}:00Z",
    }


def batch(minutes, count, users, errors=1) -> dict[str, list[dict]]:
    return {
        "traffic": [{**window(m), "event_type": "page_view", "count": count} for m in minutes],
        "active_users": [{**window(m), "users": users + m} for m in minutes],
        "errors": [
            {**window(m), "events": 10 * count, "errors": errors, "error_rate": errors / count / 10}
            for m in minutes
        ],
        "products": [
            {
                **window(m),
                "product_id": "P1",
                "category": "books",
                "views": count,
                "carts": 1,
                "purchases": 1,
                "revenue": 10.1,
            }
            for m in minutes
        ],  # fmt: skip
    }


def test_rollups_are_exact_sums_updated_with_each_batch(store_url):
    with open_store(store_url) as store:
        store.write_batch("job", 0, batch(range(0, 7), count=5, users=100))
        # A later batch updates windows 5 and 6 (absolute values, as the job upserts them) and
        # opens a new 30-minute bucket: only the buckets it touched are recomputed.
        store.write_batch("job", 1, batch([5, 6, 31], count=9, users=200, errors=3))
        assert not store.write_batch("job", 1, batch([5], count=999, users=0))  # a replay
        assert rollup_differences(store) == ""
        t5 = {r["window_start"]: r["count"] for r in store.read("traffic_5m")}
        assert t5 == {
            "2026-11-28T10:00:00Z": 25,
            "2026-11-28T10:05:00Z": 18,
            "2026-11-28T10:30:00Z": 9,
        }
        t30 = store.read("traffic_30m")
        assert [(r["window_start"], r["window_end"], r["count"]) for r in t30] == [
            ("2026-11-28T10:00:00Z", "2026-11-28T10:30:00Z", 43),
            ("2026-11-28T10:30:00Z", "2026-11-28T11:00:00Z", 9),
        ]
        # Distinct users cannot be summed: the coarse grain keeps the peak window.
        assert [r["users"] for r in store.read("active_users_30m")] == [206, 231]
        # The error rate of a bucket is its errors over its events, not a mean of rates.
        e = store.read("errors_30m")[0]
        assert (e["events"], e["errors"]) == (5 * 50 + 2 * 90, 5 + 6)
        assert e["error_rate"] == pytest.approx(11 / 430)
        p = store.read("products_5m", where={"product_id": "P1"})[0]
        assert (p["category"], p["views"], p["revenue"]) == ("books", 25, pytest.approx(50.5))
        # The ledger keeps the windows each batch wrote, for readers that re-read only those.
        last = store.health("job", limit=1)[0]
        assert (last["windows_from"], last["windows_to"]) == (
            "2026-11-28T10:05:00Z",
            "2026-11-28T10:31:00Z",
        )


def test_sessions_roll_up_by_start_and_band_of_length(store_url):
    sessions = [
        {**window(m, 20), "user_id": f"u{m}", "session_id": "s1", "duration_s": d, "events": e}
        for m, d, e in ((0, 12, 3), (1, 14, 5), (2, 700, 40), (40, 12, 2))
    ]
    with open_store(store_url) as store:
        store.write_batch("sessions", 0, {"sessions": sessions})
        assert rollup_differences(store) == ""
        rows = store.read("sessions_30m")
        got = [
            (r["window_start"][11:16], r["duration_bin"], r["sessions"], r["events"]) for r in rows
        ]
        assert got == [("10:00", 10, 2, 8), ("10:00", 600, 1, 40), ("10:30", 10, 1, 2)]
        assert sum(r["duration_s"] for r in rows) == 12 + 14 + 700 + 12


def test_a_rollup_that_disagrees_with_its_windows_is_reported(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.write_batch("job", 0, batch(range(3), count=5, users=1))
        store.conn.execute("UPDATE traffic_5m SET count = count + 1")
        store.conn.commit()
        report = rollup_differences(store)
    assert report.startswith("traffic_5m: 1 rows, expected 1 from traffic;")
    assert "'count': 16" in report and "'count': 15" in report
    assert "traffic_30m: 1 rows, expected 1 from traffic_5m" in report


def test_windows_that_do_not_divide_a_grain_get_no_rollup_of_it(tmp_path):
    rows = [{**window(m, 7), "event_type": "search", "count": 1} for m in (0, 7, 14)]
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.write_batch("job", 0, {"traffic": rows})
        assert store.read("traffic_5m") == []  # 7-minute windows do not fit 5-minute buckets
        assert store.read("traffic_30m") == []
    assert grains_for(60) == (5, 30) and grains_for(120) == (30,) and grains_for(420) == ()


def test_the_grain_read_for_a_range_gives_a_few_hundred_points():
    assert grain_for(30, 60) is None  # the job's own one-minute windows
    assert grain_for(6 * 60, 60) is None  # 360 points
    assert grain_for(24 * 60, 60) == 5  # 288 points, not 1,440
    assert grain_for(7 * 24 * 60, 60) == 30  # 336 points, not 10,080
    assert grain_for(24 * 60, 420) is None  # no grain fits 7-minute windows


def test_session_bands():
    assert session_band(0) == 0 and session_band(14.9) == 10 and session_band(15) == 15
    assert session_band(99999) == SESSION_BANDS[-1] and session_band(None) == 0


def test_rollup_tables_are_read_by_name_and_unknown_names_say_what_exists(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        assert store.read("funnel_30m") == []
        with pytest.raises(StoreError, match="rollups, such as traffic_5m"):
            store.read("traffic_7m")


def test_sliding_windows_roll_up_from_the_windows_that_tile_time(tmp_path):
    # One-minute windows sliding by 30 s: every event is in two windows. Summing them all would
    # double the count; the rollup sums the windows starting on whole minutes.
    def sliding(second: int, count: int) -> dict:
        m, s = divmod(second, 60)
        return {
            "window_start": f"2026-11-28T10:{m:02d}:{s:02d}Z",
            "window_end": f"2026-11-28T10:{m + 1:02d}:{s:02d}Z",
            "event_type": "search",
            "count": count,
        }

    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.write_batch("job", 0, {"traffic": [sliding(t, 10 + t) for t in range(0, 300, 30)]})
        store.write_batch("job", 1, {"traffic": [sliding(330, 1)]})  # only a half-minute one
        assert [r["count"] for r in store.read("traffic_5m")] == [sum(range(10, 310, 60))]
        assert rollup_differences(store) == ""


def test_metrics_command_prints_a_rollup(tmp_path):
    import json

    from click.testing import CliRunner

    from clickstream.cli import main

    url = f"sqlite:///{tmp_path / 's.db'}"
    with open_store(url) as store:
        store.write_batch("job", 0, batch(range(0, 12), count=2, users=1))
    out = CliRunner().invoke(main, ["metrics", "traffic_30m", "--store", url, "--json"])
    assert out.exit_code == 0, out.output
    assert [(r["window_start"], r["count"]) for r in json.loads(out.stdout)] == [
        ("2026-11-28T10:00:00Z", 24)
    ]
    wrong = CliRunner().invoke(main, ["metrics", "traffic_2m", "--store", url])
    assert wrong.exit_code != 0 and "a rollup such as traffic_5m" in wrong.output
