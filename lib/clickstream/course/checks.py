"""Exercise checks for the course notebooks, in the style of apache/flink-training.

Each exercise in a notebook is a function the learner completes; until then it raises
`NotImplementedError` naming the exercise and where its solution is. The notebook runs it
through `attempt`, which reports "not attempted yet" instead of stopping the notebook, then
hands the answer to a `check_*` function here. A check prints "✓ correct" or raises
`ExerciseError` with a message that says what is wrong and how to get closer. The solution
notebooks call the same checks directly, so CI proves every reference solution passes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

CORRECT = "✓ correct"


class ExerciseError(AssertionError):
    """An answer is not right yet; the message says why."""


def attempt(exercise: Callable[[], Any], check: Callable[..., Any], *args, **kwargs) -> bool | None:
    """Run `exercise()` and check its answer with `check(answer, *args, **kwargs)`.

    Returns None if the exercise is not attempted yet (it raised NotImplementedError), True if
    the answer is correct, False if not (the reason is printed). Either way the notebook goes
    on; errors in the learner's own code still raise, with their traceback.
    """
    try:
        answer = exercise()
    except NotImplementedError as exc:
        print(f"… not attempted yet: {exc}")
        return None
    try:
        check(answer, *args, **kwargs)
    except ExerciseError as exc:
        print(f"✗ not right yet: {exc}")
        return False
    return True


def _correct(detail: str = "") -> None:
    print(f"{CORRECT}{': ' + detail if detail else ''}")


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ExerciseError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_answer(answer: Any, what: str) -> int:
    _need(
        _is_int(answer),
        f"expected {what} as an int, got {type(answer).__name__} {answer!r}"
        + (" (convert it with int(...))" if isinstance(answer, (str, float)) else ""),
    )
    return answer


# --- 00 setup and checks -----------------------------------------------------------------


def check_message_count(answer: Any, topic: str, bootstrap: str) -> None:
    """Exercise 00.1: the number of records `topic` holds right now."""
    from clickstream.ingest.kafka_io import message_count, topic_offsets

    answer = _int_answer(answer, f"the number of records in {topic}")
    expected = message_count(topic, bootstrap)
    partitions = len(topic_offsets(topic, bootstrap))
    if answer != expected:
        hint = (
            "did you count only one partition? Sum over all of them"
            if answer < expected and partitions > 1
            else "count what the topic holds now, from the earliest to the latest offset"
        )
        raise ExerciseError(f"{topic} holds a different number of records than {answer}: {hint}.")
    _correct(f"{topic} holds {expected} records")


# --- 01 Kafka fundamentals ---------------------------------------------------------------


def expected_partition(key: str | bytes, partitions: int) -> int:
    """The partition kafka-python's default partitioner picks for `key` (murmur2, like Java's)."""
    from kafka.partitioner.default import murmur2

    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions


def check_partition_for_key(answer: Any, key: str = "u_0042", partitions: int = 3) -> None:
    """Exercise 01.1: the partition a record keyed `key` lands in, of `partitions`."""
    answer = _int_answer(answer, "a partition number")
    _need(
        0 <= answer < partitions,
        f"partition {answer} does not exist: a topic with {partitions} partitions has "
        f"partitions 0 to {partitions - 1}",
    )
    expected = expected_partition(key, partitions)
    _need(
        answer == expected,
        f"records keyed {key!r} do not land in partition {answer}. Send one with that key and "
        "look at the partition in the RecordMetadata that `producer.send(...).get()` returns, "
        "or compute murmur2(key) & 0x7fffffff modulo the partition count.",
    )
    _correct(f"key {key!r} always goes to partition {expected} of {partitions}")


def group_lag(group: str, topic: str, bootstrap: str) -> dict[int, int]:
    """{partition: end offset minus the group's committed offset (0 committed if none)}."""
    from kafka import KafkaAdminClient

    from clickstream.ingest.kafka_io import topic_offsets

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="clickstream-exercises")
    try:
        committed = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    by_partition = {
        tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic
    }
    return {
        p: end - max(by_partition.get(p, begin), begin)
        for p, (begin, end) in topic_offsets(topic, bootstrap).items()
    }


