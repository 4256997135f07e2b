"""Exercise checks of notebook 03's first section, Spark DataFrames for pandas users
(`clickstream.course.streaming_basics.check_page_views_per_country`): the reference answer
passes, and each usual mistake gets a message that says what to change."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from clickstream.course.checks import CORRECT, ExerciseError
from clickstream.course.streaming_basics import (
    attempt,
    check_page_views_per_country,
    sample_events,
)
from clickstream.source.simulator import SimConfig

CONFIG = SimConfig(seed=42, count=700, rate=20.0, malformed_count=3)
SAMPLE = 500


def page_views_per_country(events) -> dict:
    return dict(Counter(e["country"] for e in events if e["event_type"] == "page_view"))


def test_the_sample_is_the_valid_events_among_the_first_records():
    sample = sample_events(CONFIG, SAMPLE)
    assert 0 < len(sample) <= SAMPLE
    assert all(e["event_type"] and e["country"] for e in sample)
    assert sample == sample_events(CONFIG, SAMPLE)  # seeded: the same every time


def test_the_reference_answer_passes(capsys):
    answer = page_views_per_country(sample_events(CONFIG, SAMPLE))
    check_page_views_per_country(answer, CONFIG, sample_size=SAMPLE)
    assert CORRECT in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda s: dict(Counter(e["country"] for e in s)), "every event type"),
        (lambda s: dict(Counter(e["event_type"] for e in s)), "unexpected keys"),
        (lambda s: {k: v for k, v in list(page_views_per_country(s).items())[1:]}, "missing"),
        (lambda s: {k: v + 1 for k, v in page_views_per_country(s).items()}, "are off"),
        (lambda s: pd.Series(page_views_per_country(s)), r"\.to_dict\(\)"),
        (lambda s: sorted(page_views_per_country(s).items()), "expected a dict"),
    ],
)
def test_mistakes_are_named(wrong, message):
    answer = wrong(sample_events(CONFIG, SAMPLE))
    with pytest.raises(ExerciseError, match=message):
        check_page_views_per_country(answer, CONFIG, sample_size=SAMPLE)


def test_attempt_reports_not_attempted_wrong_and_right(capsys):
    def not_yet():
        raise NotImplementedError("Exercise 1: not done")

    assert attempt(not_yet, check_page_views_per_country, CONFIG, sample_size=SAMPLE) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert attempt(lambda: {}, check_page_views_per_country, CONFIG, sample_size=SAMPLE) is False
    assert "not right yet" in capsys.readouterr().out
    right = page_views_per_country(sample_events(CONFIG, SAMPLE))
    assert attempt(lambda: right, check_page_views_per_country, CONFIG, sample_size=SAMPLE)
