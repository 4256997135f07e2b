"""Exercise checks of notebook 01, Kafka fundamentals: partitions and consumer lag."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clickstream.course.checks import ExerciseError, attempt, correct, int_answer, need
from clickstream.course.truth import expected_partition

__all__ = ["attempt", "check_group_lag", "check_partition_for_key", "group_lag"]


def check_partition_for_key(answer: Any, key: str = "u_0042", partitions: int = 3) -> None:
    """Exercise 01.1: the partition a record keyed `key` lands in, of `partitions`."""
    answer = int_answer(answer, "a partition number")
    need(
        0 <= answer < partitions,
        f"partition {answer} does not exist: a topic with {partitions} partitions has "
        f"partitions 0 to {partitions - 1}",
    )
    expected = expected_partition(key, partitions)
    need(
        answer == expected,
        f"records keyed {key!r} do not land in partition {answer}. Send one with that key and "
        "look at the partition in the RecordMetadata that `producer.send(...).get()` returns, "
        "or compute murmur2(key) & 0x7fffffff modulo the partition count.",
    )
    correct(f"key {key!r} always goes to partition {expected} of {partitions}")


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
    answer = int_answer(answer, "the total lag")
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
    correct(f"group {group} is {expected} records behind on {topic}")