def check_group_lag(answer: Any, group: str, topic: str, bootstrap: str) -> None:
    """Exercise 01.2: the total lag of consumer `group` on `topic` (all partitions)."""
    lag = group_lag(group, topic, bootstrap)
    if isinstance(answer, Mapping):
        raise ExerciseError(
            "expected one number, the total over all partitions; you returned a mapping "
            "(sum its values)"
        )
    answer = _int_answer(answer, "the total lag")
    expected = sum(lag.values())
    if answer != expected:
        if answer in lag.values() and len(lag) > 1:
            hint = "that is one partition's lag; add up all partitions"
        elif answer < 0:
            hint = "lag is end offset minus committed offset, never negative"
        else:
            hint = (
                "lag per partition is (end offset - committed offset); get the committed "
                "offsets with KafkaAdminClient.list_group_offsets(group) and the end offsets "
                "with KafkaConsumer.end_offsets(...)"
            )
        raise ExerciseError(f"group {group} is not {answer} records behind: {hint}.")
    _correct(f"group {group} is {expected} records behind on {topic}")


# --- 02 producing clickstream events -----------------------------------------------------


def check_purchase_event(answer: Any) -> None:
    """Exercise 02.1: a purchase event that satisfies the contract, with product and price."""
    from clickstream import events

    _need(
        isinstance(answer, dict),
        f"expected a dict (one event), got {type(answer).__name__}; build it like the valid "
        "example above",
    )
    reason = events.validate(answer)
    _need(
        reason is None,
        f"the contract rejects it with reason {reason!r}; read the reason, fix that field, "
        "and try events.validate(...) yourself",
    )
    _need(
        answer["event_type"] == "purchase",
        f"event_type is {answer['event_type']!r}, the exercise asks for a purchase",
    )
    _need(
        bool(answer.get("product_id")) and answer.get("price") is not None,
        "a purchase without product_id and price is valid by the contract, but useless to the "
        "revenue metrics: set both",
    )
    _need(answer["price"] > 0, f"price {answer['price']} should be positive")
    _correct("a valid purchase event")


def check_distinct_events(answer: Any, config) -> None:
    """Exercise 02.2: the number of distinct valid events (each event_id once) in `config`'s output."""
    from clickstream.source.simulator import Simulator, compute_ground_truth

    answer = _int_answer(answer, "the number of distinct events")
    truth = compute_ground_truth(Simulator(config).records(), config)
    expected = truth.distinct_events
    if answer == expected:
        _correct(f"{expected} distinct events among {truth.total} records")
        return
    with_dups = expected + truth.duplicates
    if answer == truth.total:
        hint = "that is every record; drop the malformed ones and count each event_id once"
    elif answer == with_dups:
        hint = f"that still counts {truth.duplicates} duplicate copies: count each event_id once"
    elif answer == expected + truth.counts.get("malformed", 0):
        hint = "malformed records are not events: keep only what events.parse_value accepts"
    else:
        hint = "parse each raw value with events.parse_value, keep the valid ones, count event_ids"
    raise ExerciseError(f"{answer} is not the number of distinct events: {hint}.")


def check_idempotent_producer_config(answer: Any) -> None:
    """Exercise 02.3: KafkaProducer settings that retry without writing duplicates."""
    _need(
        isinstance(answer, Mapping),
        f"expected a dict of KafkaProducer settings, got {type(answer).__name__}",
    )
    problems = []
    if answer.get("enable_idempotence") is not True:
        problems.append("enable_idempotence must be True (the broker then drops retried copies)")
    if str(answer.get("acks", 1)).lower() not in ("all", "-1"):
        problems.append("acks must be 'all' (idempotence needs every in-sync replica to confirm)")
    retries = answer.get("retries", 1)
    if not _is_int(retries) or retries < 1:
        problems.append("retries must be a positive int (without retries a lost ack is a loss)")
    in_flight = answer.get("max_in_flight_requests_per_connection", 5)
    if not _is_int(in_flight) or not 1 <= in_flight <= 5:
        problems.append("max_in_flight_requests_per_connection must be 1 to 5 with idempotence")
    if problems:
        raise ExerciseError("; ".join(problems))
    _correct("retries are safe: the broker deduplicates them per producer and partition")


# --- 03 structured streaming basics ------------------------------------------------------


def sample_events(config, sample_size: int) -> list[dict]:
    """The valid events among the first `sample_size` records `config` generates."""
    from itertools import islice

    from clickstream.source.simulator import Simulator

    records = islice(Simulator(config).records(), sample_size)
    return [r.event for r in records if r.kind == "valid"]


