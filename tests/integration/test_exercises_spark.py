"""The exercises where the learner writes the Spark query: the last check of notebooks 03 to 06
(`clickstream.course.streaming_basics` to `bad_data_and_anomalies`).

Each check runs on a real topic and a real Spark session: the reference solution passes, a
batch DataFrame is refused with the reason, and a query with a wrong window, watermark or gap,
or without the operator the exercise is about, fails and says why.
"""

from __future__ import annotations

import random
import uuid

import pytest
from pyspark.sql import functions as F

from clickstream import events
from clickstream.course import reset_topics
from clickstream.course.bad_data_and_anomalies import check_contract_reasons
from clickstream.course.checks import CORRECT, ExerciseError
from clickstream.course.stateful_analytics import check_user_sessions
from clickstream.course.streaming_basics import check_final_windows
from clickstream.course.truth import event_us
from clickstream.course.windows_and_watermarks import check_unique_events
from clickstream.ingest.kafka_io import delete_topic, make_producer
from clickstream.process.pipeline import parse_events, read_kafka, valid_events
from clickstream.source.simulator import SimConfig, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def _send(records, bootstrap: str) -> str:
    """A fresh one-partition topic holding `records` in this order."""
    topic = f"test_exercise_{uuid.uuid4().hex[:10]}"
    reset_topics(topic, bootstrap=bootstrap, partitions=1)
    producer = make_producer(bootstrap)
    try:
        for r in records:
            producer.send(topic, key=r.key, value=r.value, partition=0)
        producer.flush()
    finally:
        producer.close()
    return topic


@pytest.fixture(scope="module")
def sent(bootstrap):
    """Topics made in this module, deleted at its end."""
    topics: list[str] = []

    def send(records) -> str:
        topics.append(_send(records, bootstrap))
        return topics[-1]

    yield send
    for topic in topics:
        try:
            delete_topic(topic, bootstrap)
        except Exception:  # noqa: BLE001 - cleanup must not hide the tests' own result
            pass


def _passes(check, answer, capsys, *args, **kwargs) -> str:
    check(answer, *args, **kwargs)
    out = capsys.readouterr().out
    assert CORRECT in out
    return out


# --- 03: final windows with a watermark, in append mode ----------------------------------


@pytest.fixture(scope="module")
def windows_topic(sent):
    config = SimConfig(seed=3, count=600, rate=5.0, malformed_count=3)
    return config, sent(Simulator(config).records())


def _window_counts(stream, window: str = "30 seconds", watermark: str | None = "20 seconds"):
    if watermark:
        stream = stream.withWatermark("event_ts", watermark)
    return (
        stream.groupBy(F.window("event_ts", window).alias("window"))
        .count()
        .select(F.col("window.start").alias("window_start"), "count")
    )


def test_final_windows(spark, bootstrap, windows_topic, capsys):
    config, topic = windows_topic
    stream = valid_events(parse_events(read_kafka(spark, topic, bootstrap)))
    check = check_final_windows

    out = _passes(check, _window_counts(stream), capsys, config, window_s=30, delay_s=20)
    assert "3 final 30-second windows" in out

    batch = valid_events(parse_events(read_kafka(spark, topic, bootstrap, streaming=False)))
    with pytest.raises(ExerciseError, match="this is a batch DataFrame"):
        check(_window_counts(batch), config, window_s=30, delay_s=20)
    with pytest.raises(ExerciseError, match=r"no watermark \(EventTimeWatermark\)"):
        check(_window_counts(stream, watermark=None), config, window_s=30, delay_s=20)
    with pytest.raises(ExerciseError, match="those are 60-second windows"):
        check(_window_counts(stream, window="1 minute"), config, window_s=30, delay_s=20)
    with pytest.raises(ExerciseError, match="your watermark delay is 40 s, the exercise asks"):
        check(_window_counts(stream, watermark="40 seconds"), config, window_s=30, delay_s=20)


# --- 04: de-duplication within the watermark ---------------------------------------------


@pytest.fixture(scope="module")
def late_topic(sent):
    """Traffic with 5 % of the events delivered up to 90 s late, in order of arrival."""
    records = list(Simulator(SimConfig(seed=4, count=1200, rate=10.0)).records())
    rng = random.Random(4)
    delays = [rng.uniform(1.0, 90.0) if rng.random() < 0.05 else 0.0 for _ in records]
    order = sorted(
        range(len(records)),
        key=lambda i: (event_us(records[i].event["event_time"]) + delays[i] * 1e6, i),
    )
    arrivals = [records[i] for i in order]
    return arrivals, sent(arrivals)


