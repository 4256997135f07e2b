"""The serving store: idempotent batches, bounded reads, versions, both backends."""

from __future__ import annotations

import sqlite3

import pytest

from clickstream.serve.store import (
    SCHEMA_VERSION,
    StoreError,
    StoreMissingError,
    StoreVersionError,
    differences,
    open_store,
)
from clickstream.times import iso


def traffic(minute: int, event_type: str, count: int) -> dict:
    return {
        "window_start": f"2026-11-28T10:{minute:02d}:00Z",
        "window_end": f"2026-11-28T10:{minute + 1:02d}:00Z",
        "event_type": event_type,
        "count": count,
    }


def test_batches_are_applied_once_and_rows_upserted(store_url):
    with open_store(store_url) as store:
        assert store.write_batch("job", 0, {"traffic": [traffic(0, "page_view", 5)]})
        assert not store.write_batch("job", 0, {"traffic": [traffic(0, "page_view", 999)]})
        assert store.write_batch(
            "job", 1, {"traffic": [traffic(0, "page_view", 7), traffic(1, "search", 2)]}
        )
        rows = store.read("traffic")
        assert [(r["window_start"], r["event_type"], r["count"]) for r in rows] == [
            ("2026-11-28T10:00:00Z", "page_view", 7),
            ("2026-11-28T10:01:00Z", "search", 2),
        ]
        assert store.last_batch("job") == 1
        assert store.schema_version() == SCHEMA_VERSION
        assert [h["batch_id"] for h in store.health("job")] == [1, 0]


def test_two_stores_compare_by_their_contents(tmp_path):
    with (
        open_store(f"sqlite:///{tmp_path / 'a.db'}") as a,
        open_store(f"sqlite:///{tmp_path / 'b.db'}") as b,
    ):
        for store, batch in ((a, 0), (b, 7)):  # batch ids and health are not contents
            store.write_batch("job", batch, {"traffic": [traffic(0, "page_view", 5)]})
        assert a.contents() == b.contents() and differences(a.contents(), b.contents()) == ""
        assert set(a.contents()) == {
            "traffic",
            "segments",
            "products",
            "active_users",
            "funnel",
            "sessions",
            "paths",
            "errors",
            "alerts",
            "quarantine",
            "counters",
        }
        b.write_batch("job", 8, {"traffic": [traffic(0, "page_view", 6), traffic(1, "search", 1)]})
        lines = differences(b.contents(), a.contents()).splitlines()
        assert len(lines) == 1 and lines[0].startswith("traffic: 2 rows, expected 1; unexpected")
        assert "'count': 6" in lines[0] and "missing [{" in lines[0] and "'count': 5" in lines[0]


def test_reads_are_bounded_by_time_and_limit(store_url):
    with open_store(store_url) as store:
        store.write_batch(
            "job",
            0,
            {"traffic": [traffic(m, t, m) for m in range(30) for t in ("page_view", "search")]},
        )
        newest = store.read("traffic", limit=3)
        assert sorted({r["window_start"] for r in newest}) == [
            "2026-11-28T10:27:00Z",
            "2026-11-28T10:28:00Z",
            "2026-11-28T10:29:00Z",
        ]
        assert len(newest) == 6
        ranged = store.read("traffic", since="2026-11-28T10:05:00Z", until="2026-11-28T10:07:00Z")
        assert [r["count"] for r in ranged] == [5, 5, 6, 6]
        only = store.read("traffic", where={"event_type": "search"}, since="2026-11-28T10:29:00Z")
        assert [(r["event_type"], r["count"]) for r in only] == [("search", 29)]


def test_non_windowed_metrics_and_counters(store_url):
    with open_store(store_url) as store:
        store.write_batch(
            "job",
            0,
            {
                "quarantine": [{"reason": "not_json", "count": 3}],
                "counters": [{"name": "late_dropped", "value": 4}],
                "alerts": [
                    {
                        "alert_id": "a1",
                        "kind": "error_spike",
                        "status": "open",
                        "opened_at": "2026-11-28T10:02:00Z",
                        "peak": 0.3,
                        "baseline": 0.01,
                    }
                ],
            },
        )
        assert store.counters() == {"late_dropped": 4}
        assert store.read("quarantine") == [{"reason": "not_json", "count": 3}]
        alert = store.read("alerts")[0]
        assert alert["status"] == "open" and alert["closed_at"] is None