def check_page_views_per_country(answer: Any, config, sample_size: int) -> None:
    """Exercise 03.1: {country: page views} among the sample's events, counted with Spark."""
    if hasattr(answer, "to_dict") and not isinstance(answer, Mapping):
        raise ExerciseError(
            f"expected a dict {{country: count}}, got a {type(answer).__name__}: turn it into a "
            "dict (the rows of a Spark result with collect(), a pandas Series with .to_dict())"
        )
    _need(
        isinstance(answer, Mapping),
        f"expected a dict {{country: count}}, got {type(answer).__name__}; collect the rows of "
        "your result into a dict",
    )
    sample = sample_events(config, sample_size)
    expected = dict(Counter(e.get("country") for e in sample if e["event_type"] == "page_view"))
    every_type = dict(Counter(e.get("country") for e in sample))
    got = dict(answer)
    if got == expected:
        _correct(f"{sum(expected.values())} page views in {len(expected)} countries")
        return
    if got == every_type:
        raise ExerciseError(
            "those are the counts of every event type: keep only the page views first "
            '(where(F.col("event_type") == "page_view")), then group by country'
        )
    missing = sorted(set(expected) - set(got), key=str)
    extra = sorted(set(got) - set(expected), key=str)
    _need(
        not extra,
        f"unexpected keys {extra[:5]}: the keys should be countries, such as {sorted(expected)[:3]}",
    )
    _need(not missing, f"countries missing from your answer: {missing}")
    wrong = sorted(c for c in expected if got[c] != expected[c])
    raise ExerciseError(
        f"the counts for {wrong[:5]} are off ({sum(got.values())} page views in total, "
        f"expected {sum(expected.values())}): count the rows of spark_df whose event_type is "
        '"page_view", per country'
    )


def _valid_events(config):
    from clickstream.source.simulator import Simulator

    seen: set[str] = set()
    for record in Simulator(config).records():
        if record.kind in ("valid", "late") and record.event["event_id"] not in seen:
            seen.add(record.event["event_id"])
            yield record.event


def check_device_counts(answer: Any, config) -> None:
    """Exercise 03.2: {device: number of valid events} for everything `config` generated."""
    _need(
        isinstance(answer, Mapping),
        f"expected a dict {{device: count}}, got {type(answer).__name__}; collect the rows of "
        "your query's result into a dict",
    )
    expected = dict(Counter(e["device"] for e in _valid_events(config)))
    got = {str(k): v for k, v in answer.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    _need(not missing, f"devices missing from your answer: {missing}")
    _need(
        not extra,
        f"unexpected keys {extra}: only valid events count (filter out rows with null fields)",
    )
    wrong = sorted(d for d in expected if got[d] != expected[d])
    if wrong:
        total_got, total = sum(got.values()), sum(expected.values())
        hint = (
            "some events are missing: did the query read the whole topic "
            "(startingOffsets earliest, availableNow)?"
            if total_got < total
            else "there are too many: were duplicates or the previous run counted twice?"
        )
        raise ExerciseError(f"the counts for {wrong} are off ({total_got} vs {total}); {hint}")
    _correct(f"{len(expected)} devices, {sum(expected.values())} events")


def _as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        from clickstream.events import parse_event_time

        return parse_event_time(value if value[-1:] in "Z+-" else value.replace(" ", "T") + "Z")
    if isinstance(value, datetime):
        # Spark hands back naive datetimes in the session time zone, which the course sets to UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    raise ExerciseError(f"window starts should be datetimes, got {type(value).__name__}")


def check_window_counts(answer: Any, config, window_s: int) -> None:
    """Exercise 03.3: {(window_start, event_type): count} in `window_s`-second tumbling windows."""
    from clickstream.source.simulator import Simulator, compute_ground_truth

    _need(
        isinstance(answer, Mapping),
        f"expected a dict {{(window_start, event_type): count}}, got {type(answer).__name__}",
    )
    try:
        got = {(_as_utc(start), etype): n for (start, etype), n in answer.items()}
    except (TypeError, ValueError) as exc:
        raise ExerciseError(
            f"keys should be (window_start, event_type) pairs; could not read them ({exc})"
        ) from None
    truth = compute_ground_truth(Simulator(config).records(), config)
    expected = truth.window_counts(window_s)
    if got == expected:
        _correct(f"{len(expected)} (window, event_type) counts in {window_s}-second windows")
        return
    starts_got = sorted({s for s, _ in got})
    starts = sorted({s for s, _ in expected})
    if len(starts_got) != len(starts):
        span = (starts_got[1] - starts_got[0]).total_seconds() if len(starts_got) > 1 else None
        raise ExerciseError(
            f"you have {len(starts_got)} windows, expected {len(starts)}"
            + (
                f"; yours are {span:.0f} s apart, the exercise asks for {window_s} s"
                if span
                else ""
            )
        )
    if sum(got.values()) != sum(expected.values()):
        raise ExerciseError(
            f"your windows hold {sum(got.values())} events in total, expected "
            f"{sum(expected.values())}: count valid events only, over the whole topic"
        )
    raise ExerciseError(
        "the totals match but some (window, event_type) counts differ: group by "
        "window(event_ts, ...) and event_type, using the event time, not the Kafka timestamp"
    )
