"""The streaming job against a real broker, real Spark and real stores: every metric exact.

The expected store comes from `tests.stream_truth`, computed from the records sent (plain
Python over the whole stream), never from Spark or the job's engine.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from dataclasses import replace
from datetime import datetime

import pytest

from clickstream.ingest.kafka_io import delete_topic, ensure_topic, read_all, send_all
from clickstream.process.stream import (
    JOB,
    CheckpointMismatchError,
    StreamConfig,
    StreamJob,
    run_available_now,
)
from clickstream.serve.rollups import rollup_differences
from clickstream.serve.store import SCHEMA_VERSION, open_store
from clickstream.source.simulator import SimConfig
from tests.conftest import CLICKSTREAM
from tests.stream_truth import (
    Params,
    build_stream,
    diff,
    expected_store,
    store_rows,
    stream_config,
)

PARAMS = Params()  # 10 s windows, 30 s watermark, 30 s session gap
MAX_PER_BATCH = 600  # ~50 s of event time per batch
LATE_DELAY_S, SETTLE_S = 180.0, 120.0  # late events clear of the watermark with such batches


def batched_stream(count: int = 4800) -> list[tuple[bytes | None, bytes]]:
    """The test stream, with late events far enough behind for batches of MAX_PER_BATCH
    (tests.stream_truth explains the margins)."""
    config = stream_config(count=count, late_delay_s=LATE_DELAY_S)
    return build_stream(config, settle_s=SETTLE_S)


@pytest.fixture(scope="module")
def records():
    return batched_stream()


@pytest.fixture(scope="module")
def truth(records):
    return expected_store(records, PARAMS)


def job_config(topic, bootstrap, store_url, checkpoint, **options) -> StreamConfig:
    options.setdefault("alerts_topic", f"{topic}_alerts")
    options.setdefault("quarantine_topic", f"{topic}_quarantine")
    options.setdefault("max_offsets_per_trigger", MAX_PER_BATCH)
    return StreamConfig.create(
        topic=topic,
        bootstrap_servers=bootstrap,
        store_url=store_url,
        checkpoint=checkpoint,
        **{**PARAMS.job_options(), **options},
    )


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.integration
@pytest.mark.spark
def test_every_metric_equals_the_ground_truth(
    spark, bootstrap, topic, store_url, tmp_path, records, truth, monkeypatch
):
    if store_url.startswith("postgresql://"):
        # The job writes PostgreSQL through Spark's JDBC writer, never the driver-side fallback.
        from clickstream.serve.postgres import PostgresStore

        def no_fallback(*args):
            raise AssertionError("the streaming job staged rows without Spark's JDBC writer")

        monkeypatch.setattr(PostgresStore, "_stage_with_sql", no_fallback)
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    assert send_all(records, topic, bootstrap) == len(records)
    config = job_config(topic, bootstrap, store_url, tmp_path / "checkpoint")
    try:
        summary = run_available_now(config, spark=spark)
        assert summary.records == len(records)
        assert summary.batches >= len(records) // MAX_PER_BATCH

        with open_store(store_url) as store:
            got = store_rows(store)
            health = store.health(JOB, limit=1000)
            rollups_off = rollup_differences(store)
        assert got == truth.rows, diff(got, truth.rows)
        # Every rollup (5 and 30 minutes) is the exact aggregate of the grain below it.
        assert rollups_off == ""
        with open_store(store_url) as store:
            assert sum(r["count"] for r in store.read("traffic_30m")) == sum(
                r["count"] for r in truth.rows["traffic"]
            )
        # The stream holds what it should, so the comparison above means something.
        counters = {r["name"]: r["value"] for r in got["counters"]}
        assert counters["late_dropped"] > 20 and counters["duplicates_removed"] == 25
        assert counters["quarantined"] == 30 and len(got["quarantine"]) > 6
        assert len(got["sessions"]) > 100 and len(got["paths"]) > 100

        # State lives in Spark's state store (RocksDB), one directory per stateful operator and
        # shuffle partition: de-duplication and the windows' aggregation, the sessions' window.
        # No pickled Python state anywhere.
        partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
        for query, operators in (("spark", 2), ("sessions", 1)):
            state = config.checkpoint / query / "state"
            ops = sorted(p for p in state.iterdir() if p.name.isdigit())
            assert len(ops) == operators, (query, ops)
            for op in ops:
                parts = [p for p in op.iterdir() if p.name.isdigit()]
                assert len(parts) == partitions > 1, (op, parts)
                assert any(f.suffix in (".changelog", ".zip") for p in parts for f in p.iterdir())
        assert not [p for p in config.checkpoint.rglob("*") if p.suffix in (".pkl", ".pickle")]

        # Every injected incident and surge opened an alert that closed after it ended.
        sim = stream_config()
        t0 = sim.start_time.timestamp()
        for kind, intervals in (("error_spike", sim.incidents), ("surge", sim.surges)):
            for start, end, _ in intervals:
                hits = [
                    a
                    for a in got["alerts"]
                    if a["kind"] == kind
                    and _epoch(a["opened_at"]) < t0 + end
                    and a["closed_at"] is not None
                    and _epoch(a["closed_at"]) > t0 + start
                ]
                assert len(hits) == 1, (kind, start, got["alerts"])
                assert hits[0]["status"] == "closed"
                assert _epoch(hits[0]["closed_at"]) >= t0 + end
        assert len(got["alerts"]) == len(sim.incidents) + len(sim.surges)

        # Health: one row per batch, the last one caught up, watermark = newest - delay (the
        # last batch reads nothing: Spark runs it to move the watermark and close windows).
        assert [h["batch_id"] for h in health] == list(range(summary.batches))[::-1]
        last = health[0]
        assert last["lag"] == 0 and last["input_rows"] == 0 and last["duration_ms"] > 0
        assert _epoch(last["watermark"]) == truth.final_watermark // 1_000_000
        assert sum(h["input_rows"] for h in health) == len(records)
        assert all(h["processing_rate"] > 0 for h in health if h["input_rows"])
        newest = max(t for t, _ in truth.accepted) // 1_000_000
        assert _epoch(last["max_event_time"]) == newest

        # Alerts and quarantined records reached their topics, each with its reason.
        messages = [json.loads(m.value) for m in read_all(config.alerts_topic, bootstrap)]
        assert sorted((m["alert_id"], m["status"]) for m in messages) == sorted(
            [(a["alert_id"], "open") for a in truth.rows["alerts"]]
            + [(a["alert_id"], "closed") for a in truth.rows["alerts"] if a["closed_at"]]
        )
        quarantined = [json.loads(m.value) for m in read_all(config.quarantine_topic, bootstrap)]
        assert sorted((q["reason"], q.get("value", "").encode()) for q in quarantined) == sorted(
            truth.invalid
        )

        # Running again with nothing new changes nothing.
        again = run_available_now(config, spark=spark)
        assert again.records == 0
        with open_store(store_url) as store:
            assert store_rows(store) == truth.rows
    finally:
        for extra in (config.alerts_topic, config.quarantine_topic):
            delete_topic(extra, bootstrap)


@pytest.mark.integration
@pytest.mark.spark
def test_a_batch_replayed_after_a_crash_is_not_counted_twice(spark, bootstrap, topic, tmp_path):
    """Kill between the store write and Spark's commit, and between the state file and the
    store write: the restarted job ends with the same store (deterministic crash points;
    test_exactly_once kills at random ones)."""
    records = batched_stream(count=1500)
    truth = expected_store(records, PARAMS)
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    send_all(records, topic, bootstrap)
    store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    config = job_config(
        topic, bootstrap, store_url, tmp_path / "ckpt", alerts_topic="", quarantine_topic=""
    )
    summary = run_available_now(config, spark=spark)
    last = summary.batches - 1
    commits = config.checkpoint / "spark" / "commits"

    def forget_commit() -> None:  # as if Spark died before committing the last batch
        (commits / str(last)).unlink()
        (commits / f".{last}.crc").unlink(missing_ok=True)

    # Crash after the store write, before Spark's commit: the batch is replayed and skipped.
    forget_commit()
    replay = run_available_now(config, spark=spark)
    assert (replay.batches, replay.skipped) == (0, 1)
    # Crash after the state file, before the store write: replayed and recomputed the same.
    forget_commit()
    db = sqlite3.connect(tmp_path / "serving.db")
    with db:
        db.execute("DELETE FROM batches WHERE job = ? AND batch_id = ?", (JOB, last))
    db.close()
    replay = run_available_now(config, spark=spark)
    assert (replay.batches, replay.skipped) == (1, 0)
    with open_store(store_url) as store:
        got = store_rows(store)
    assert got == truth.rows, diff(got, truth.rows)


@pytest.mark.integration
@pytest.mark.spark
def test_a_checkpoint_that_does_not_match_says_to_reset(spark, bootstrap, topic, tmp_path):
    small = build_stream(SimConfig(seed=3, count=400, rate=12.0))
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    send_all(small, topic, bootstrap)
    store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    checkpoint = tmp_path / "ckpt"
    config = job_config(
        topic, bootstrap, store_url, checkpoint, alerts_topic="", quarantine_topic=""
    )
    assert run_available_now(config, spark=spark).records == len(small)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CLICKSTREAM, "stream", "--bootstrap-servers", bootstrap, "--store", store_url]
            + ["--checkpoint", str(checkpoint), "--available-now", "--alerts-topic", ""]
            + ["--quarantine-topic", "", *PARAMS.cli_args(), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    # Another topic, or other windows, on the same checkpoint: refused before Spark starts.
    other = cli("--topic", f"{topic}_other")
    assert other.returncode == 1
    assert "made with other settings" in other.stderr and "--reset" in other.stderr
    assert "Traceback" not in other.stderr
    with pytest.raises(CheckpointMismatchError, match="window_us"):
        StreamJob(replace(config, window="20 seconds")).preflight()

    # The store emptied behind the job's back: refused too.
    with open_store(store_url) as store:
        store.reset()
    with pytest.raises(CheckpointMismatchError, match="store and the checkpoint disagree"):
        StreamJob(config).preflight()

    # The topic deleted and re-created with fewer records: the offsets are beyond its end.
    delete_topic(topic, bootstrap)
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    send_all(small[:10], topic, bootstrap)
    with pytest.raises(CheckpointMismatchError, match=r"deleted and re-created.*--reset"):
        StreamJob(config).preflight()

    # --reset starts over and counts everything once.
    summary = run_available_now(replace(config, reset=True), spark=spark)
    assert summary.records == 10
    with open_store(store_url) as store:
        assert store.counters()["records"] == 10


@pytest.mark.integration
@pytest.mark.spark
def test_sliding_windows_and_metrics_cli(spark, bootstrap, topic, tmp_path):
    small = build_stream(
        SimConfig(seed=5, count=1500, rate=12.0, late_share=0.02, late_delay_s=LATE_DELAY_S),
        settle_s=SETTLE_S,
    )
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    send_all(small, topic, bootstrap)
    params = Params(window_s=10, slide_s=5)
    store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    config = StreamConfig.create(
        topic=topic,
        bootstrap_servers=bootstrap,
        store_url=store_url,
        checkpoint=tmp_path / "ckpt",
        max_offsets_per_trigger=MAX_PER_BATCH,
        alerts_topic="",
        quarantine_topic="",
        **params.job_options(),
    )
    run_available_now(config, spark=spark)
    want = expected_store(small, params).rows
    with open_store(store_url) as store:
        got = store_rows(store)
    assert got == want, diff(got, want)

    as_json = subprocess.run(
        [CLICKSTREAM, "metrics", "traffic", "--store", store_url, "--json", "--limit", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(as_json.stdout)
    starts = sorted({r["window_start"] for r in want["traffic"]})[-3:]
    assert rows == [r for r in want["traffic"] if r["window_start"] in starts]
    assert all(r["window_start"].endswith("Z") for r in rows)
    table = subprocess.run(
        [CLICKSTREAM, "metrics", "counters", "--store", store_url],
        capture_output=True,
        text=True,
        check=True,
    )
    assert table.stdout.split()[:2] == ["name", "value"]
    assert ["records", str(len(small))] in [line.split() for line in table.stdout.splitlines()]


def test_metrics_cli_errors_are_clear(tmp_path):
    missing = subprocess.run(
        [CLICKSTREAM, "metrics", "traffic", "--store", f"sqlite:///{tmp_path / 'none.db'}"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "clickstream stream" in missing.stderr
    unknown = subprocess.run(
        [CLICKSTREAM, "metrics", "visits", "--store", f"sqlite:///{tmp_path / 'none.db'}"],
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 2 and "Unknown metric 'visits'" in unknown.stderr
    assert "traffic" in unknown.stderr and "Traceback" not in unknown.stderr
    old = tmp_path / "old.db"
    open_store(f"sqlite:///{old}").close()
    db = sqlite3.connect(old)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION - 1,))
    db.close()
    outdated = subprocess.run(
        [CLICKSTREAM, "metrics", "traffic", "--store", f"sqlite:///{old}"],
        capture_output=True,
        text=True,
    )
    assert outdated.returncode == 1 and "--reset" in outdated.stderr
    assert "schema version" in outdated.stderr


@pytest.mark.integration
@pytest.mark.spark
def test_spark_native_definitions_agree_with_the_job(spark):
    """The DataFrame versions in clickstream.process.pipeline (what notebooks build) give the rows the
    job writes (the expected store, which the job's equals: see the first test)."""
    from datetime import UTC

    from pyspark.sql import functions as F

    from clickstream.process import pipeline
    from clickstream.source.simulator import load_catalogue
    from clickstream.times import iso

    truth = expected_store(batched_stream(count=1500), PARAMS)
    rows = [
        (
            e["event_id"],
            datetime.fromtimestamp(t / 1e6, UTC),
            *(e[c] for c in ("user_id", "session_id", "event_type", "page")),
            *(e.get(c) for c in ("product_id", "price", "device", "country")),
        )
        for t, e in truth.accepted
    ]
    schema = (
        "event_id string, event_ts timestamp, user_id string, session_id string, "
        "event_type string, page string, product_id string, price double, device string, "
        "country string"
    )
    catalogue = spark.createDataFrame(
        [(p.product_id, p.category) for p in load_catalogue()], "product_id string, category string"
    )
    events = pipeline.with_category(spark.createDataFrame(rows, schema), catalogue).cache()
    window, gap = PARAMS.job_options()["window"], PARAMS.job_options()["session_gap"]

    def rows_of(df, key):
        out = []
        for r in df.collect():
            d = r.asDict()
            for col in ("window_start", "window_end"):
                d[col] = iso(d[col])
            out.append(d)
        return sorted(out, key=lambda d: tuple(d[k] for k in key))

    w = ("window_start",)
    assert (
        rows_of(pipeline.segment_counts(events, window), w + ("country", "device", "category"))
        == truth.rows["segments"]
    )
    assert (
        rows_of(pipeline.product_stats(events, window), w + ("product_id",))
        == truth.rows["products"]
    )
    assert rows_of(pipeline.error_rates(events, window), w) == truth.rows["errors"]
    assert rows_of(pipeline.active_users(events, window), w) == truth.rows["active_users"]
    cutoff = datetime.fromtimestamp(truth.final_watermark / 1e6, UTC)
    sessions = pipeline.session_windows(events, gap).where(F.col("window_end") <= F.lit(cutoff))
    key = ("window_start", "window_end", "user_id", "session_id")
    assert rows_of(sessions, key) == truth.rows["sessions"]
    # Paths count once their session has closed: the transitions of closed sessions' events.
    closed = sessions.select(
        "user_id", "session_id", F.col("window_start").alias("s"), F.col("window_end").alias("e")
    )
    in_closed = events.join(closed, ["user_id", "session_id"]).where(
        (F.col("event_ts") >= F.col("s")) & (F.col("event_ts") < F.col("e"))
    )
    paths = pipeline.transitions(in_closed, gap, window)
    assert rows_of(paths, w + ("from_page", "to_page")) == truth.rows["paths"]
    events.unpersist()
