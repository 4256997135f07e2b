"""Exercise checks of notebook 02, producing clickstream events: the event contract, distinct
events and a producer that retries without writing duplicates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clickstream.course.checks import ExerciseError, attempt, correct, int_answer, is_int, need

__all__ = [
    "attempt",
    "check_distinct_events",
    "check_idempotent_producer_config",
    "check_purchase_event",
]


def check_purchase_event(answer: Any) -> None:
    """Exercise 02.1: a purchase event that satisfies the contract, with product and price."""
    from clickstream import events

    need(
        isinstance(answer, dict),
        f"expected a dict (one event), got {type(answer).__name__}; build it like the valid "
        "example above",
    )
    reason = events.validate(answer)
    need(
        reason is None,
        f"the contract rejects it with reason {reason!r}; read the reason, fix that field, "
        "and try events.validate(...) yourself",
    )
    need(
        answer["event_type"] == "purchase",
        f"event_type is {answer['event_type']!r}, the exercise asks for a purchase",
    )
    need(
        bool(answer.get("product_id")) and answer.get("price") is not None,
        "a purchase without product_id and price is valid by the contract, but useless to the "
        "revenue metrics: set both",
    )
    need(answer["price"] > 0, f"price {answer['price']} should be positive")
    correct("a valid purchase event")


def check_distinct_events(answer: Any, config) -> None:
    """Exercise 02.2: the number of distinct valid events (each event_id once) in `config`'s output."""
    from clickstream.source.simulator import Simulator, compute_ground_truth

    answer = int_answer(answer, "the number of distinct events")
    truth = compute_ground_truth(Simulator(config).records(), config)
    expected = truth.distinct_events
    if answer == expected:
        correct(f"{expected} distinct events among {truth.total} records")
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
    need(
        isinstance(answer, Mapping),
        f"expected a dict of KafkaProducer settings, got {type(answer).__name__}",
    )
    problems = []
    if answer.get("enable_idempotence") is not True:
        problems.append("enable_idempotence must be True (the broker then drops retried copies)")
    if str(answer.get("acks", 1)).lower() not in ("all", "-1"):
        problems.append("acks must be 'all' (idempotence needs every in-sync replica to confirm)")
    retries = answer.get("retries", 1)
    if not is_int(retries) or retries < 1:
        problems.append("retries must be a positive int (without retries a lost ack is a loss)")
    in_flight = answer.get("max_in_flight_requests_per_connection", 5)
    if not is_int(in_flight) or not 1 <= in_flight <= 5:
        problems.append("max_in_flight_requests_per_connection must be 1 to 5 with idempotence")
    if problems:
        raise ExerciseError("; ".join(problems))
    correct("retries are safe: the broker deduplicates them per producer and partition")
