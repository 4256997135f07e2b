"""The PostgreSQL store against a real server: crashes between staging and commit, restarts,
the same semantics as SQLite, the CLI, and errors that say what to do.

(The shared behaviour is in test_serving.py, which runs on every backend; the streaming job
writing it through Spark's JDBC writer is in tests/integration/test_stream_job.py.)
"""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from clickstream.local.broker import free_port
from clickstream.serve.postgres import PostgresStore, split_url
from clickstream.serve.store import StoreError, StoreMissingError, StoreVersionError, open_store
from tests.conftest import CLICKSTREAM
from tests.unit.test_serving import traffic

ROWS = {
    "traffic": [traffic(0, "page_view", 5), traffic(0, "search", 2), traffic(1, "page_view", 6)],
    "counters": [{"name": "records", "value": 13}],
}


def staged_count(url: str) -> int:
    conninfo, schema = split_url(url)
    with psycopg.connect(conninfo) as conn:
        return conn.execute(f"SELECT count(*) FROM {schema}.staging").fetchone()[0]


def test_staged_rows_of_a_crashed_attempt_are_never_seen_nor_applied(postgres_store_url):
    with open_store(postgres_store_url) as store:
        # A first attempt staged rows (other numbers: say, a half-written batch) and died.
        bogus = {"traffic": [traffic(0, "page_view", 999)]}
        store._stage_with_sql(store.staging_rows("stream", 0, bogus))
        assert store.read("traffic") == [] and store.last_batch("stream") is None
        # The retried batch replaces them and is applied once.
        assert store.write_batch("stream", 0, ROWS)
        assert [r["count"] for r in store.read("traffic")] == [5, 2, 6]
        assert store.counters() == {"records": 13}
    assert staged_count(postgres_store_url) == 0


def test_a_crash_inside_the_commit_applies_nothing(postgres_store_url, monkeypatch):
    real_upsert = PostgresStore._upsert
    calls = []

    def upsert_then_die(self, cur, name, job, batch_id):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("killed")
        real_upsert(self, cur, name, job, batch_id)

    with open_store(postgres_store_url) as store:
        monkeypatch.setattr(PostgresStore, "_upsert", upsert_then_die)
        with pytest.raises(RuntimeError, match="killed"):
            store.write_batch("stream", 0, ROWS)
        # The first metric's upsert ran, but in the transaction that was rolled back.
        assert store.read("traffic") == [] and store.counters() == {}
        assert store.last_batch("stream") is None and store.health() == []
        monkeypatch.setattr(PostgresStore, "_upsert", real_upsert)
    # A restarted process applies the batch once; replaying it again changes nothing.
    for attempt in range(2):
        with open_store(postgres_store_url) as store:
            assert store.write_batch("stream", 0, ROWS) is (attempt == 0)
            assert [r["count"] for r in store.read("traffic")] == [5, 2, 6]
            assert [h["batch_id"] for h in store.health("stream")] == [0]
    assert staged_count(postgres_store_url) == 0


def test_rows_lost_on_the_way_to_staging_fail_the_batch(postgres_store_url, monkeypatch):
    real = PostgresStore._stage_with_sql
    monkeypatch.setattr(PostgresStore, "_stage_with_sql", lambda self, rows: real(self, rows[:-1]))
    # The SQL path even when an earlier test left a Spark session running in this process.
    monkeypatch.setattr("clickstream.serve.postgres.active_spark", lambda: None)
    with open_store(postgres_store_url) as store:
        with pytest.raises(StoreError, match="3 of its 4 rows reached the staging table"):
            store.write_batch("stream", 0, ROWS)
        assert store.read("traffic") == [] and store.last_batch("stream") is None


