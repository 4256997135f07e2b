"""The streaming job's settings, checkpoint files and messages, without Spark (the job itself
runs against a real broker and Spark in tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clickstream.process.checkpoint import batch_info, records_through
from clickstream.process.stream import (
    JOB,
    CheckpointMismatchError,
    DetectorFiles,
    Spec,
    StreamConfig,
    StreamJobError,
    duration_us,
)
from clickstream.serve.store import open_store

US = 1_000_000


def test_durations_and_settings_are_checked():
    assert duration_us("10 seconds") == 10 * US
    assert duration_us("1 minute") == 60 * US
    assert duration_us("90s") == 90 * US
    assert duration_us("2 min") == 120 * US
    assert duration_us("500 milliseconds") == 500_000
    with pytest.raises(StreamJobError, match="not a duration"):
        duration_us("soon", "--watermark")
    base = StreamConfig.create(topic="t", store_url="sqlite:///x.db", bootstrap_servers="b:1")
    assert base.spec() == Spec(60 * US, 60 * US, 120 * US, 1800 * US)
    assert base.max_offsets_per_trigger == 100_000 and base.max_ahead == "1 day"
    # The sessions and quarantine queries run less often than the windows query.
    assert duration_us(base.side_trigger) > duration_us(base.trigger)
    for bad, match in (
        ({"window": "1500 milliseconds"}, "whole seconds"),
        ({"slide": "2 minutes"}, "longer than"),
        ({"session_gap": "0 seconds"}, "at least 1 second"),
        ({"trigger": "often"}, "--trigger"),
        ({"side_trigger": "now and then"}, "--side-trigger"),
    ):
        with pytest.raises(StreamJobError, match=match):
            StreamConfig(**{**base.__dict__, **bad}).spec()


def test_default_checkpoints_are_per_topic_and_store():
    a = StreamConfig.create(topic="t", store_url="sqlite:///a.db", bootstrap_servers="b:1")
    b = StreamConfig.create(topic="t", store_url="redis://h:6379/0", bootstrap_servers="b:1")
    c = StreamConfig.create(topic="u", store_url="sqlite:///a.db", bootstrap_servers="b:1")
    assert len({a.checkpoint, b.checkpoint, c.checkpoint}) == 3
    assert a.checkpoint.parent == b.checkpoint.parent


def test_reset_deletes_only_a_checkpoint_the_job_made(tmp_path):
    from clickstream.process.stream import StreamJob

    url = f"sqlite:///{tmp_path / 'serving.db'}"
    with open_store(url) as store:
        store.write_batch(JOB, 0, {"counters": [{"name": "records", "value": 1}]})
    mine = tmp_path / "ckpt"
    (mine / "spark").mkdir(parents=True)
    (mine / "job.json").write_text("{}")
    config = StreamConfig.create(topic="t", bootstrap_servers="b:1", store_url=url, checkpoint=mine)
    StreamJob(config).reset()
    assert not mine.exists()
    with open_store(url) as store:
        assert store.last_batch(JOB) is None and store.read("counters") == []
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    other = StreamConfig.create(
        topic="t", bootstrap_servers="b:1", store_url=url, checkpoint=precious
    )
    with pytest.raises(StreamJobError, match="not deleting it"):
        StreamJob(other).reset()
    assert (precious / "notes.txt").exists()


def test_query_failures_are_explained():
    from clickstream.process.stream import explain_failure

    config = StreamConfig.create(topic="t", store_url="sqlite:///x.db", bootstrap_servers="b:1")
    lost = Exception("[KAFKA_DATA_LOSS.START_OFFSET_RESET] Some data may have been lost ...")
    assert "--reset" in str(explain_failure(lost, config))
    timeout = Exception(
        "Lost task 0.0 in stage 0.0: org.apache.kafka.common.errors.TimeoutException: Timeout "
        "of 60000ms expired before the position for partition t-0 could be determined"
    )
    message = str(explain_failure(timeout, config))
    assert "did not answer" in message and "b:1" in message and "--reset" not in message
    ours = Exception(
        "... clickstream.serve.store.StoreError: Redis at redis://h:1/0 is not reachable"
    )
    assert "Redis at redis://h:1/0 is not reachable" in str(explain_failure(ours, config))
    # A failure inside a micro-batch: Spark's first line says only that the function failed;
    # the message names what it raised, from the Python traceback Spark carries.
    wrapped = (
        "[STREAM_FAILED] Query [id = 1] terminated with exception: [FOREACH_BATCH_USER_FUNCTION_"
        "ERROR] An error occurred in the user provided function in foreach batch sink. Reason: "
        "An exception was raised by the Python Proxy. Return Message: Traceback (most recent "
        'call last):\n  File "stream.py", line 1, in run\n    callback(df, batch_id)\n'
    )
    raised = {
        "pyspark.errors.exceptions.captured.SparkRuntimeException: [USER_RAISED_EXCEPTION] boom"
        "\n": "SparkRuntimeException: [USER_RAISED_EXCEPTION] boom",
        "clickstream.process.stream.SparkBatchError: java.sql.BatchUpdateException: duplicate key"
        "\n\tat org.postgresql.jdbc.BatchResultHandler.handleError(BatchResultHandler.java:165)"
        "\n": "java.sql.BatchUpdateException: duplicate key",
    }
    for last, shown in raised.items():
        message = str(explain_failure(Exception(wrapped + last + "\n\tat org.Frame(x:1)"), config))
        assert (
            message == f"The streaming job stopped: {shown} (run with --debug for the full trace)."
        )


def test_detector_state_is_json_per_batch_and_pruned(tmp_path: Path):
    from clickstream.process.anomaly import AnomalyDetector, DetectorConfig

    files = DetectorFiles(tmp_path / "detector")
    assert files.load(-1) == {} and files.exists(-1)
    detector = AnomalyDetector(DetectorConfig(warmup=1))
    for i, (n, e) in enumerate([(100, 0), (100, 0), (100, 60), (100, 70)]):
        detector.update(i * 10 * US, (i + 1) * 10 * US, n, e)
    assert detector.open_alerts(), "an error spike should be open"
    for batch in range(4):
        files.save(batch, {"next_detect": batch, "detector": detector.to_json()})
    files.prune(2)
    assert sorted(p.name for p in files.dir.iterdir()) == ["2.json", "3.json"]
    again = AnomalyDetector.from_json(DetectorConfig(warmup=1), files.load(3)["detector"])
    assert again.open_alerts() == detector.open_alerts()
    assert json.loads((files.dir / "3.json").read_text())["next_detect"] == 3
    with pytest.raises(CheckpointMismatchError, match="--reset"):
        files.load(0)


def test_batch_figures_come_from_sparks_offset_log(tmp_path: Path):
    spark_dir = tmp_path / "spark"
    (spark_dir / "offsets").mkdir(parents=True)
    (spark_dir / "sources" / "0").mkdir(parents=True)
    (spark_dir / "sources" / "0" / "0").write_text('v1\n{"t":{"0":5,"1":0}}')
    meta = {"batchWatermarkMs": 1000, "batchTimestampMs": 2000, "conf": {}}
    for batch, ends in enumerate(({"0": 15, "1": 7}, {"0": 20, "1": 7})):
        lines = ["v1", json.dumps(meta), json.dumps({"t": ends})]
        (spark_dir / "offsets" / str(batch)).write_text("\n".join(lines))
    assert batch_info(spark_dir, 1) == {
        "watermark_ms": 1000,
        "timestamp_ms": 2000,
        "offsets": {"t": {"0": 20, "1": 7}},
    }
    assert records_through(spark_dir, 2, "t") is None and batch_info(spark_dir, 2) == {}
    assert [records_through(spark_dir, b, "t") for b in (-1, 0, 1)] == [0, 17, 22]


class _Query:
    """A query that ends after its `isActive` has been read `ends_after` times."""

    def __init__(self, ends_after: int) -> None:
        self.reads = 0
        self.ends_after = ends_after
        self.waits = 0

    @property
    def isActive(self) -> bool:  # noqa: N802 - Spark's name
        self.reads += 1
        return self.reads <= self.ends_after

    def awaitTermination(self, timeout=None):  # noqa: N802 - Spark's name
        self.waits += 1
        return True


class _Job:
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_waiting_survives_queries_that_end_while_it_looks():
    from clickstream.process.stream import StreamHandle

    # Both queries are active when asked whether any is, and both have ended by the time the
    # handle picks one to wait on: it looks again instead of failing.
    job = _Job()
    queries = [_Query(ends_after=2), _Query(ends_after=1)]
    assert StreamHandle(job, queries).await_termination(timeout=5) is True
    assert job.closed == 1
