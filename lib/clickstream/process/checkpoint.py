"""Spark's checkpoint, read from outside Spark (before the query starts, or by `clickstream lag`).

A streaming query's checkpoint directory holds an offset log (`offsets/N`: written before batch
N runs, with the watermark and clock it runs with and the Kafka offsets it reads up to), a
commit log (`commits/N`: written when batch N is done) and the offsets the query started from
(`sources/0/0`). The job uses them to replay a batch exactly as it first ran; `lag` uses them to
say how far behind the topic the job is.
"""

from __future__ import annotations

import json
from pathlib import Path


def log_ids(directory: Path) -> list[int]:
    """Batch ids in a Spark log directory (`offsets/` or `commits/`), ascending."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def spark_part(checkpoint: str | Path) -> Path:
    """The Spark part of a checkpoint: the job's checkpoint keeps it in `spark/`; any other
    Spark checkpoint directory is its own."""
    root = Path(checkpoint)
    return root / "spark" if (root / "spark" / "offsets").is_dir() else root


def batch_info(spark_dir: Path, batch_id: int) -> dict:
    """What Spark fixed for a batch before running it, from its offset log: the watermark and
    clock it runs with, and the Kafka offsets it reads up to ({} if the log cannot be read)."""
    try:
        lines = (spark_dir / "offsets" / str(batch_id)).read_text().splitlines()
        meta = json.loads(lines[1])
    except (OSError, IndexError, ValueError):
        return {}
    ends: dict = {}
    for line in lines[2:]:  # one line per source after the version and metadata lines
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            ends.update(parsed)
    return {
        "watermark_ms": meta.get("batchWatermarkMs", 0),
        "timestamp_ms": meta.get("batchTimestampMs"),
        "offsets": ends,
    }


def checkpoint_offsets(spark_dir: Path) -> tuple[int | None, dict, int | None]:
    """(last planned batch, its Kafka offsets {topic: {partition: offset}}, last committed)."""
    planned = log_ids(spark_dir / "offsets")
    committed = log_ids(spark_dir / "commits")
    offsets = batch_info(spark_dir, planned[-1]).get("offsets", {}) if planned else {}
    return (planned[-1] if planned else None), offsets, (committed[-1] if committed else None)


def committed_offsets(checkpoint: str | Path) -> dict[str, dict[int, int]]:
    """{topic: {partition: offset}} the last committed micro-batch of a checkpoint read up to.

    Accepts the streaming job's checkpoint (with its Spark part in `spark/`) or any Spark
    checkpoint directory. Empty if no batch has been committed yet.
    """
    spark_dir = spark_part(checkpoint)
    commits = log_ids(spark_dir / "commits")
    if not commits:
        return {}
    sources = batch_info(spark_dir, commits[-1]).get("offsets", {})
    return {
        topic: {int(p): int(o) for p, o in parts.items()}
        for topic, parts in sources.items()
        if isinstance(parts, dict)
    }


def initial_offsets(spark_dir: Path) -> dict:
    """The Kafka offsets the query started from (Spark's `sources/0/0`), {} if unknown."""
    try:
        text = (spark_dir / "sources" / "0" / "0").read_text(errors="replace")
    except OSError:
        return {}
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        return {}


def _records_between(begin: dict, end: dict) -> int:
    return sum(max(0, int(o) - int(begin.get(p, 0))) for p, o in end.items())


def records_through(spark_dir: Path, batch_id: int, topic: str) -> int | None:
    """Kafka records the query has read up to the end of batch `batch_id` (0 before the
    first batch): its end offsets minus the offsets it started from."""
    if batch_id < 0:
        return 0
    end = batch_info(spark_dir, batch_id).get("offsets", {}).get(topic)
    if end is None:
        return None
    return _records_between(initial_offsets(spark_dir).get(topic, {}), end)
