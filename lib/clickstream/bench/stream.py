"""`clickstream bench stream`: what the streaming job costs beside Spark reading the same topic.

One run, one topic pre-loaded with N simulated events, measured in this order on one Spark
session (the reference runs first and again last, so the JVM is warm and the machine's drift
shows):

(a) a bare Spark read of the topic with `from_json` on the contract's schema into the noop sink:
    the reference, what any query on this topic pays; and, after (b), the job's first steps
    alone into the noop sink: the read with the contract check (`contract_checked`), then
    with the watermark and de-duplication (`unique_events`), the least a query of the job
    pays per record;
(b) the streaming job (`clickstream stream --available-now`, with its quarantine topic) into a
    scratch SQLite store, twice: its first run in this JVM, and again on a warm JVM (the figure
    compared with (a));
(c) live: the job running continuously (its default triggers) while events are produced
    at a steady rate; the latency of a record is from its send to the commit of the store
    transaction holding it.

Figures are events/s of wall time, with the ratio to (a) and the machine they ran on.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from clickstream.bench.machine import machine_info, machine_line
from clickstream.config import Settings
from clickstream.processes import wait_until


@dataclass
class StreamBench:
    events: int
    read_parse_s: float
    checked_s: float
    deduplicated_s: float
    job_s: float
    first_job_s: float
    batches: int
    state_rows: int
    state_memory_bytes: int
    machine: dict
    latencies: list[float] = field(default_factory=list)
    live_rate: float = 0.0
    settings: dict = field(default_factory=dict)

    def _quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    def to_dict(self) -> dict:
        return {
            "events": self.events,
            "read_parse_events_per_s": round(self.events / self.read_parse_s),
            "checked_events_per_s": round(self.events / self.checked_s),
            "checked_ratio": round(self.read_parse_s / self.checked_s, 3),
            "deduplicated_events_per_s": round(self.events / self.deduplicated_s),
            "deduplicated_ratio": round(self.read_parse_s / self.deduplicated_s, 3),
            "job_events_per_s": round(self.events / self.job_s),
            "job_ratio": round(self.read_parse_s / self.job_s, 3),
            "job_first_run_events_per_s": round(self.events / self.first_job_s),
            "batches": self.batches,
            "state_rows": self.state_rows,
            "state_memory_bytes": self.state_memory_bytes,
            "live_events_per_s": round(self.live_rate),
            "live_events": len(self.latencies),
            "latency_p50_s": self._quantile(0.50),
            "latency_p95_s": self._quantile(0.95),
            "latency_p99_s": self._quantile(0.99),
            "settings": self.settings,
            "machine": self.machine,
        }

    def text(self) -> str:
        d = self.to_dict()
        m = self.machine
        lines = [
            f"{self.events:,} events, {self.settings.get('master')}, "
            f"{self.settings.get('shuffle_partitions')} shuffle partitions, at most "
            f"{self.settings.get('max_offsets_per_trigger'):,} records per batch",
            f"  (a) Spark read + from_json, noop sink    {d['read_parse_events_per_s']:>9,} events/s",
            f"      + the contract check                 {d['checked_events_per_s']:>9,} events/s"
            f"  ({d['checked_ratio']:.2f} of a)",
            f"      + watermark and de-duplication       "
            f"{d['deduplicated_events_per_s']:>9,} events/s  ({d['deduplicated_ratio']:.2f} of a)",
            f"  (b) clickstream stream --available-now   {d['job_events_per_s']:>9,} events/s"
            f"  ({d['job_ratio']:.2f} of a; {self.batches} batches, {self.state_rows:,} "
            f"state rows, {self.state_memory_bytes / 2**20:.1f} MiB)",
            f"      its first run in this JVM            "
            f"{d['job_first_run_events_per_s']:>9,} events/s",
        ]
        if self.latencies:
            lines.append(
                f"  (c) live at {d['live_events_per_s']:,} events/s, produce to store: "
                f"p50 {d['latency_p50_s']} s, p95 {d['latency_p95_s']} s, "
                f"p99 {d['latency_p99_s']} s ({len(self.latencies):,} events)"
            )
        lines.append(f"machine: {machine_line(m)}")
        return "\n".join(lines)


def preload(topic: str, bootstrap: str, count: int, seed: int, echo) -> None:
    from clickstream.ingest.kafka_io import ensure_topic
    from clickstream.source.producer import generated_in_background, produce
    from clickstream.source.simulator import SimConfig

    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    echo(f"pre-loading {count:,} simulated events into {topic}...")
    config = SimConfig(seed=seed, count=count)
    produce(generated_in_background(config), topic, bootstrap, progress=False, total=count)


@dataclass
class _Scene:
    """What the measurements of one run share: the session, the pre-loaded topic, the records
    per batch and a scratch directory."""

    spark: object
    topic: str
    bootstrap: str
    per_batch: int
    work: Path


def _read_parse_seconds(scene: _Scene, checkpoint: str) -> float:
    """(a): the seconds a bare read of the topic with `from_json` into the noop sink takes."""
    from pyspark.sql import functions as F

    from clickstream.events import spark_schema

    def parsed(raw):
        return raw.select(
            F.from_json(F.col("value").cast("string"), spark_schema()).alias("e")
        ).select("e.*")

    return _noop_seconds(scene, checkpoint, parsed)


def _first_steps_seconds(scene: _Scene) -> tuple[float, float]:
    """The seconds the job's first steps alone take into the noop sink: the contract check,
    then the check, the watermark and de-duplication (with the job's default settings)."""
    from clickstream.process import pipeline as P
    from clickstream.process.stream import StreamConfig, spark_interval

    default = StreamConfig.create(topic=scene.topic, bootstrap_servers=scene.bootstrap)
    delay, ahead = spark_interval(default.watermark), spark_interval(default.max_ahead)

    def checked(raw):
        return P.contract_checked(raw, max_ahead=ahead)

    def deduplicated(raw):
        return P.unique_events(P.with_watermark(checked(raw), delay))

    return _noop_seconds(scene, "checked", checked), _noop_seconds(scene, "dedup", deduplicated)


def _noop_seconds(scene: _Scene, checkpoint: str, build) -> float:
    """The seconds `build(the topic's stream)` takes into the noop sink, with availableNow."""
    from clickstream.process import pipeline as P

    raw = P.read_kafka(
        scene.spark, scene.topic, scene.bootstrap, max_offsets_per_trigger=scene.per_batch
    )
    started = time.monotonic()
    query = (
        build(raw)
        .writeStream.format("noop")
        .option("checkpointLocation", str(scene.work / checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    return time.monotonic() - started


@dataclass
class _JobRuns:
    """(b): the job's two runs over the topic, and what its last run reported."""

    first_s: float
    warm_s: float
    batches: int
    state_operators: list[dict]


def _run_job_twice(scene: _Scene, echo) -> _JobRuns:
    """The job with --available-now, twice, each on a fresh checkpoint and store: the first run
    pays for the JVM's first compilation of the job's code paths, the second is the job on a
    warm JVM, as (a) is."""
    from clickstream.process.stream import StreamConfig, StreamJob

    runs = []
    for n, label in enumerate(("first run", "again, warm")):
        echo(f"(b) clickstream stream --available-now, {label}...")
        config = StreamConfig.create(
            topic=scene.topic,
            bootstrap_servers=scene.bootstrap,
            store_url=f"sqlite:///{scene.work / f'serving{n}.db'}",
            checkpoint=scene.work / f"b{n}",
            max_offsets_per_trigger=scene.per_batch,
            alerts_topic="",
            quarantine_topic=f"{scene.topic}_quarantine",
            available_now=True,
        )
        job = StreamJob(config, spark=scene.spark)
        started = time.monotonic()
        handle = job.start()
        handle.await_termination()
        runs.append(time.monotonic() - started)
    ops = [op for q in handle.queries for op in (q.lastProgress or {}).get("stateOperators", [])]
    return _JobRuns(runs[0], runs[1], job.summary.batches, ops)


def _send_at_rate(producer, topic: str, items, rate: float) -> tuple[list[float], float]:
    """Send `items` evenly at `rate` events/s; return when each was sent and the rate achieved."""
    sent: list[float] = []
    began = time.monotonic()
    for i, (key, value, _) in enumerate(items):
        due = began + i / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        producer.send(topic, key=key, value=value)
        sent.append(time.time())
    producer.flush()
    return sent, len(sent) / (time.monotonic() - began)


def _committed_batches(store_url: str, count: int, rate: float) -> list[dict]:
    """The job's batches, oldest first, once the store has counted all `count` records."""
    from clickstream.process.stream import JOB
    from clickstream.serve.store import open_store

    with open_store(store_url) as store:
        wait_until(
            lambda: int(store.counters().get("records", 0)) >= count,
            60,
            f"the job to count all {count:,} records sent at {rate:,.0f} events/s",
            interval_s=0.2,
        )
        return sorted(store.health(JOB, limit=100_000), key=lambda h: h["batch_id"])


def _send_to_commit(batches: list[dict], sent: list[float]) -> list[float]:
    """Each record's latency from its send to the commit of the batch holding it: the k-th
    record sent is in the first batch whose cumulative input reaches k + 1."""
    latencies, seen, i = [], 0, 0
    for h in batches:
        seen += h["input_rows"] or 0
        while i < min(seen, len(sent)):
            latencies.append(max(0.0, h["committed_at"] - sent[i]))
            i += 1
    return latencies


def live_latencies(
    spark, bootstrap: str, work: Path, rate: float, seconds: float, echo
) -> tuple[list[float], float]:
    """Run the job continuously while producing `rate` events/s for `seconds`; return each
    event's send-to-commit latency and the rate achieved."""
    from clickstream.ingest.kafka_io import delete_topic, ensure_topic, make_producer
    from clickstream.process.stream import StreamConfig, StreamJob
    from clickstream.source.producer import simulated_records
    from clickstream.source.simulator import SimConfig

    topic = f"bench_live_{uuid.uuid4().hex[:8]}"
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    config = StreamConfig.create(
        topic=topic,
        bootstrap_servers=bootstrap,
        store_url=f"sqlite:///{work / 'live.db'}",
        checkpoint=work / "live",
        alerts_topic="",
        quarantine_topic=f"{topic}_quarantine",
    )
    handle = StreamJob(config, spark=spark).start()
    count = int(rate * seconds)
    try:
        time.sleep(5)  # the queries' first (empty) batches
        echo(f"(c) live: {count:,} events at {rate:,.0f} events/s...")
        producer = make_producer(bootstrap)
        items = simulated_records(
            SimConfig(seed=7, count=count, start=_now_iso()), with_times=False
        )
        sent, achieved = _send_at_rate(producer, topic, items, rate)
        batches = _committed_batches(config.store_url, count, rate)
        producer.close()
    finally:
        handle.stop()
        for name in (topic, config.quarantine_topic):
            delete_topic(name, bootstrap)
    return _send_to_commit(batches, sent), achieved


def _now_iso() -> str:
    from datetime import UTC, datetime

    from clickstream.events import format_event_time

    return format_event_time(datetime.now(UTC))


def bench_stream(
    settings: Settings,
    count: int = 1_000_000,
    master: str | None = None,
    max_offsets_per_trigger: int = 100_000,
    live_rate: float = 1000.0,
    live_seconds: float = 30.0,
    seed: int = 42,
    echo=lambda message: None,
) -> StreamBench:
    """Measure (a), (b) and (c) (see the module docstring)."""
    from clickstream.bench.produce import local_broker_for_bench
    from clickstream.ingest.kafka_io import delete_topic
    from clickstream.process.spark import get_spark

    bootstrap = settings.bootstrap_servers
    starting = "The local broker is not running: starting it (it is stopped again at the end)."
    topic = f"bench_stream_{uuid.uuid4().hex[:8]}"
    with local_broker_for_bench(settings, echo, starting):
        try:
            preload(topic, bootstrap, count, seed, echo)
            spark = get_spark("clickstream-bench-stream", master=master, settings=settings)
            shuffle = spark.conf.get("spark.sql.shuffle.partitions")
            with tempfile.TemporaryDirectory(prefix="clickstream-bench-") as tmp:
                scene = _Scene(spark, topic, bootstrap, max_offsets_per_trigger, Path(tmp))
                echo("(a) Spark read + from_json into the noop sink...")
                first = _read_parse_seconds(scene, "a1")
                job = _run_job_twice(scene, echo)
                echo("(a) with the contract check, then with de-duplication...")
                checked, deduplicated = _first_steps_seconds(scene)
                echo("(a) again...")
                second = _read_parse_seconds(scene, "a2")
                latencies, achieved = ([], 0.0)
                if live_seconds > 0:
                    latencies, achieved = live_latencies(
                        spark, bootstrap, scene.work, live_rate, live_seconds, echo
                    )
        finally:
            delete_topic(topic, bootstrap)
            delete_topic(f"{topic}_quarantine", bootstrap)
    return StreamBench(
        events=count,
        read_parse_s=statistics.mean([first, second]),
        checked_s=checked,
        deduplicated_s=deduplicated,
        job_s=job.warm_s,
        first_job_s=job.first_s,
        batches=job.batches,
        state_rows=sum(op["numRowsTotal"] for op in job.state_operators),
        state_memory_bytes=sum(op["memoryUsedBytes"] for op in job.state_operators),
        machine=machine_info(settings),
        latencies=latencies,
        live_rate=achieved,
        settings={
            "master": spark.sparkContext.master,
            "shuffle_partitions": int(shuffle),
            "max_offsets_per_trigger": max_offsets_per_trigger,
        },
    )