def test_unknown_metric_names_the_known_ones(store_url):
    with open_store(store_url) as store, pytest.raises(StoreError, match="traffic"):
        store.read("nope")


def test_missing_sqlite_store_for_readers(tmp_path):
    with pytest.raises(StoreMissingError, match="clickstream stream"):
        open_store(f"sqlite:///{tmp_path / 'absent.db'}", readonly=True)


def test_older_sqlite_store_is_reported_not_misread(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreVersionError, match="--reset"):
        open_store(f"sqlite:///{path}")
    reader = open_store(f"sqlite:///{path}", readonly=True)
    with pytest.raises(StoreVersionError):
        reader.check_version()


def test_readers_in_other_connections_see_committed_batches(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    writer = open_store(url)
    reader_before = None
    writer.write_batch("job", 0, {"traffic": [traffic(0, "page_view", 1)]})
    reader_before = open_store(url, readonly=True)
    writer.write_batch("job", 1, {"traffic": [traffic(0, "page_view", 2)]})
    assert reader_before.read("traffic")[0]["count"] == 2


def test_store_urls():
    with pytest.raises(StoreError, match="sqlite:///"):
        open_store("mysql://x")
    assert iso("2026-11-28T10:00:00+01:00") == "2026-11-28T09:00:00Z"


def test_the_ledger_keeps_the_newest_batches_and_knows_older_ones_were_applied(
    store_url, monkeypatch
):
    from clickstream.serve import store as serving

    monkeypatch.setattr(serving, "KEEP_BATCHES", 3)
    if store_url.startswith("postgresql"):
        from clickstream.serve import postgres as serving_postgres

        monkeypatch.setattr(serving_postgres, "KEEP_BATCHES", 3)
    with open_store(store_url) as store:
        for batch in range(6):
            assert store.write_batch("job", batch, {"traffic": [traffic(0, "page_view", batch)]})
        assert store.last_batch("job") == 5
        # Batches 0-2 were pruned from the ledger: a replay of one is still recognised.
        assert not store.write_batch("job", 1, {"traffic": [traffic(0, "page_view", 99)]})
        assert not store.write_batch("job", 5, {"traffic": [traffic(0, "page_view", 99)]})
        assert store.read("traffic")[0]["count"] == 5
        assert store.write_batch("other", 0, {"traffic": [traffic(1, "search", 1)]})


def test_ledger_rows_added_in_bulk_count_as_applied_batches(store_url):
    rows = [{"job": "old", "batch_id": b, "committed_at": 1000.0 + b} for b in range(2000)]
    with open_store(store_url) as store:
        store.add_ledger_rows(iter(rows))
        assert store.last_batch("old") == 1999
        assert not store.write_batch("old", 0, {"traffic": [traffic(0, "page_view", 1)]})
        assert not store.write_batch("old", 1999, {"traffic": [traffic(0, "page_view", 1)]})
        assert store.read("traffic") == []
        assert store.write_batch("old", 2000, {"traffic": [traffic(0, "page_view", 1)]})
        assert store.last_batch("other") is None


def test_two_redis_writers_of_the_same_batch_apply_it_once(redis_url):
    import threading

    import redis

    redis.Redis.from_url(redis_url).flushdb()
    stores = [open_store(redis_url), open_store(redis_url)]
    for batch in range(20):
        start = threading.Barrier(2)
        applied = []

        def write(store, batch=batch, start=start, applied=applied):
            start.wait()
            rows = {"traffic": [traffic(0, "page_view", batch)]}
            applied.append(store.write_batch("job", batch, rows, {"input_rows": 1}))

        threads = [threading.Thread(target=write, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(applied) == [False, True], (batch, applied)
    health = stores[0].health("job", limit=100)
    assert sorted(h["batch_id"] for h in health) == list(range(20))  # one health row each
    for s in stores:
        s.close()
