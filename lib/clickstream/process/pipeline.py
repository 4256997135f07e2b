"""The streaming transformations: Kafka source, parsing with the contract, event-time windows.

Each step is a plain function from DataFrame to DataFrame, so notebooks can build them one at a
time and tests can run them on a batch (`spark.read`) or a stream (`spark.readStream`) alike.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from clickstream import events
from clickstream.events import spark_schema
from clickstream.times import duration_us, iso

# Kafka's client timeouts for the source. Spark asks for each batch's offsets with an admin
# client; when a partition's leader dies, that call waits out default.api.timeout.ms (60 s
# by default) before Spark retries it on the new leader. With these, a job whose broker is
# lost goes on within about 15 s (the cluster's own failover takes some seconds of that).
KAFKA_SOURCE_DEFAULTS = {
    "kafka.request.timeout.ms": "10000",
    "kafka.default.api.timeout.ms": "15000",
}


def read_kafka(
    spark: SparkSession,
    topic: str,
    bootstrap: str,
    starting_offsets: str = "earliest",
    max_offsets_per_trigger: int | None = None,
    streaming: bool = True,
    options: dict[str, str] | None = None,
) -> DataFrame:
    """The raw topic as a DataFrame (key, value, topic, partition, offset, timestamp).

    `options` are more source options, and override the defaults in KAFKA_SOURCE_DEFAULTS."""
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
    for key, value in source_options(options).items():
        reader = reader.option(key, value)
    return reader.load()


def source_options(options: dict[str, str] | None = None) -> dict[str, str]:
    """KAFKA_SOURCE_DEFAULTS with `options` over them. Kafka refuses to start a client whose
    API timeout is below its request timeout, so a request timeout raised past the default API
    timeout raises that too, unless `options` set it."""
    merged = {**KAFKA_SOURCE_DEFAULTS, **(options or {})}
    api, request = "kafka.default.api.timeout.ms", "kafka.request.timeout.ms"
    if api not in (options or {}):
        try:
            if int(merged[request]) > int(merged[api]):
                merged[api] = merged[request]
        except ValueError:
            pass  # not a number: Kafka's own error says which setting is wrong
    return merged


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
    counts = events.groupBy(_window(window, slide).alias("window"), *by).count()
    return counts.select(*_bounds(), *by, "count")


# -- the streaming job's metrics as DataFrame transformations --------------------------------
# `clickstream.process.stream` computes these incrementally, with one watermark for all of them (see its
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


# -- the streaming job's query, step by step -------------------------------------------------
# `clickstream stream` is assembled from these functions (see `clickstream.process.stream.build_query`):
#
#   read_kafka -> contract_checked -> with_watermark -> unique_events -> metric_facts
#              -> window_metrics                (one query, update mode: every windowed metric,
#                                                quarantine counts and totals)
#   read_kafka -> contract_checked -> with_watermark -> session_metrics
#                                               (a second query, append mode: sessions, paths)
#
# Every step runs on the executors; the driver only receives the aggregated rows.

# Reason -> None for a valid record. The JSON is parsed once into a VARIANT rather than with
# `from_json` on the contract's schema: from_json turns a number into a string field's text
# ("event_id": 1 would become "1"), so it cannot tell a wrongly typed field from a good one.
# The VARIANT keeps each value's JSON type, so the checks below are exactly `events.validate`.
_INT_TYPES = ("TINYINT", "SMALLINT", "INT", "BIGINT")
_SQL_TYPES = {str: "string", float: "double", int: "bigint"}
QUARANTINE_REASON = "reason"  # the column contract_checked adds: null when the record is valid


def _type_ok(field, type_name: Column, value: Column) -> Column:
    if field.type is str:
        return type_name == "STRING"
    if field.type is float:
        finite = ~F.isnan(value) & (F.abs(value) != F.lit(float("inf")))
        return (
            type_name.isin(*_INT_TYPES)
            | type_name.startswith("DECIMAL")
            | ((type_name == "DOUBLE") & finite)
        )
    return type_name.isin(*_INT_TYPES) & value.between(-(2**31), 2**31 - 1)


# Text that a non-string JSON value becomes when `from_json` reads it into a string field: a
# number, true/false, NaN/Infinity, an object or an array. A string field whose text looks like
# one of these might have been written as that value, so its record takes the exact check.
_NOT_PLAIN_TEXT = r"^(-?[0-9][0-9.eE+-]*|true|false|NaN|[+-]?Infinity|[{\[].*)$"
# The characters such text starts with. Many values (a page, a product id, most user ids)
# start with none of them and skip the regular expression (a sixth of the check's time).
_NOT_PLAIN_FIRST = tuple("-+0123456789tfNI{[")


def _not_plain(value: Column) -> Column:
    """True when a string field's text looks like a JSON value that is not a string."""
    first = F.substring(value, 1, 1)
    return F.when(first.isin(*_NOT_PLAIN_FIRST), value.rlike(_NOT_PLAIN_TEXT)).otherwise(False)


