"""The plain-Python ground truth behind the Spark exercises (`clickstream.course`);
tests/integration/test_exercises_spark.py runs the checks themselves against Spark."""

from __future__ import annotations

from datetime import UTC, datetime

from clickstream import events
from clickstream.course.bad_data_and_anomalies import EXPRESSIBLE, contract_reasons
from clickstream.course.stateful_analytics import closed_sessions
from clickstream.course.streaming_basics import final_windows
from clickstream.source.simulator import SimConfig, Simulator


def t(seconds: float) -> str:
    return events.format_event_time(datetime.fromtimestamp(1_795_824_000 + seconds, UTC))


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(1_795_824_000 + seconds, UTC)


def test_final_windows_are_those_the_watermark_has_passed():
    times = [t(1), t(12), t(25), t(31), t(47)]
    # newest 47 s, delay 10 s: the watermark is at 37 s, so only [0, 30) is final
    assert final_windows(times, 30, 10) == {at(0): 3}
    # with 10-second windows, [0, 10), [10, 20), [20, 30) and [30, 40) have ended by then
    assert final_windows(times, 10, 10) == {at(0): 1, at(10): 1, at(20): 1}
    assert final_windows(times, 10, 0) == {at(0): 1, at(10): 1, at(20): 1, at(30): 1}
    assert final_windows([], 10, 0) == {}


def test_closed_sessions_end_at_the_last_event_plus_the_gap():
    def event(i, user, seconds):
        return {"event_id": f"e{i}", "user_id": user, "session_id": "s", "event_time": t(seconds)}

    stream = [event(0, "a", 0), event(1, "a", 20), event(2, "b", 5), event(3, "a", 70)]
    closed = closed_sessions(stream, gap_s=30, delay_s=10)  # watermark at 60 s
    assert [(s["user_id"], s["window_start"], s["window_end"], s["events"]) for s in closed] == [
        ("a", at(0), at(50), 2),
        ("b", at(5), at(35), 1),
    ]


def test_contract_reasons_keep_what_column_expressions_can_judge():
    records = list(Simulator(SimConfig(seed=6, count=300, malformed_count=60)).records())
    reasons = contract_reasons(records)
    prefixes = {events.reason_prefix(r) for r in reasons.values() if r}
    assert prefixes == set(EXPRESSIBLE)
    left_out = [o for o in range(len(records)) if o not in reasons]
    assert left_out and all(
        events.reason_prefix(events.parse_value(records[o].value)[1])
        in ("not_json", "not_object", "wrong_type")
        for o in left_out
    )
    assert sum(r is None for r in reasons.values()) == 240