def test_same_contents_as_sqlite_for_repeated_keys_and_nulls(postgres_store_url, tmp_path):
    batches = [
        {
            "traffic": [traffic(0, "page_view", 1), traffic(0, "page_view", 3)],  # last wins
            "alerts": [
                {
                    "alert_id": "a1",
                    "kind": "surge",
                    "status": "open",
                    "opened_at": "2026-11-28T10:02:00+00:00",
                    "peak": 40,
                    "baseline": 12.5,
                    "detail": "x",
                }
            ],
            "products": [
                {
                    "window_start": "2026-11-28T10:00:00Z",
                    "window_end": "2026-11-28T10:01:00Z",
                    "product_id": "P1",
                    "category": "books",
                    "views": 2.0,
                    "carts": 0,
                    "purchases": 1,
                    "revenue": 19,
                }
            ],
        },
        {
            "alerts": [
                {
                    "alert_id": "a1",
                    "kind": "surge",
                    "status": "closed",
                    "opened_at": "2026-11-28T10:02:00Z",
                    "closed_at": "2026-11-28T10:05:00Z",
                    "peak": 41.5,
                    "baseline": 12.5,
                    "detail": "x",
                }
            ]
        },
    ]
    health = {"watermark": "2026-11-28T10:00:30Z", "input_rows": 7, "lag": None}
    sqlite_url = f"sqlite:///{tmp_path / 's.db'}"
    for url in (sqlite_url, postgres_store_url):
        with open_store(url) as store:
            for i, rows in enumerate(batches):
                assert store.write_batch("stream", i, rows, {**health, "committed_at": 100.0 + i})
    with open_store(sqlite_url) as lite, open_store(postgres_store_url, readonly=True) as pg:
        for name in ("traffic", "alerts", "products"):
            assert pg.read(name) == lite.read(name), name
        assert pg.health() == lite.health()
        assert pg.read("traffic", where={"count": "3"}) == lite.read("traffic")


def test_metrics_cli_prints_from_postgres(postgres_store_url):
    with open_store(postgres_store_url) as store:
        store.write_batch("stream", 0, ROWS, {"input_rows": 13, "duration_ms": 4.5})
    as_json = subprocess.run(
        [CLICKSTREAM, "metrics", "traffic", "--store", postgres_store_url, "--json"]
        + ["--limit", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [traffic(1, "page_view", 6)]
    table = subprocess.run(
        [CLICKSTREAM, "metrics", "counters", "--store", postgres_store_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.split() == ["name", "value", "records", "13"]


def test_an_empty_database_says_no_data_yet(postgres_store_url):
    with open_store(postgres_store_url, readonly=True) as store:
        with pytest.raises(StoreMissingError, match="clickstream stream"):
            store.check_version()
        with pytest.raises(StoreMissingError):
            store.read("traffic")
    missing = subprocess.run(
        [CLICKSTREAM, "metrics", "traffic", "--store", postgres_store_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "clickstream stream" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_another_schema_version_is_refused(postgres_store_url):
    open_store(postgres_store_url).close()
    conninfo, schema = split_url(postgres_store_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"UPDATE {schema}.meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="--reset"):
        open_store(postgres_store_url)
    with (
        open_store(postgres_store_url, readonly=True) as reader,
        pytest.raises(StoreVersionError, match="schema version 0"),
    ):
        reader.check_version()


def test_unreachable_server_and_bad_urls_are_clear_errors(postgres_url):
    url = f"postgresql://reader:s3cret@127.0.0.1:{free_port()}/db"
    with pytest.raises(StoreError, match="Cannot connect to PostgreSQL") as err:
        open_store(url)
    assert "is the server running" in str(err.value).lower()
    assert "s3cret" not in str(err.value) and "reader:***@" in str(err.value)
    with pytest.raises(StoreError, match="does not exist"):
        open_store(postgres_url.rsplit("/", 1)[0] + "/no_such_db")
    with pytest.raises(StoreError, match="Invalid schema"):
        open_store(f"{postgres_url}?schema=Robert');DROP")


def test_jdbc_url_and_properties_come_from_the_connection(postgres_store_url):
    with open_store(postgres_store_url) as store:
        url, props = store.jdbc()
    port = postgres_store_url.split(":")[2].split("/")[0]
    assert url == f"jdbc:postgresql://127.0.0.1:{port}/clickstream_test"
    assert props["user"] == "clickstream" and props["driver"] == "org.postgresql.Driver"