# One object with no nested object and nothing after it: `from_json` ignores what follows the
# first object ('{...} {...}'), which Python's json module rejects.
_FLAT_OBJECT = r"^\s*\{[^{}]*\}\s*$"
# JSON as Python's json module reads it: no single quotes, no NaN/Infinity.
_STRICT_JSON = {"allowSingleQuotes": "false", "allowNonNumericNumbers": "false"}
_CORRUPT = "_corrupt"  # where `from_json` puts a record whose values do not fit the schema


def _trailing_data(text: Column) -> Column:
    """True when something follows the first JSON value of `text` (Spark's JSON readers stop
    after it; Python's json module rejects the record). As the last element of an array, the
    text must leave exactly one more element after it, with two different endings."""

    def count(ending: str) -> Column:
        return F.json_array_length(F.concat(F.lit("["), text, F.lit(ending)))

    return ~F.coalesce((count(",0]") == 2) & (count(",1,2]") == 3), F.lit(False))


def _clean_record(text: Column, typed: Column) -> Column:
    """True when `from_json` alone is enough to check this record: an object, every required
    field present as plain text, every numeric field absent or of its type (`from_json` put
    nothing in `_corrupt`). Everything else -- a few records in a thousand -- takes the exact
    VARIANT check of `contract_checked`."""
    clean = (
        text.rlike(_FLAT_OBJECT)
        & F.is_valid_utf8(text)
        & typed.isNotNull()
        & typed[_CORRUPT].isNull()
    )
    for f in events.FIELDS:
        value = typed[f.name]
        if f.type is str:
            plain = ~_not_plain(value)
            if f.required:
                clean = clean & value.isNotNull() & (value != "") & plain
            else:
                clean = clean & (value.isNull() | plain)
        elif f.type is float:
            clean = clean & (
                value.isNull() | (~F.isnan(value) & (F.abs(value) != F.lit(float("inf"))))
            )
    return F.coalesce(clean, F.lit(False))


def contract_checked(
    raw: DataFrame,
    max_ahead: str = "1 day",
    not_before: str = "2000-01-01 00:00:00",
) -> DataFrame:
    """Kafka records -> the contract's columns, `event_ts`, and `reason`: null for a valid event,
    else why it is quarantined, with the reason codes of `events.validate`. Event times before
    `not_before`, or more than `max_ahead` past the record's Kafka timestamp (when it was
    produced), are `bad_event_time:...` too.

    Keeps `partition`, `offset` and the raw `value` (as text) for the quarantine topic.

    Records are parsed with `from_json` on the contract's schema. `from_json` alone cannot tell
    every wrongly typed field (it turns a number into a string field's text: "event_id": 1
    would become "1"), so a record it cannot vouch for (`_clean_record`) is parsed a second
    time into a VARIANT, which keeps each value's JSON type, and checked exactly as
    `events.validate` does. Valid records -- nearly all of them -- pay for `from_json` only.
    """
    checked = _parsed_once(raw).select(
        "partition",
        "offset",
        "_produced",
        "_text",
        "_clean",
        "_t",
        F.when(~F.col("_clean"), _exact_check()).alias("_x"),
    )
    parsed = _checked_fields(checked)
    reason = _quarantine_reason(max_ahead, not_before)
    out = [F.col(f.name) for f in events.FIELDS]
    return parsed.select(
        *out,
        F.when(reason.isNull(), F.col("event_ts")).alias("event_ts"),
        reason.alias(QUARANTINE_REASON),
        "partition",
        "offset",
        F.col("_text").alias("raw"),
    )


