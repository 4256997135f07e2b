"""Consumer lag per partition (`clickstream lag`): consumer groups and the streaming job.

Records are written to chosen partitions after each reader has caught up or committed a chosen
position, so the lag of every partition is known exactly.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from clickstream.ingest.kafka_io import ensure_topic, send_all
from clickstream.process.lag import checkpoint_lag, committed_offsets, group_lag
from clickstream.process.stream import StreamConfig, run_available_now
from tests.conftest import CLICKSTREAM
from tests.stream_truth import build_stream, stream_config

pytestmark = pytest.mark.integration


def _write(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for partition, count in per_partition.items():
        for _ in range(count):
            producer.send(topic, value=b'{"not": "an event"}', partition=partition)
    producer.flush()
    producer.close()


def _lag_json(bootstrap: str, *args: str) -> list[dict]:
    out = subprocess.run(
        [CLICKSTREAM, "lag", "--bootstrap-servers", bootstrap, "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_consumer_group_lag_per_partition(bootstrap, topic):
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    _write(bootstrap, topic, {0: 10, 1: 4, 2: 7})
    group = f"{topic}_group"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    tps = [TopicPartition(topic, p) for p in range(3)]
    consumer.assign(tps)
    # The group has read 6 of partition 0 and all of partition 1; partition 2: nothing committed.
    consumer.commit({tps[0]: OffsetAndMetadata(6, "", -1), tps[1]: OffsetAndMetadata(4, "", -1)})
    consumer.close()

    rows = {(r.partition): (r.position, r.end, r.lag) for r in group_lag(bootstrap, [group])}
    assert rows == {0: (6, 10, 4), 1: (4, 4, 0)}
    cli = _lag_json(bootstrap, "--group", group)
    assert [(r["reader"], r["partition"], r["lag"]) for r in cli] == [
        (f"group {group}", 0, 4),
        (f"group {group}", 1, 0),
    ]
    text = subprocess.run(
        [CLICKSTREAM, "lag", "--bootstrap-servers", bootstrap, "--group", group],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert f"group {group}" in text and topic in text
    assert text.splitlines()[-1].split()[-1] == "4"  # the total


@pytest.mark.spark
def test_streaming_job_lag_is_what_arrived_after_its_last_batch(spark, bootstrap, topic, tmp_path):
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    send_all(build_stream(stream_config(count=400)), topic, bootstrap)
    config = StreamConfig.create(
        topic=topic,
        bootstrap_servers=bootstrap,
        store_url=f"sqlite:///{tmp_path / 'serving.db'}",
        checkpoint=tmp_path / "ckpt",
        alerts_topic="",
        quarantine_topic="",
    )
    run_available_now(config, spark=spark)
    caught_up = checkpoint_lag(config.checkpoint, bootstrap)
    assert [r.lag for r in caught_up] == [0, 0, 0]
    assert sum(r.end for r in caught_up) == len(build_stream(stream_config(count=400)))
    ends = {r.partition: r.end for r in caught_up}
    assert committed_offsets(config.checkpoint) == {topic: ends}

    _write(bootstrap, topic, {0: 5, 1: 9})
    rows = _lag_json(bootstrap, "--checkpoint", str(config.checkpoint))
    assert [(r["partition"], r["position"], r["lag"]) for r in rows] == [
        (0, ends[0], 5),
        (1, ends[1], 9),
        (2, ends[2], 0),
    ]
    assert {r["reader"] for r in rows} == {f"job {config.checkpoint}"}


def test_a_directory_without_commits_is_named(bootstrap, tmp_path):
    out = subprocess.run(
        [CLICKSTREAM, "lag", "--bootstrap-servers", bootstrap, "--checkpoint", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "has no committed micro-batch" in out.stderr
