"""The streaming transformations: Kafka source, parsing with the contract, event-time windows.

Each step is a plain function from DataFrame to DataFrame, so notebooks can build them one at a
time and tests can run them on a batch (`spark.read`) or a stream (`spark.readStream`) alike.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from clickstream.events import spark_schema


def read_kafka(
    spark: SparkSession,
    topic: str,
    bootstrap: str,
    starting_offsets: str = "earliest",
    max_offsets_per_trigger: int | None = None,
    streaming: bool = True,
    options: dict[str, str] | None = None,
) -> DataFrame:
    """The raw topic as a DataFrame (key, value, topic, partition, offset, timestamp)."""
    reader = spark.readStream if streaming else spark.read
    reader = (
        reader.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", starting_offsets)
        .option("failOnDataLoss", "false")
    )
    if max_offsets_per_trigger and streaming:
        reader = reader.option("maxOffsetsPerTrigger", str(max_offsets_per_trigger))
    for key, value in (options or {}).items():
        reader = reader.option(key, value)
    return reader.load()


def event_timestamp(col: Column) -> Column:
    """ISO-8601 text with Z or an offset -> TIMESTAMP (null when unparseable)."""
    return F.try_to_timestamp(col)


def parse_events(raw: DataFrame) -> DataFrame:
    """Kafka records -> one row per event with the contract's columns plus `event_ts`.

    Rows whose value is not a valid event come out with null fields; `valid_events` keeps the
    rest. The full quarantine with reasons lives in the streaming job.
    """
    parsed = raw.select(
        F.col("value").cast("string").alias("json"),
        F.col("partition"),
        F.col("offset"),
        F.col("timestamp").alias("kafka_ts"),
    ).withColumn("e", F.from_json("json", spark_schema(), {"mode": "PERMISSIVE"}))
    return parsed.select("e.*", "json", "partition", "offset", "kafka_ts").withColumn(
        "event_ts", event_timestamp(F.col("event_time"))
    )


def valid_events(events: DataFrame) -> DataFrame:
    """Rows with every required field present and a parseable event time."""
    required = ["event_id", "user_id", "session_id", "event_type", "page", "event_ts"]
    cond = F.lit(True)
    for name in required:
        cond = cond & F.col(name).isNotNull()
    return events.where(cond)


def windowed_counts(
    events: DataFrame,
    window: str = "1 minute",
    slide: str | None = None,
    watermark: str | None = "2 minutes",
    by: tuple[str, ...] = ("event_type",),
) -> DataFrame:
    """Events per event-time window (tumbling, or sliding when `slide` is given) and key."""
    if watermark:
        events = events.withWatermark("event_ts", watermark)
    win = F.window("event_ts", window, slide) if slide else F.window("event_ts", window)
    return (
        events.groupBy(win.alias("window"), *by)
        .count()
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            *by,
            "count",
        )
    )