def _parsed_once(raw: DataFrame) -> DataFrame:
    """The records parsed by `from_json` (`_t`); `_clean` when that is enough, else the record
    as a VARIANT (`_v`) for the exact check."""
    from pyspark.sql import types as T

    text = F.col("value").cast("string")
    # A value `from_json` cannot convert to its field's type (a string or a boolean for a
    # number, a fraction for an integer) puts the whole record in `_corrupt`.
    typed = T.StructType([*spark_schema().fields, T.StructField(_CORRUPT, T.StringType())])
    first = raw.select(
        "partition",
        "offset",
        F.col("timestamp").alias("_produced"),
        text.alias("_text"),
        F.col("value").isNull().alias("_null"),
        F.from_json(text, typed, {**_STRICT_JSON, "columnNameOfCorruptRecord": _CORRUPT}).alias(
            "_t"
        ),
    ).withColumn("_clean", _clean_record(F.col("_text"), F.col("_t")))
    return first.select(
        "partition",
        "offset",
        "_produced",
        "_text",
        "_null",
        "_t",
        "_clean",
        F.when(~F.col("_clean"), F.try_parse_json("_text")).alias("_v"),
    )


def _exact_check() -> Column:
    """The exact check, as one struct evaluated only for records `from_json` cannot vouch for:
    each field read from the VARIANT `_v` (null unless present and of its type), and `reason`.

    It is the body of a higher-order function (`transform`), which Spark interprets row by row
    instead of compiling: Spark generates and compiles code for each micro-batch anew, and
    compiling this large check, which a few records in a thousand reach, cost more (about 70 ms
    per batch and query) than interpreting it does. Interpreted expressions share no common
    parts, so each field's JSON type and value are read from the VARIANT once, into the
    struct the function receives, and the checks read them from there."""
    read = F.struct(*[_variant_read(f).alias(f.name) for f in events.FIELDS])
    return F.transform(F.array(read), _checked_read)[0]


def _variant_read(field) -> Column:
    """A field of the VARIANT `_v`: its JSON type name (null when absent) and its value as the
    field's SQL type (null when it is not one)."""
    path = f"$.{field.name}"
    return F.struct(
        F.schema_of_variant(F.try_variant_get("_v", path, "variant")).alias("type"),
        F.try_variant_get("_v", path, _SQL_TYPES[field.type]).alias("value"),
    )


def _checked_read(read: Column) -> Column:
    """The fields of `read` (from `_variant_read`) that pass their checks, and `reason`."""
    values, checks = [], []
    for f in events.FIELDS:
        value, field_checks = _variant_field(f, read[f.name]["type"], read[f.name]["value"])
        values.append(value)
        checks += field_checks
    return F.struct(*values, _field_reason(checks).alias("reason"))


def _variant_field(
    field, type_name: Column, value: Column
) -> tuple[Column, list[tuple[Column, str]]]:
    """One field as its Spark type, and its checks: (condition, reason)."""
    absent = type_name.isNull() | (type_name == "VOID")
    if field.required and field.type is str:
        absent = absent | (value == "")
    ok = _type_ok(field, type_name, value)
    spark_value = value.cast("int") if field.type is int else value
    checks = []
    if field.required:
        checks.append((absent, f"{events.MISSING_FIELD}:{field.name}"))
    checks.append((~absent & ~ok, f"{events.WRONG_TYPE}:{field.name}"))
    return F.when(~absent & ok, spark_value).alias(field.name), checks


