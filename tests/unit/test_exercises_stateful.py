"""Ground truth and exercise checks of notebooks 05 and 06 (`clickstream.course.truth`,
`stateful_analytics` and `bad_data_and_anomalies`).

The ground truth is plain Python written independently of the streaming job; here it must agree
with the job's engine (also plain Python, no Spark) on the same records, and every check must
accept the right answer and name the usual mistakes.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from clickstream import events
from clickstream.course import truth as gt
from clickstream.course.bad_data_and_anomalies import (
    check_quarantine_counts,
    check_threshold_windows,
)
from clickstream.course.checks import CORRECT, ExerciseError
from clickstream.course.stateful_analytics import check_session_funnel, check_top_revenue
from clickstream.source.simulator import SimConfig, Simulator
from tests.stream_truth import classify

US = 1_000_000


@pytest.fixture(scope="module")
def messy():
    """Records with every kind of trouble, in the order they are sent."""
    config = SimConfig(
        seed=3,
        count=3000,
        rate=20.0,
        incidents=((60.0, 90.0, 0.2),),
        late_share=0.01,
        late_delay_s=90.0,
        duplicate_count=40,
        malformed_count=18,
    )
    return list(Simulator(config).records())


@pytest.fixture(scope="module")
def copies():
    """Clean traffic with many copies, so that copies change revenues and funnels."""
    return list(Simulator(SimConfig(seed=5, count=3000, rate=10.0, duplicate_count=300)).records())


def test_job_outcome_follows_sparks_watermark_rule(messy):
    """Every record is accounted for once; with one record per micro-batch, Spark's rule is
    the ground truth's record-by-record rule, judged one record later."""
    records = [(r.key, r.value) for r in messy]
    _, invalid, late, dups, _ = classify(records, watermark_s=20)
    outcome = gt.job_outcome(messy, delay_s=20, batch_size=1)
    c = outcome.counters
    assert c["records"] == len(messy) == sum(c[k] for k in c if k != "records")
    assert c["quarantined"] == len(invalid) and c["duplicates_removed"] > 0
    assert 0 < c["late_dropped"] <= late
    assert len({e["event_id"] for e in outcome.accepted}) == c["events"]
    # Bigger batches move the watermark less often: never more late events.
    assert gt.job_outcome(messy, delay_s=20, batch_size=400).counters["late_dropped"] <= late


def test_unique_events_and_product_totals(copies):
    distinct = gt.unique_events(copies)
    assert len(distinct) == len({e["event_id"] for e in distinct}) == 2700
    totals = gt.product_totals(distinct)
    purchases = [e for e in distinct if e["event_type"] == "purchase"]
    assert sum(t["purchases"] for t in totals.values()) == len(purchases)
    cents = sum(round(e["price"] * 100) for e in purchases)
    assert round(sum(t["revenue"] for t in totals.values()) * 100) == cents
    top = gt.top_products(distinct, 3)
    assert [r for _, r in top] == sorted((t["revenue"] for t in totals.values()), reverse=True)[:3]


def test_gap_sessions_split_on_the_gap():
    def event(n, second, session="s1"):
        return {
            "event_id": f"e{n}",
            "event_time": f"2026-11-28T00:{second // 60:02d}:{second % 60:02d}.000Z",
            "user_id": "u1",
            "session_id": session,
        }

    rows = gt.gap_sessions([event(1, 0), event(2, 50), event(3, 200), event(4, 210, "s2")], 60)
    assert [(r["session_id"], r["events"], r["duration_s"]) for r in rows] == [
        ("s1", 2, 50.0),
        ("s1", 1, 0.0),
        ("s2", 1, 0.0),
    ]
    assert rows[0]["window_end"] == datetime(2026, 11, 28, 0, 1, 50, tzinfo=UTC)
    by_user = gt.gap_sessions([event(3, 200), event(4, 210, "s2")], 60, by_session_id=False)
    assert [(r["session_id"], r["events"]) for r in by_user] == [(None, 2)]


def passes(check, answer, *args, capsys, **kwargs) -> None:
    check(answer, *args, **kwargs)
    assert CORRECT in capsys.readouterr().out


def fails(check, answer, *args, **kwargs) -> str:
    with pytest.raises(ExerciseError) as info:
        check(answer, *args, **kwargs)
    return str(info.value)


def test_top_revenue_check(copies, capsys):
    distinct = gt.unique_events(copies)
    right = dict(gt.top_products(distinct, 5))
    passes(check_top_revenue, right, copies, capsys=capsys)
    passes(check_top_revenue, list(right.items()), copies, capsys=capsys)
    with_copies = gt.product_totals(r.event for r in copies if r.event)
    doubled = {p: with_copies[p]["revenue"] for p in right}
    assert doubled != right, "the fixture should have a copied purchase among the top products"
    assert "duplicates" in fails(check_top_revenue, doubled, copies)
    assert "top 5" in fails(check_top_revenue, dict(list(right.items())[:3]), copies)
    totals = gt.product_totals(distinct)
    low = sorted(totals, key=lambda p: totals[p]["revenue"])[:5]
    assert "not among the top 5" in fails(
        check_top_revenue, {p: totals[p]["revenue"] for p in low}, copies
    )
    assert "expected a dict" in fails(check_top_revenue, 42, copies)


def test_session_funnel_check(copies, capsys):
    distinct = gt.unique_events(copies)
    right = gt.funnel_counts(distinct)[None]
    passes(check_session_funnel, right, copies, capsys=capsys)
    per_window = gt.funnel_counts(distinct, 60).values()
    summed = tuple(sum(n[k] for n in per_window) for k in range(3))
    assert summed != right
    assert "spans two windows" in fails(check_session_funnel, summed, copies)
    assert "three numbers" in fails(check_session_funnel, right[:2], copies)


def test_quarantine_counts_check(messy, capsys):
    reasons = Counter(events.parse_value(r.value)[1] for r in messy if r.kind == "malformed")
    prefixes = Counter()
    for reason, n in reasons.items():
        prefixes[events.reason_prefix(reason)] += n
    passes(check_quarantine_counts, dict(prefixes), messy, capsys=capsys)
    assert "prefix" in fails(check_quarantine_counts, dict(reasons), messy)
    doubled = {k: 2 * n for k, n in prefixes.items()}
    assert "twice" in fails(check_quarantine_counts, doubled, messy)


def test_threshold_windows_check(messy, capsys):
    outcome = gt.job_outcome(messy, 20, 400)
    counts = gt.window_error_counts(outcome.accepted, 10)
    right = {w for w, (n, e) in counts.items() if e / n >= 0.05 and e >= 5}
    assert right, "the fixture's incident should raise the error rate above 5 %"
    iso = {w.strftime("%Y-%m-%dT%H:%M:%SZ") for w in right}
    passes(check_threshold_windows, iso, messy, 10, 20, 400, capsys=capsys)
    loose = {w for w, (n, e) in counts.items() if e / n >= 0.05}
    if loose != right:
        assert "at least 5 errors" in fails(check_threshold_windows, loose, messy, 10, 20, 400)
    assert "expected a set" in fails(check_threshold_windows, "x", messy, 10, 20, 400)
