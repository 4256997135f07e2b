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


# -- the streaming job's metrics as DataFrame transformations --------------------------------
# `clickstream.stream` computes these incrementally, with one watermark for all of them (see its
# docstring for why); the functions below express the same definitions with Spark's own
# operators, so a notebook can build each metric step by step and compare it with the job's.


def deduplicated(events: DataFrame, watermark: str = "2 minutes") -> DataFrame:
    """Each event_id once: Spark keeps ids in state until the watermark passes them."""
    return events.withWatermark("event_ts", watermark).dropDuplicatesWithinWatermark(["event_id"])


def _window(window: str, slide: str | None) -> Column:
    return F.window("event_ts", window, slide) if slide else F.window("event_ts", window)


def _bounds() -> list[Column]:
    return [
        F.col("window.start").alias("window_start"),
        F.col("window.end").alias("window_end"),
    ]


MISSING = "-"  # what the job writes for an absent segment value


def with_category(events: DataFrame, catalogue: DataFrame) -> DataFrame:
    """Add `category`: the product's (catalogue: product_id, category), else the category of a
    /category/... page, else "-" -- as the job does."""
    from_page = F.when(
        F.col("page").startswith("/category/"),
        F.substring_index(F.col("page"), "/category/", -1),
    )
    joined = events.join(
        catalogue.select("product_id", F.col("category").alias("_catalogue_category")),
        on="product_id",
        how="left",
    )
    category = F.when(
        F.col("product_id").isNotNull(), F.coalesce("_catalogue_category", F.lit(MISSING))
    ).otherwise(F.coalesce(from_page, F.lit(MISSING)))
    return joined.withColumn("category", category).drop("_catalogue_category")


def segment_counts(events: DataFrame, window: str = "1 minute", slide: str | None = None):
    """Events per window by country, device and category (absent values as "-")."""
    return (
        events.groupBy(
            _window(window, slide).alias("window"),
            F.coalesce("country", F.lit(MISSING)).alias("country"),
            F.coalesce("device", F.lit(MISSING)).alias("device"),
            "category",
        )
        .count()
        .select(*_bounds(), "country", "device", "category", "count")
    )


def product_stats(events: DataFrame, window: str = "1 minute", slide: str | None = None):
    """Views, add-to-carts, purchases and revenue (summed in cents) per product and window."""
    kind = F.col("event_type")
    counted = events.where(
        F.col("product_id").isNotNull() & kind.isin("page_view", "add_to_cart", "purchase")
    )
    cents = F.when(kind == "purchase", F.round(F.coalesce("price", F.lit(0.0)) * 100))
    return (
        counted.groupBy(_window(window, slide).alias("window"), "product_id", "category")
        .agg(
            F.count(F.when(kind == "page_view", 1)).alias("views"),
            F.count(F.when(kind == "add_to_cart", 1)).alias("carts"),
            F.count(F.when(kind == "purchase", 1)).alias("purchases"),
            (F.coalesce(F.sum(cents), F.lit(0)).cast("long") / 100).alias("revenue"),
        )
        .select(*_bounds(), "product_id", "category", "views", "carts", "purchases", "revenue")
    )


def error_rates(events: DataFrame, window: str = "1 minute", slide: str | None = None):
    """Events, errors and their ratio per window."""
    return (
        events.groupBy(_window(window, slide).alias("window"))
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.count(F.when(F.col("event_type") == "error", 1)).alias("errors"),
        )
        .withColumn("error_rate", F.col("errors") / F.col("events"))
        .select(*_bounds(), "events", "errors", "error_rate")
    )


def active_users(
    events: DataFrame, window: str = "1 minute", slide: str | None = None, exact: bool = True
):
    """Distinct users per window: exact (batch DataFrames; the job keeps exact sets too) or
    HyperLogLog (`approx_count_distinct`, which streaming aggregations also support)."""
    distinct = F.countDistinct("user_id") if exact else F.approx_count_distinct("user_id")
    return (
        events.groupBy(_window(window, slide).alias("window"))
        .agg(distinct.alias("users"))
        .select(*_bounds(), "users")
    )


def session_windows(events: DataFrame, gap: str = "30 minutes") -> DataFrame:
    """Gap-based sessions per user and session id (`F.session_window`): start, end (last event
    plus the gap), duration in seconds (first to last event) and events."""
    # The bounds come from the aggregates (first event; last event + gap, which is what the
    # session window's end is) rather than from the grouping column: Spark pushes a filter on
    # a grouping column below the aggregation, where each event still has its own [t, t+gap)
    # window, so `.where(window_end <= x)` on `s.end` would cut sessions short.
    return (
        events.groupBy("user_id", "session_id", F.session_window("event_ts", gap).alias("s"))
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.min("event_ts").alias("first"),
            F.max("event_ts").alias("last"),
        )
        .select(
            F.col("first").alias("window_start"),
            (F.col("last") + F.expr(f"interval {gap}")).alias("window_end"),
            "user_id",
            "session_id",
            ((F.unix_micros("last") - F.unix_micros("first")) / 1e6).alias("duration_s"),
            "events",
        )
    )


def page_kind(event_type: Column | str = "event_type", page: Column | str = "page") -> Column:
    """The step of a path (home, category, product, search, cart, checkout, error, other)."""
    event_type = F.col(event_type) if isinstance(event_type, str) else event_type
    page = F.col(page) if isinstance(page, str) else page
    viewed = (
        F.when((page == "/") | (page == ""), "home")
        .when(page.startswith("/product/"), "product")
        .when(page.startswith("/category/"), "category")
        .when(page.startswith("/search"), "search")
        .when(page.startswith("/cart"), "cart")
        .when(page.startswith("/checkout"), "checkout")
        .otherwise("other")
    )
    return (
        F.when(event_type == "page_view", viewed)
        .when(event_type == "search", "search")
        .when(event_type.isin("add_to_cart", "remove_from_cart"), "cart")
        .when(event_type == "purchase", "checkout")
        .when(event_type == "error", "error")
        .otherwise("other")
    )


def transitions(
    events: DataFrame,
    gap: str = "30 minutes",
    window: str = "1 minute",
    slide: str | None = None,
) -> DataFrame:
    """Page-to-page transitions per window, from a *batch* DataFrame (window functions such as
    `lag` are not available on streams, which is why the job keeps per-session state)."""
    from pyspark.sql import Window

    gap_us = F.expr(f"unix_micros(timestamp'1970-01-01 00:00:00 UTC' + interval {gap})")
    ordered = Window.partitionBy("user_id", "session_id").orderBy("event_ts", "event_id")
    steps = events.select(
        "event_ts",
        page_kind().alias("to_page"),
        F.lag(page_kind()).over(ordered).alias("from_page"),
        F.lag("event_ts").over(ordered).alias("previous_ts"),
    )
    linked = steps.where(
        F.col("previous_ts").isNotNull()
        & (F.unix_micros("event_ts") - F.unix_micros("previous_ts") < gap_us)
    )
    return (
        linked.groupBy(_window(window, slide).alias("window"), "from_page", "to_page")
        .count()
        .select(*_bounds(), "from_page", "to_page", "count")
    )