def _field_reason(checks: list[tuple[Column, str]]) -> Column:
    """Why the record in `_v` fails the contract's parsing and field checks (null if it passes)."""
    field_reason = F.when(~F.is_valid_utf8("_text") & ~F.col("_null"), events.NOT_UTF8).when(
        F.col("_v").isNull() | _trailing_data(F.col("_text")), events.NOT_JSON
    )
    field_reason = field_reason.when(
        ~F.schema_of_variant("_v").startswith("OBJECT"), events.NOT_OBJECT
    )
    for cond, code in checks:
        field_reason = field_reason.when(F.coalesce(cond, F.lit(False)), code)
    return field_reason


def _checked_fields(checked: DataFrame) -> DataFrame:
    """Each field from `from_json` (`_t`) for a clean record, else from the exact check (`_x`),
    with `_field_reason` and the parsed `event_ts`."""
    clean = F.col("_clean")
    parsed = checked.select(
        "partition",
        "offset",
        "_produced",
        "_text",
        *[
            F.when(clean, F.col("_t")[f.name]).otherwise(F.col("_x")[f.name]).alias(f.name)
            for f in events.FIELDS
        ],
        F.col("_x.reason").alias("_field_reason"),
    )
    valid_time = F.col("event_time").rlike(events.EVENT_TIME_REGEX)
    return parsed.withColumn("event_ts", F.when(valid_time, F.try_to_timestamp("event_time")))


def _quarantine_reason(max_ahead: str, not_before: str) -> Column:
    """The record's quarantine reason: the field checks', else its event type's or time's."""
    # The clock is the record's own Kafka timestamp rather than the batch's: the same on every
    # replay, and a constant-free expression, so Spark compiles the plan once, not per batch.
    reason = F.when(F.col("_field_reason").isNotNull(), F.col("_field_reason"))
    return (
        reason.when(
            ~F.col("event_type").isin(*events.EVENT_TYPES),
            F.concat(F.lit(f"{events.UNKNOWN_EVENT_TYPE}:"), F.substring("event_type", 1, 40)),
        )
        .when(F.col("event_ts").isNull(), events.BAD_EVENT_TIME)
        .when(F.col("event_ts") < F.to_timestamp(F.lit(not_before)), events.TOO_EARLY)
        .when(
            F.col("event_ts") > F.col("_produced") + F.expr(f"interval {max_ahead}"),
            events.TOO_FAR_AHEAD,
        )
    )


def with_watermark(checked: DataFrame, delay: str = "2 minutes") -> DataFrame:
    """The event-time watermark: Spark tracks the largest `event_ts` seen and drops, in the
    stateful steps after this one, what is more than `delay` older. Quarantined rows (no
    event time) pass through it without moving it."""
    return checked.withWatermark("event_ts", delay)


def unique_events(events: DataFrame) -> DataFrame:
    """Each event_id once (`dropDuplicatesWithinWatermark`): Spark keeps each id in its state
    store until the watermark passes its event time plus the delay. Quarantined rows have no
    event_id of their own; they get one from their Kafka position, so they all pass."""
    keyed = events.withColumn(
        "event_id",
        F.coalesce(
            F.when(F.col(QUARANTINE_REASON).isNull(), F.col("event_id")),
            F.concat_ws(":", F.lit("\u0000quarantine"), "partition", "offset"),
        ),
    )
    return keyed.dropDuplicatesWithinWatermark(["event_id"])


WATERMARK_DELAY_KEY = "spark.watermarkDelayMs"  # how Spark marks a column as event time


def _millis(text: str) -> int:
    return duration_us(text) // 1000


def _seconds(text: str) -> int:
    return _millis(text) // 1000


