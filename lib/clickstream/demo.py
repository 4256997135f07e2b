"""The first live pipeline: simulated events -> Kafka -> Spark windows -> counts on screen.

`clickstream demo` (and `make demo`) runs this. Ctrl-C stops every process it started.
"""

from __future__ import annotations

import tempfile
import threading
import time
from datetime import UTC, datetime

from clickstream.config import Settings, get_settings


def _print_batch(echo):
    def handle(batch_df, batch_id: int) -> None:
        rows = batch_df.orderBy("window_start", "event_type").collect()
        if not rows:
            return
        by_window: dict = {}
        for row in rows:
            by_window.setdefault((row.window_start, row.window_end), []).append(row)
        for (start, end), items in sorted(by_window.items()):
            counts = "  ".join(f"{r.event_type}={r['count']}" for r in items)
            total = sum(r["count"] for r in items)
            echo(
                f"[batch {batch_id:>4}] {start:%H:%M:%S}-{end:%H:%M:%S}  total={total:<5} {counts}"
            )

    return handle


def run_demo(
    settings: Settings | None = None,
    rate: float = 40.0,
    window: str = "10 seconds",
    run_seconds: float | None = None,
    echo=print,
) -> None:
    """Start what is missing, stream until Ctrl-C (or `run_seconds`), then stop it all."""
    from clickstream.broker import LocalBroker
    from clickstream.kafka_io import ensure_topic
    from clickstream.pipeline import parse_events, read_kafka, valid_events, windowed_counts
    from clickstream.producer import produce, simulated_records
    from clickstream.simulator import SimConfig
    from clickstream.spark import get_spark

    settings = settings or get_settings()
    broker = LocalBroker(settings)
    started_broker = not settings.is_external and not broker.is_running()
    broker.up(echo=echo)
    bootstrap = settings.bootstrap_servers
    topic = settings.topic
    if ensure_topic(topic, bootstrap=bootstrap):
        echo(f"Created topic {topic}.")
    stop = threading.Event()
    now = datetime.now(UTC).replace(microsecond=0)
    config = SimConfig(
        seed=int(now.timestamp()),
        count=10**9,
        start=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        rate=rate,
        daily_amplitude=0.0,
    )
    summary_box: dict = {}

    def produce_loop() -> None:
        summary_box["summary"] = produce(
            simulated_records(config),
            topic,
            bootstrap,
            keep_timing=True,
            progress=False,
            stop=stop,
        )

    echo("Starting Spark (about 20 s the first time)...")
    spark = get_spark("clickstream-demo")
    checkpoint = tempfile.mkdtemp(prefix="clickstream-demo-")
    raw = read_kafka(spark, topic, bootstrap, starting_offsets="latest")
    counts = windowed_counts(valid_events(parse_events(raw)), window=window, watermark="30 seconds")
    query = (
        counts.writeStream.outputMode("update")
        .foreachBatch(_print_batch(echo))
        .option("checkpointLocation", checkpoint)
        .trigger(processingTime="2 seconds")
        .queryName("demo_window_counts")
        .start()
    )
    producer = threading.Thread(target=produce_loop, name="demo-producer", daemon=True)
    producer.start()
    echo(
        f"Live: ~{rate:.0f} events/s into {topic} at {bootstrap}; Spark prints per-{window} "
        "counts as they change. Press Ctrl-C to stop."
    )
    deadline = time.monotonic() + run_seconds if run_seconds else None
    try:
        while query.isActive and (deadline is None or time.monotonic() < deadline):
            query.awaitTermination(1)
    except KeyboardInterrupt:
        echo("\nCtrl-C: stopping...")
    finally:
        stop.set()
        producer.join(timeout=10)
        sent = summary_box.get("summary")
        echo(f"  producer stopped ({sent.line() if sent else 'no summary'})")
        query.stop()
        echo("  streaming query stopped")
        spark.stop()
        echo("  Spark stopped")
        if started_broker:
            broker.down(echo=lambda m: echo(f"  {m}"))
        else:
            echo(f"  broker left running (it was running before the demo): {bootstrap}")
        echo("Everything the demo started is stopped.")
