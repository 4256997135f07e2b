"""`clickstream bench stream`: what the streaming job costs beside Spark reading the same topic.

One run, one topic pre-loaded with N simulated events, measured in this order on one Spark
session (so the JVM is warm for all three):

(a) a bare Spark read of the topic with `from_json` on the contract's schema into the noop sink:
    the reference, what any query on this topic pays;
(b) `clickstream stream --available-now` as it runs today, into a scratch SQLite store;
(c) the query built from Spark's own operators in `clickstream.pipeline` (contract checks,
    watermark, de-duplication, every windowed metric in one aggregation; sessions and paths in
    session windows), with availableNow, collecting its aggregated rows.

Figures are events/s of wall time, with the ratio to (a) and the machine they ran on.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from clickstream.config import Settings


@dataclass
class StreamBench:
    events: int
    read_parse_s: float
    job_s: float
    native_s: float
    batches: int
    state_rows: int
    state_memory_bytes: int
    machine: dict
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "events": self.events,
            "read_parse_events_per_s": round(self.events / self.read_parse_s),
            "job_events_per_s": round(self.events / self.job_s),
            "job_ratio": round(self.read_parse_s / self.job_s, 3),
            "native_query_events_per_s": round(self.events / self.native_s),
            "native_query_ratio": round(self.read_parse_s / self.native_s, 3),
            "batches": self.batches,
            "state_rows": self.state_rows,
            "state_memory_bytes": self.state_memory_bytes,
            "settings": self.settings,
            "machine": self.machine,
        }

    def text(self) -> str:
        d = self.to_dict()
        m = self.machine
        return "\n".join(
            [
                f"{self.events:,} events, {self.settings.get('master')}, "
                f"{self.settings.get('shuffle_partitions')} shuffle partitions",
                f"  (a) Spark read + from_json, noop sink   {d['read_parse_events_per_s']:>9,} events/s",
                f"  (b) clickstream stream --available-now  {d['job_events_per_s']:>9,} events/s"
                f"  ({d['job_ratio']:.2f} of a)",
                f"  (c) Spark-native query (pipeline)       {d['native_query_events_per_s']:>9,} events/s"
                f"  ({d['native_query_ratio']:.2f} of a; {self.batches} batches, "
                f"{self.state_rows:,} state rows, {self.state_memory_bytes / 2**20:.1f} MiB)",
                f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, {m['os']}, "
                f"load {m['load_avg_1m']:.1f}, Python {m['python']}, Java {m['java']}",
            ]
        )


def preload(topic: str, bootstrap: str, count: int, seed: int, echo) -> None:
    from clickstream.kafka_io import ensure_topic
    from clickstream.producer import generated_in_background, produce
    from clickstream.simulator import SimConfig

    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    echo(f"pre-loading {count:,} simulated events into {topic}...")
    config = SimConfig(seed=seed, count=count)
    produce(generated_in_background(config), topic, bootstrap, progress=False, total=count)


def _timed(query) -> float:
    started = time.monotonic()
    query.awaitTermination()
    return time.monotonic() - started


def bench_stream(
    settings: Settings,
    count: int = 1_000_000,
    master: str | None = None,
    max_offsets_per_trigger: int = 200_000,
    seed: int = 42,
    echo=lambda message: None,
) -> StreamBench:
    """Measure (a), (b) and (c) on one topic of `count` events (see the module docstring)."""
    from pyspark.sql import functions as F

    from clickstream import pipeline as P
    from clickstream.bench import machine_info
    from clickstream.broker import LocalBroker
    from clickstream.events import spark_schema
    from clickstream.simulator import load_catalogue
    from clickstream.spark import get_spark
    from clickstream.stream import run_available_now

    bootstrap = settings.bootstrap_servers
    local = LocalBroker(settings)
    started_broker = False
    if not settings.is_external and not local.is_running():
        echo("The local broker is not running: starting it (it is stopped again at the end).")
        local.up(echo=echo)
        started_broker = True
    topic = f"bench_stream_{uuid.uuid4().hex[:8]}"
    preload(topic, bootstrap, count, seed, echo)
    spark = get_spark("clickstream-bench-stream", master=master, settings=settings)
    shuffle = spark.conf.get("spark.sql.shuffle.partitions")
    with tempfile.TemporaryDirectory(prefix="clickstream-bench-") as tmp:
        work = Path(tmp)

        def raw():
            return P.read_kafka(
                spark, topic, bootstrap, max_offsets_per_trigger=max_offsets_per_trigger
            )

        echo("(a) Spark read + from_json into the noop sink...")
        parsed = raw().select(F.from_json(F.col("value").cast("string"), spark_schema()).alias("e"))
        read_parse_s = _timed(
            parsed.select("e.*")
            .writeStream.format("noop")
            .option("checkpointLocation", str(work / "a"))
            .trigger(availableNow=True)
            .start()
        )
        echo("(b) clickstream stream --available-now...")
        started = time.monotonic()
        run_available_now(
            spark=spark,
            topic=topic,
            bootstrap_servers=bootstrap,
            store_url=f"sqlite:///{work / 'serving.db'}",
            checkpoint=work / "b",
            max_offsets_per_trigger=max_offsets_per_trigger,
            alerts_topic="",
            quarantine_topic="",
        )
        job_s = time.monotonic() - started
        echo("(c) the Spark-native query...")
        categories = {p.product_id: p.category for p in load_catalogue()}
        checked = P.with_watermark(P.contract_checked(raw()), "2 minutes")
        windows = P.window_metrics(P.metric_facts(P.unique_events(checked), categories))
        sessions = P.session_metrics(checked)
        started = time.monotonic()
        queries = [
            windows.writeStream.outputMode("update")
            .foreachBatch(lambda df, _: df.collect())
            .option("checkpointLocation", str(work / "c-windows"))
            .trigger(availableNow=True)
            .start(),
            sessions.writeStream.outputMode("append")
            .foreachBatch(lambda df, _: df.collect())
            .option("checkpointLocation", str(work / "c-sessions"))
            .trigger(availableNow=True)
            .start(),
        ]
        for query in queries:
            query.awaitTermination()
        native_s = time.monotonic() - started
        progress = [p for q in queries for p in q.recentProgress]
        last = [q.lastProgress for q in queries if q.lastProgress]
        ops = [op for p in last for op in p["stateOperators"]]
        batches = max(len(q.recentProgress) for q in queries)
    from clickstream.kafka_io import delete_topic

    delete_topic(topic, bootstrap)
    if started_broker:
        local.down(echo=echo)
    del progress
    return StreamBench(
        events=count,
        read_parse_s=read_parse_s,
        job_s=job_s,
        native_s=native_s,
        batches=batches,
        state_rows=sum(op["numRowsTotal"] for op in ops),
        state_memory_bytes=sum(op["memoryUsedBytes"] for op in ops),
        machine=machine_info(settings),
        settings={
            "master": spark.sparkContext.master,
            "shuffle_partitions": int(shuffle),
            "max_offsets_per_trigger": max_offsets_per_trigger,
        },
    )