def window_of(
    events: DataFrame, window: str = "1 minute", slide: str | None = None, delay: str = "2 minutes"
) -> DataFrame:
    """Add `window` (start, end): each event's event-time window(s), one row per window, as
    `F.window` computes them. Rows without an event time (quarantined) keep a null window
    instead of being filtered out, so the totals and quarantine counts can share the same
    aggregation; the window column carries the watermark's event-time mark, so Spark evicts a
    window from its state once the watermark passes its end."""
    size = _seconds(window)
    step = _seconds(slide) if slide else size
    seconds = F.unix_seconds("event_ts")
    last = seconds - F.pmod(seconds, F.lit(step))
    delay_ms = _millis(delay)
    if step == size:  # tumbling: one window per event, no explode
        start = F.when(F.col("event_ts").isNotNull(), last)
        exploded = events.select("*", F.lit(0).alias("window_pos"), start.alias("_start"))
    else:
        n = -(-size // step)
        starts = F.filter(
            F.transform(F.sequence(F.lit(0), F.lit(n - 1)), lambda k: last - k * step),
            lambda s: s > seconds - size,
        )
        exploded = events.select(
            "*",
            F.posexplode_outer(F.when(F.col("event_ts").isNotNull(), starts)).alias(
                "window_pos", "_start"
            ),
        )
    win = F.when(
        F.col("_start").isNotNull(),
        F.struct(
            F.timestamp_seconds("_start").alias("start"),
            F.timestamp_seconds(F.col("_start") + size).alias("end"),
        ),
    )
    return exploded.select("*", win.alias("window", metadata={WATERMARK_DELAY_KEY: delay_ms})).drop(
        "_start"
    )


def category_of(categories: dict[str, str]) -> Column:
    """The event's category: its product's (from the catalogue), else the category of a
    /category/... page, else "-"."""
    pairs = []
    for product, category in sorted(categories.items()):
        pairs += [F.lit(product), F.lit(category)]
    catalogue = F.create_map(*pairs) if pairs else F.create_map().cast("map<string,string>")
    from_page = F.when(
        F.col("page").startswith("/category/"),
        F.nullif(F.substring_index(F.col("page"), "/category/", -1), F.lit("")),
    )
    return F.when(
        F.col("product_id").isNotNull(), F.coalesce(catalogue[F.col("product_id")], F.lit(MISSING))
    ).otherwise(F.coalesce(from_page, F.lit(MISSING)))


_FACT_FIELDS = (
    ("metric", "string"),
    ("k1", "string"),
    ("k2", "string"),
    ("k3", "string"),
    ("views", "int"),
    ("carts", "int"),
    ("purchases", "int"),
    ("cents", "bigint"),
    ("is_error", "int"),
    ("user", "string"),
)


def _fact(when: Column, **values) -> Column:
    """One fact: `metric` is null when the event does not count in it (dropped after `inline`)."""
    values["metric"] = F.when(when, values["metric"])
    return F.struct(
        *[
            (values[name] if name in values else F.lit(None)).cast(kind).alias(name)
            for name, kind in _FACT_FIELDS
        ]
    )


def metric_facts(
    events: DataFrame,
    categories: dict[str, str],
    window: str = "1 minute",
    slide: str | None = None,
    delay: str = "2 minutes",
) -> DataFrame:
    """One row per (event, window, metric) the event counts in, ready for one `groupBy`:
    `traffic` (k1 event type), `segments` (country, device, category), `products` (product id,
    category, views/carts/purchases/cents), `window` (errors, user, funnel step); and, with a
    null window, `quarantine` (k1 reason) and `totals` (events, quarantined)."""
    valid = F.col(QUARANTINE_REASON).isNull()
    facts = _event_facts(categories)
    windowed = window_of(events, window, slide, delay)
    exploded = windowed.select(
        "window",
        F.inline(facts),
        F.when(valid, _funnel_step()).alias("step"),
        "event_ts",
    ).where(F.col("metric").isNotNull())
    windowless = F.col("metric").isin("quarantine", "totals")
    return exploded.select(
        F.when(~windowless, F.col("window")).alias(
            "window", metadata={WATERMARK_DELAY_KEY: _millis(delay)}
        ),
        *[name for name, _ in _FACT_FIELDS],
        "step",
        F.when(F.col("metric") == "totals", F.col("event_ts")).alias("latest"),
    )


def _funnel_step() -> Column:
    """The event as a funnel step (user, session, time, id, code: 0 a product view, 1 an
    add-to-cart, 2 a purchase), or null when it is none of these."""
    kind = F.col("event_type")
    code = (
        F.when(kind == "page_view", F.when(F.col("product_id").isNotNull(), 0))
        .when(kind == "add_to_cart", 1)
        .when(kind == "purchase", 2)
    )
    return F.when(
        code.isNotNull(),
        F.struct(
            F.col("user_id").alias("u"),
            F.col("session_id").alias("s"),
            F.unix_micros("event_ts").alias("t"),
            F.col("event_id").alias("id"),
            code.alias("code"),
        ),
    )


def _event_facts(categories: dict[str, str]) -> Column:
    """The event's facts, one struct per metric of `metric_facts` (`metric` null where the event
    does not count), as an array for `inline`."""
    kind = F.col("event_type")
    product = F.col("product_id")
    valid = F.col(QUARANTINE_REASON).isNull()
    category = category_of(categories)
    is_product_event = product.isNotNull() & kind.isin("page_view", "add_to_cart", "purchase")
    cents = F.when(kind == "purchase", F.round(F.coalesce("price", F.lit(0.0)) * 100))
    return F.array(
        _fact(valid, metric=F.lit("traffic"), k1=kind),
        _fact(
            valid,
            metric=F.lit("segments"),
            k1=F.coalesce("country", F.lit(MISSING)),
            k2=F.coalesce("device", F.lit(MISSING)),
            k3=category,
        ),
        _fact(
            valid & is_product_event,
            metric=F.lit("products"),
            k1=product,
            k2=category,
            views=(kind == "page_view").cast("int"),
            carts=(kind == "add_to_cart").cast("int"),
            purchases=(kind == "purchase").cast("int"),
            cents=cents,
        ),
        _fact(
            valid,
            metric=F.lit("window"),
            is_error=(kind == "error").cast("int"),
            user=F.col("user_id"),
        ),
        _fact(~valid, metric=F.lit("quarantine"), k1=F.col(QUARANTINE_REASON)),
        # Totals over the whole stream (a null window: never evicted), once per event.
        _fact(valid & (F.col("window_pos") == 0), metric=F.lit("totals"), k1=F.lit("events")),
        _fact(~valid, metric=F.lit("totals"), k1=F.lit("quarantined")),
    )


def window_metrics(facts: DataFrame) -> DataFrame:
    """Every windowed metric in one stateful aggregation (update mode writes each changed key
    with its absolute value). Per key: count, the product sums, errors, and for the `window`
    metric the exact distinct users and the funnel (from each session's steps, in time order)."""
    grouped = facts.groupBy("window", "metric", "k1", "k2", "k3").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("views").alias("views"),
        F.sum("carts").alias("carts"),
        F.sum("purchases").alias("purchases"),
        F.coalesce(F.sum("cents"), F.lit(0)).alias("cents"),
        F.sum("is_error").alias("errors"),
        F.collect_set("user").alias("users"),
        F.collect_list(F.when(F.col("metric") == "window", F.col("step"))).alias("steps"),
        F.max("latest").alias("latest"),
    )
    return grouped.select(
        F.col("window.start").alias("window_start"),
        F.col("window.end").alias("window_end"),
        "metric",
        "k1",
        "k2",
        "k3",
        "n",
        "views",
        "carts",
        "purchases",
        "cents",
        "errors",
        F.size("users").alias("users"),
        *funnel_counts(F.col("steps")),
        "latest",
    )


