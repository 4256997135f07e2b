"""Consumer lag per partition: how far each reader is behind the end of each partition.

Two kinds of reader:

- **consumer groups** (kafka-python consumers, Kafka Connect, ...) commit their positions to
  Kafka; `group_lag` compares the committed offsets with the partitions' end offsets.
- **Spark Structured Streaming** does not commit to Kafka: the streaming job's position is the
  end offsets of its last committed micro-batch, in its checkpoint (`offsets/N` planned,
  `commits/N` done). `checkpoint_lag` reads those.

`clickstream lag` prints both, for every group and every streaming-job checkpoint it finds
(`--group` / `--checkpoint` to choose).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from clickstream.config import Settings
from clickstream.process.checkpoint import committed_offsets


@dataclass(frozen=True)
class PartitionLag:
    reader: str  # "group NAME" or "job CHECKPOINT"
    topic: str
    partition: int
    position: int | None  # next offset the reader will read; None: nothing committed yet
    end: int  # the partition's end offset (offset of the next record written)

    @property
    def lag(self) -> int:
        return self.end - self.position if self.position is not None else self.end

    def to_dict(self) -> dict:
        return {**asdict(self), "lag": self.lag}


def _end_offsets(bootstrap: str, topics: set[str]) -> dict[tuple[str, int], int]:
    from kafka import KafkaConsumer, TopicPartition

    from clickstream.ingest.kafka_io import client_security

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, client_id="clickstream-lag", **client_security()
    )
    try:
        tps = [
            TopicPartition(t, p)
            for t in sorted(topics)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        return {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def group_lag(bootstrap: str, groups: list[str] | None = None) -> list[PartitionLag]:
    """Lag of consumer groups (all groups that committed offsets, unless `groups` is given)."""
    from clickstream.ingest.kafka_io import admin_client

    with admin_client(bootstrap) as admin:
        if groups is None:
            groups = sorted(g["group_id"] for g in admin.list_groups())
        committed = {g: admin.list_group_offsets(g).get(g, {}) for g in groups}
    topics = {tp.topic for offsets in committed.values() for tp in offsets}
    ends = _end_offsets(bootstrap, topics) if topics else {}
    rows = []
    for group, offsets in committed.items():
        for tp, meta in sorted(offsets.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
            offset = meta.offset if meta.offset is not None and meta.offset >= 0 else None
            end = ends.get((tp.topic, tp.partition), 0)
            rows.append(PartitionLag(f"group {group}", tp.topic, tp.partition, offset, end))
    return rows


def checkpoint_lag(checkpoint: str | Path, bootstrap: str) -> list[PartitionLag]:
    """Lag of the Spark query whose checkpoint is `checkpoint`, per partition of its topics."""
    positions = committed_offsets(checkpoint)
    if not positions:
        return []
    ends = _end_offsets(bootstrap, set(positions))
    reader = f"job {checkpoint}"
    rows = []
    for (topic, partition), end in sorted(ends.items()):
        position = positions.get(topic, {}).get(partition)
        rows.append(PartitionLag(reader, topic, partition, position, end))
    return rows


def job_checkpoints(settings: Settings) -> list[Path]:
    """Streaming-job checkpoints under the state directory that have committed a batch."""
    candidates = [*sorted((settings.checkpoint_root / "stream").glob("*"))]
    candidates.append(settings.state_dir / "demo" / "checkpoint")
    return [c for c in candidates if committed_offsets(c)]


def format_table(rows: list[PartitionLag]) -> list[str]:
    """Per-partition lines, grouped by reader and topic, with a total per reader and topic."""
    if not rows:
        return ["no consumer group or streaming-job checkpoint with committed offsets found"]
    lines = [f"{'reader / topic':<52}{'partition':>10}{'position':>12}{'end':>12}{'lag':>10}"]
    current = None
    total = 0

    def flush():
        if current is not None:
            lines.append(f"{'':<52}{'total':>10}{'':>12}{'':>12}{total:>10,}")

    for row in rows:
        if (row.reader, row.topic) != current:
            flush()
            current, total = (row.reader, row.topic), 0
            lines.append(f"{row.reader}")
            lines.append(f"  {row.topic}")
        total += row.lag
        pos = f"{row.position:,}" if row.position is not None else "-"
        lines.append(f"{'':<52}{row.partition:>10}{pos:>12}{row.end:>12,}{row.lag:>10,}")
    flush()
    return lines