def test_unique_events(spark, bootstrap, late_topic, capsys):
    arrivals, topic = late_topic
    stream = valid_events(
        parse_events(read_kafka(spark, topic, bootstrap, max_offsets_per_trigger=200))
    )
    check = check_unique_events

    def dedup(df, watermark="20 seconds"):
        return df.withWatermark("event_ts", watermark).dropDuplicatesWithinWatermark(["event_id"])

    out = _passes(check, dedup(stream), capsys, arrivals, delay_s=20, batch_size=200)
    assert "14 dropped as late" in out

    batch = valid_events(parse_events(read_kafka(spark, topic, bootstrap, streaming=False)))
    with pytest.raises(ExerciseError, match="this is a batch DataFrame"):
        check(batch.dropDuplicates(["event_id"]), arrivals, delay_s=20, batch_size=200)
    with pytest.raises(ExerciseError, match=r"no de-duplication \(StreamingDeduplicateWithin"):
        check(stream.withWatermark("event_ts", "20 seconds"), arrivals, delay_s=20, batch_size=200)
    with pytest.raises(ExerciseError, match="your watermark delay is 40 s, the exercise asks"):
        check(dedup(stream, "40 seconds"), arrivals, delay_s=20, batch_size=200)


# --- 05: session windows in append mode --------------------------------------------------


@pytest.fixture(scope="module")
def copies_topic(sent):
    records = list(
        Simulator(SimConfig(seed=5, count=1500, rate=10.0, duplicate_count=20)).records()
    )
    return records, sent(records)


def _sessions(stream, gap: str = "30 seconds", dedup: bool = True):
    stream = stream.withWatermark("event_ts", "30 seconds")
    if dedup:
        stream = stream.dropDuplicatesWithinWatermark(["event_id"])
    return (
        stream.groupBy("user_id", F.session_window("event_ts", gap).alias("s"))
        .agg(F.count(F.lit(1)).alias("events"))
        .select(
            "user_id",
            F.col("s.start").alias("session_start"),
            F.col("s.end").alias("session_end"),
            "events",
        )
    )


def test_user_sessions(spark, bootstrap, copies_topic, capsys):
    records, topic = copies_topic
    stream = valid_events(
        parse_events(read_kafka(spark, topic, bootstrap, max_offsets_per_trigger=300))
    )
    check = check_user_sessions

    out = _passes(check, _sessions(stream), capsys, records, gap_s=30, delay_s=30)
    assert "62 sessions closed by the watermark" in out

    batch = valid_events(parse_events(read_kafka(spark, topic, bootstrap, streaming=False)))
    with pytest.raises(ExerciseError, match="this is a batch DataFrame"):
        check(_sessions(batch), records, gap_s=30, delay_s=30)
    with pytest.raises(ExerciseError, match=r"no session window \(SessionWindowStateStoreSave\)"):
        counts = _window_counts(stream).withColumnRenamed("window_start", "session_start")
        check(counts, records, gap_s=30, delay_s=30)
    with pytest.raises(ExerciseError, match="those sessions have a gap of 60 s"):
        check(_sessions(stream, gap="1 minute"), records, gap_s=30, delay_s=30)
    with pytest.raises(ExerciseError, match="the copies are counted too"):
        check(_sessions(stream, dedup=False), records, gap_s=30, delay_s=30)


# --- 06: the contract as column expressions ----------------------------------------------


@pytest.fixture(scope="module")
def malformed_topic(sent):
    records = list(Simulator(SimConfig(seed=6, count=600, rate=20.0, malformed_count=60)).records())
    return records, sent(records)


def contract_reason(parsed):
    """The reference answer: the contract's first failing check, as one chain of F.when."""
    checks = [
        (F.col(name).isNull() | (F.col(name) == ""), F.lit(f"missing_field:{name}"))
        for name in events.REQUIRED_FIELDS
    ]
    checks.append(
        (
            ~F.col("event_type").isin(*events.EVENT_TYPES),
            F.concat(F.lit("unknown_event_type:"), F.substring("event_type", 1, 40)),
        )
    )
    checks.append(
        (
            ~F.col("event_time").rlike(events.EVENT_TIME_REGEX)
            | F.try_to_timestamp("event_time").isNull(),
            F.lit("bad_event_time"),
        )
    )
    reason = F.when(*checks[0])
    for condition, value in checks[1:]:
        reason = reason.when(condition, value)
    return parsed.select("offset", reason.alias("reason"))


def test_contract_reasons(spark, bootstrap, malformed_topic, capsys):
    records, topic = malformed_topic
    parsed = parse_events(read_kafka(spark, topic, bootstrap))
    check = check_contract_reasons

    out = _passes(check, contract_reason(parsed), capsys, records)
    assert "with column expressions only" in out

    batch = parse_events(read_kafka(spark, topic, bootstrap, streaming=False))
    with pytest.raises(ExerciseError, match="this is a batch DataFrame"):
        check(contract_reason(batch), records)
    by_udf = F.udf(lambda value: events.parse_value(value)[1], "string")
    raw = read_kafka(spark, topic, bootstrap)
    with pytest.raises(ExerciseError, match="the reason comes from a Python UDF"):
        check(raw.select("offset", by_udf("value").alias("reason")), records)
    nulls_only = F.lit(None)  # notebook 03's null checks: they let unknown event types through
    for name in reversed(events.REQUIRED_FIELDS):
        nulls_only = F.when(F.col(name).isNull(), F.lit(f"missing_field:{name}")).otherwise(
            nulls_only
        )
    with pytest.raises(ExerciseError, match="an event_type not in events.EVENT_TYPES"):
        check(parsed.select("offset", nulls_only.cast("string").alias("reason")), records)