def funnel_counts(steps: Column) -> list[Column]:
    """viewed, carted, purchased: sessions whose steps (user, session, time, id, code) hold a
    product view, then an add-to-cart, then a purchase, in (time, id) order.

    One pass over the steps in order: a session's stage is how far it got (0 to 3), and a step
    whose code equals the stage moves it on and counts once, in the count of that stage.
    Spark interprets higher-order functions element by element, so the pass is kept small;
    `sort_array` orders the structs field by field as `array_sort` does, with a compiled
    comparison instead of an interpreted one (a window's steps are sorted every micro-batch
    that updates it)."""
    start = F.struct(
        F.lit("").alias("u"),
        F.lit("").alias("s"),
        F.lit(0).alias("stage"),
        F.lit(0).alias("viewed"),
        F.lit(0).alias("carted"),
        F.lit(0).alias("purchased"),
    )

    def advance(acc, x):
        stage = F.when((x.u == acc.u) & (x.s == acc.s), acc.stage).otherwise(F.lit(0))
        moves = (x.code == stage).cast("int")
        return F.struct(
            x.u.alias("u"),
            x.s.alias("s"),
            (stage + moves).alias("stage"),
            (acc.viewed + F.when(stage == 0, moves).otherwise(0)).alias("viewed"),
            (acc.carted + F.when(stage == 1, moves).otherwise(0)).alias("carted"),
            (acc.purchased + F.when(stage == 2, moves).otherwise(0)).alias("purchased"),
        )

    folded = F.aggregate(F.sort_array(steps), start, advance)
    return [
        folded.viewed.alias("viewed"),
        folded.carted.alias("carted"),
        folded.purchased.alias("purchased"),
    ]


