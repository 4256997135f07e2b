"""Exercise checks of notebook 00, setup and checks."""

from __future__ import annotations

from typing import Any

from clickstream.course.checks import ExerciseError, attempt, correct, int_answer

__all__ = ["attempt", "check_message_count"]


def check_message_count(answer: Any, topic: str, bootstrap: str) -> None:
    """Exercise 00.1: the number of records `topic` holds right now."""
    from clickstream.ingest.kafka_io import message_count, topic_offsets

    answer = int_answer(answer, f"the number of records in {topic}")
    expected = message_count(topic, bootstrap)
    partitions = len(topic_offsets(topic, bootstrap))
    if answer != expected:
        hint = (
            "did you count only one partition? Sum over all of them"
            if answer < expected and partitions > 1
            else "count what the topic holds now, from the earliest to the latest offset"
        )
        raise ExerciseError(f"{topic} holds a different number of records than {answer}: {hint}.")
    correct(f"{topic} holds {expected} records")
