"""Kafka -> Spark Structured Streaming: per-window counts equal the ground truth exactly."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from clickstream.ingest.kafka_io import ensure_topic, message_count
from clickstream.process.pipeline import parse_events, read_kafka, valid_events, windowed_counts
from clickstream.source.producer import produce, simulated_records
from clickstream.source.simulator import SimConfig, Simulator, compute_ground_truth

pytestmark = [pytest.mark.integration, pytest.mark.spark]

N = 10_000


def test_window_counts_from_kafka_equal_ground_truth(spark, bootstrap, topic, tmp_path):
    config = SimConfig(seed=7, count=N, rate=40.0)
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    summary = produce(simulated_records(config), topic, bootstrap, progress=False)
    assert (summary.sent, summary.failed) == (N, 0)
    assert message_count(topic, bootstrap) == N

    # Independent ground truth, recomputed from the generated events themselves.
    expected = Counter()
    for rec in Simulator(config).records():
        ts = datetime.fromisoformat(rec.event["event_time"].replace("Z", "+00:00"))
        start = datetime.fromtimestamp(ts.timestamp() // 60 * 60, tz=UTC)
        expected[(start.replace(tzinfo=None), rec.event["event_type"])] += 1
    assert sum(expected.values()) == N

    counts = windowed_counts(
        valid_events(parse_events(read_kafka(spark, topic, bootstrap))),
        window="1 minute",
        watermark=None,
    )
    query = (
        counts.writeStream.outputMode("complete")
        .format("memory")
        .queryName("foundation_counts")
        .option("checkpointLocation", str(tmp_path / "ckpt"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(600)
    assert query.exception() is None
    rows = spark.sql("select * from foundation_counts").collect()
    got = {(r.window_start, r.event_type): r["count"] for r in rows}
    assert got == dict(expected)

    # The simulator's own ground truth agrees as well.
    truth = compute_ground_truth(Simulator(config).records(), config)
    assert {(k[0].replace(tzinfo=None), k[1]): v for k, v in truth.window_counts(60).items()} == got