def session_metrics(
    events: DataFrame,
    gap: str = "30 minutes",
    window: str = "1 minute",
    slide: str | None = None,
) -> DataFrame:
    """Sessions and page paths, final once the watermark passes a session's end (append mode).

    `F.session_window` per (user_id, session_id) collects the session's distinct steps (so a
    repeated event counts once); each session comes out as one `session` row (start, end =
    last event + gap, events, duration) and its transitions between consecutive steps, in
    (time, id) order, as `path` rows in the window(s) of the later step."""
    valid = events.where(F.col(QUARANTINE_REASON).isNull())
    step = F.struct(
        F.unix_micros("event_ts").alias("t"),
        F.col("event_id").alias("id"),
        page_kind().alias("kind"),
    )
    sessions = valid.groupBy("user_id", "session_id", F.session_window("event_ts", gap)).agg(
        F.sort_array(F.collect_set(step)).alias("steps")
    )
    size = _seconds(window) * 1_000_000
    every = (_seconds(slide) if slide else _seconds(window)) * 1_000_000
    session_row = _session_row(_seconds(gap) * 1_000_000)
    paths = F.transform(_step_transitions(), lambda tr: _path_rows(tr, size, every))
    rows = F.concat(F.array(session_row), F.flatten(paths))
    return sessions.select(F.explode(rows).alias("r")).select("r.*")


def _step_transitions() -> Column:
    """The session's consecutive `steps`, pairwise: (from_page, to_page, t of the later step)."""
    return F.transform(
        F.arrays_zip(
            F.expr("slice(steps, 1, size(steps) - 1)"), F.expr("slice(steps, 2, size(steps))")
        ),
        lambda p: F.struct(
            p["0"]["kind"].alias("from_page"),
            p["1"]["kind"].alias("to_page"),
            p["1"]["t"].alias("t"),
        ),
    )


def _session_row(gap_us: int) -> Column:
    """The `session` row of a session's `steps`: first event to last event plus the gap."""
    first, last = F.col("steps")[0]["t"], F.element_at("steps", -1)["t"]
    return F.struct(
        F.lit("session").alias("metric"),
        F.timestamp_micros(first).alias("window_start"),
        F.timestamp_micros(last + gap_us).alias("window_end"),
        F.col("user_id").alias("k1"),
        F.col("session_id").alias("k2"),
        F.size("steps").cast("long").alias("n"),
        (last - first).alias("duration_us"),
    )


