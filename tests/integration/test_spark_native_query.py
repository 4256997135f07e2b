"""The streaming job's query built from Spark's own operators (`clickstream.pipeline`), on a real
broker and a real Spark session, against the ground truth of `tests.stream_truth`.

Two queries on the same topic: every windowed metric, the quarantine counts and the totals in one
stateful aggregation (update mode, after the watermark and `dropDuplicatesWithinWatermark`), and
sessions with their page paths in `session_window` (append mode). Late and duplicate counts are
Spark's own operator metrics.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clickstream import events
from clickstream import pipeline as P
from clickstream.kafka_io import ensure_topic, send_all
from clickstream.simulator import SimConfig, Simulator, load_catalogue
from tests.stream_truth import Params, build_stream, expected_store, iso

PARAMS = Params()  # 10 s windows, 30 s watermark, 30 s session gap
MAX_PER_BATCH = 300  # ~25 s of event time per batch: late events stay clear of the watermark
CATEGORIES = {p.product_id: p.category for p in load_catalogue()}

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def run_queries(spark, topic: str, bootstrap: str, checkpoint: Path, params: Params = PARAMS):
    """Both queries with availableNow, side by side; returns (window rows, session rows,
    progress of the window query)."""
    raw = P.read_kafka(spark, topic, bootstrap, max_offsets_per_trigger=MAX_PER_BATCH)
    opts = params.job_options()
    checked = P.with_watermark(P.contract_checked(raw), opts["watermark"])
    facts = P.metric_facts(
        P.unique_events(checked), CATEGORIES, opts["window"], opts["slide"], opts["watermark"]
    )
    windows = P.window_metrics(facts)
    sessions = P.session_metrics(checked, opts["session_gap"], opts["window"], opts["slide"])
    latest: dict = {}
    session_rows: list = []
    lock = threading.Lock()

    def on_windows(df, batch_id):
        rows = df.collect()
        with lock:
            for r in rows:
                latest[(r.metric, r.window_start, r.k1, r.k2, r.k3)] = r

    def on_sessions(df, batch_id):
        rows = df.collect()
        with lock:
            session_rows.extend(rows)

    q1 = (
        windows.writeStream.outputMode("update")
        .foreachBatch(on_windows)
        .option("checkpointLocation", str(checkpoint / "windows"))
        .trigger(availableNow=True)
        .start()
    )
    q2 = (
        sessions.writeStream.outputMode("append")
        .foreachBatch(on_sessions)
        .option("checkpointLocation", str(checkpoint / "sessions"))
        .trigger(availableNow=True)
        .start()
    )
    q1.awaitTermination()
    q2.awaitTermination()
    return list(latest.values()), session_rows, q1.recentProgress


def as_store(window_rows, session_rows, progress) -> dict[str, list[dict]]:
    rows, totals = P.window_metric_rows(window_rows)
    key = {
        "traffic": lambda r: (r["window_start"], r["event_type"]),
        "segments": lambda r: (r["window_start"], r["country"], r["device"], r["category"]),
        "products": lambda r: (r["window_start"], r["product_id"]),
        "quarantine": lambda r: r["reason"],
    }
    for name, items in rows.items():
        items.sort(key=key.get(name, lambda r: r["window_start"]))
    sessions, paths = P.session_metric_rows(session_rows)
    rows["sessions"] = sorted(
        sessions,
        key=lambda r: (r["window_start"], r["window_end"], r["user_id"], r["session_id"]),
    )
    rows["paths"] = [
        {"window_start": s, "window_end": e, "from_page": a, "to_page": b, "count": n}
        for (s, e, a, b), n in sorted(paths.items())
    ]
    dedup = [
        op
        for p in progress
        for op in p["stateOperators"]
        if op["operatorName"].startswith("dedupe")
    ]
    late = sum(op["numRowsDroppedByWatermark"] for op in dedup)
    dups = sum(op["customMetrics"].get("numDroppedDuplicateRows", 0) for op in dedup)
    records = sum(p["numInputRows"] for p in progress)
    rows["counters"] = sorted(
        (
            {"name": "records", "value": records},
            {"name": "quarantined", "value": totals.get("quarantined", 0)},
            {"name": "late_dropped", "value": late},
            {"name": "duplicates_removed", "value": dups},
            {"name": "events", "value": totals.get("events", 0)},
        ),
        key=lambda r: r["name"],
    )
    return rows


NAMES = (
    "traffic",
    "segments",
    "products",
    "active_users",
    "funnel",
    "errors",
    "sessions",
    "paths",
    "quarantine",
    "counters",
)


def test_spark_operators_compute_every_metric_exactly(spark, bootstrap, topic, tmp_path):
    records = build_stream()
    truth = expected_store(records, PARAMS)
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    assert send_all(records, topic, bootstrap) == len(records)

    window_rows, session_rows, progress = run_queries(spark, topic, bootstrap, tmp_path)
    got = as_store(window_rows, session_rows, progress)

    for name in NAMES:
        assert got[name] == truth.rows[name], (
            name,
            [r for r in got[name] if r not in truth.rows[name]][:3],
            [r for r in truth.rows[name] if r not in got[name]][:3],
        )
    counters = {r["name"]: r["value"] for r in got["counters"]}
    assert counters["late_dropped"] > 20 and counters["duplicates_removed"] == 25
    assert counters["quarantined"] == 30 and len(got["sessions"]) > 100
    assert len(progress) >= len(records) // MAX_PER_BATCH

    # State lives in Spark's state store (RocksDB), one directory per stateful operator and
    # shuffle partition, and nothing else is kept: no pickled Python state anywhere.
    for query, operators in (("windows", 2), ("sessions", 1)):
        state = tmp_path / query / "state"
        ops = sorted(p for p in state.iterdir() if p.name.isdigit())
        assert len(ops) == operators, (query, ops)
        for op in ops:
            partitions = [p for p in op.iterdir() if p.name.isdigit()]
            assert len(partitions) == int(spark.conf.get("spark.sql.shuffle.partitions")) > 1
            assert any(f.suffix in (".changelog", ".zip") for p in partitions for f in p.iterdir())
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pkl", ".pickle")]


def test_contract_checks_in_spark_give_the_reasons_of_events_validate(spark):
    values: list[bytes | None] = [
        r.value for r in Simulator(SimConfig(seed=3, count=400, malformed_count=150)).records()
    ]
    good = json.loads(values[0])
    for change in (
        {"event_id": 1},
        {"event_id": ""},
        {"price": True},
        {"price": "1.5"},
        {"price": 10**30},
        {"status_code": 2**31},
        {"status_code": 1.0},
        {"status_code": None},
        {"device": ["x"]},
        {"event_type": "x" * 80},
        {"event_time": "2026-11-28T10:15:03+19:00"},
        {"event_time": "2026-02-30T10:15:03Z"},
        {"event_time": "2026-11-28T10:15:03.123456789+01:30"},
        {"event_time": "2026-11-28 10:15:03Z"},
    ):
        values.append(events.to_json_bytes({**good, **change}))
    values += [
        None,
        b"\xff\xfe",
        b"[1]",
        b"null",
        b"1e999",
        b'{"price":1e999}',
        b'{"event_id":"a","event_id":"b"}',
    ]
    values.append(json.dumps({**good, "event_id": "dup-key"})[:-1].encode() + b', "page": "/x"}')
    produced = datetime(2026, 11, 28, 12, tzinfo=UTC)
    df = spark.createDataFrame(
        [(v, 0, i, produced) for i, v in enumerate(values)],
        "value binary, partition int, offset long, timestamp timestamp",
    )
    got = {r.offset: r.reason for r in P.contract_checked(df).select("offset", "reason").collect()}
    want = {i: events.parse_value(v)[1] for i, v in enumerate(values)}
    assert got == want
    assert len(set(want.values())) > 10


def test_no_single_record_can_stop_the_job_or_move_its_watermark(spark, bootstrap, topic, tmp_path):
    """Events dated in year 9999, decades ahead and in year 1: the job (`clickstream stream`)
    survives, quarantines them, and counts every other event; its watermark stays real."""
    from clickstream.serving import open_store
    from clickstream.stream import JOB, run_available_now

    sim = SimConfig(seed=5, count=900, rate=12.0)
    records = [(r.key, r.value) for r in Simulator(sim).records()]
    now = datetime.now(UTC)
    absurd = {
        "9999-12-31T23:59:30Z": events.TOO_FAR_AHEAD,
        iso(int((now + timedelta(days=365 * 40)).timestamp()) * 1_000_000): events.TOO_FAR_AHEAD,
        "0001-01-01T00:00:00Z": events.TOO_EARLY,
        "1999-12-31T23:59:59Z": events.TOO_EARLY,
    }
    template = json.loads(records[10][1])
    for i, when in enumerate(absurd):
        bad = {**template, "event_id": f"absurd-{i}", "event_time": when}
        records.insert(100 + 200 * i, (bad["user_id"].encode(), events.to_json_bytes(bad)))
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    assert send_all(records, topic, bootstrap) == len(records)

    store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    summary = run_available_now(
        spark=spark,
        topic=topic,
        bootstrap_servers=bootstrap,
        store_url=store_url,
        checkpoint=tmp_path / "checkpoint",
        max_offsets_per_trigger=MAX_PER_BATCH,
        alerts_topic="",
        quarantine_topic="",
        **PARAMS.job_options(),
    )
    assert summary.records == len(records)
    with open_store(store_url) as store:
        quarantine = {r["reason"]: r["count"] for r in store.read("quarantine")}
        counters = store.counters()
        traffic = store.read("traffic")
        health = store.health(JOB, limit=1000)
    assert quarantine == {events.TOO_FAR_AHEAD: 2, events.TOO_EARLY: 2}
    assert counters["events"] == sim.count and counters["late_dropped"] == 0
    assert sum(r["count"] for r in traffic) == sim.count
    newest = max(json.loads(v)["event_time"] for _, v in records if b"absurd" not in v)
    assert all(h["watermark"] is None or h["watermark"] < newest for h in health)
    assert max(h["max_event_time"] or "" for h in health)[:19] == newest[:19]