def _path_rows(tr: Column, size: int, every: int) -> Column:
    """A transition's `path` rows: one per window (`size` long, starting every `every`
    microseconds) that holds its later step."""
    n = -(-size // every)
    t = tr["t"]
    lastw = t - F.pmod(t, F.lit(every))
    starts = F.filter(
        F.transform(F.sequence(F.lit(0), F.lit(n - 1)), lambda k: lastw - k * every),
        lambda s: s > t - size,
    )
    return F.transform(
        starts,
        lambda s: F.struct(
            F.lit("path").alias("metric"),
            F.timestamp_micros(s).alias("window_start"),
            F.timestamp_micros(s + size).alias("window_end"),
            tr["from_page"].alias("k1"),
            tr["to_page"].alias("k2"),
            F.lit(1).cast("long").alias("n"),
            F.lit(None).cast("long").alias("duration_us"),
        ),
    )


# -- aggregated rows -> serving-store rows ---------------------------------------------------
def window_metric_rows(rows) -> tuple[dict[str, list[dict]], dict]:
    """Rows of `window_metrics` (Spark Rows or dicts) -> (store rows per metric, totals: events,
    quarantined, and `latest`, the newest event time accepted)."""
    out: dict[str, list[dict]] = {
        name: [] for name in ("traffic", "segments", "products", "active_users", "funnel", "errors")
    }
    out["quarantine"] = []
    totals: dict[str, int] = {}
    for row in rows:
        r = row.asDict() if hasattr(row, "asDict") else row
        metric = r["metric"]
        if metric == "quarantine":
            out["quarantine"].append({"reason": r["k1"], "count": r["n"]})
            continue
        if metric == "totals":
            totals[r["k1"]] = r["n"]
            if r.get("latest") is not None:
                totals["latest"] = r["latest"]
            continue
        for name, stored in _windowed_store_rows(r).items():
            out[name].append(stored)
    return out, totals


def _windowed_store_rows(r: dict) -> dict[str, dict]:
    """One windowed row of `window_metrics` -> its serving-store row per metric name."""
    bounds = {"window_start": iso(r["window_start"]), "window_end": iso(r["window_end"])}
    metric = r["metric"]
    if metric == "traffic":
        return {"traffic": {**bounds, "event_type": r["k1"], "count": r["n"]}}
    if metric == "segments":
        return {
            "segments": {
                **bounds,
                "country": r["k1"],
                "device": r["k2"],
                "category": r["k3"],
                "count": r["n"],
            }
        }
    if metric == "products":
        return {
            "products": {
                **bounds,
                "product_id": r["k1"],
                "category": r["k2"],
                "views": r["views"],
                "carts": r["carts"],
                "purchases": r["purchases"],
                "revenue": r["cents"] / 100,
            }
        }
    if metric == "window":
        return {
            "active_users": {**bounds, "users": r["users"]},
            "funnel": {
                **bounds,
                "viewed": r["viewed"],
                "carted": r["carted"],
                "purchased": r["purchased"],
            },
            "errors": {
                **bounds,
                "events": r["n"],
                "errors": r["errors"],
                "error_rate": r["errors"] / r["n"],
            },
        }
    return {}


def session_metric_rows(rows) -> tuple[list[dict], dict[tuple, int]]:
    """Rows of `session_metrics` -> (session rows, path counts {(start, end, from, to): n})."""
    sessions, paths = [], {}
    for row in rows:
        r = row.asDict() if hasattr(row, "asDict") else row
        if r["metric"] == "session":
            sessions.append(
                {
                    "window_start": iso(r["window_start"]),
                    "window_end": iso(r["window_end"]),
                    "user_id": r["k1"],
                    "session_id": r["k2"],
                    "duration_s": r["duration_us"] / 1e6,
                    "events": r["n"],
                }
            )
        else:
            key = (iso(r["window_start"]), iso(r["window_end"]), r["k1"], r["k2"])
            paths[key] = paths.get(key, 0) + r["n"]
    return sessions, paths


def quarantine_messages(checked: DataFrame, source_topic: str) -> DataFrame:
    """Quarantined records as Kafka messages (key, value) for the quarantine topic: the reason,
    where the record came from, and the record itself (as text, or base64 if not UTF-8)."""
    bad = checked.where(F.col(QUARANTINE_REASON).isNotNull())
    text = F.is_valid_utf8("raw")
    value = F.struct(
        F.col(QUARANTINE_REASON).alias("reason"),
        F.lit(source_topic).alias("source_topic"),
        "partition",
        "offset",
        F.when(text, F.col("raw")).alias("value"),
        F.when(~text, F.base64(F.col("raw").cast("binary"))).alias("value_base64"),
    )
    return bad.select(
        F.concat_ws(":", F.lit(source_topic), "partition", "offset").alias("key"),
        F.to_json(value).alias("value"),
    )
