"""The anomaly detector: opens on spikes and surges, closes after them, quiet otherwise."""

from __future__ import annotations

import json
import pickle
import random
import subprocess

import pytest

from clickstream.bench.anomalies import AnomalyBenchError, bench, random_scenario, score
from clickstream.process.anomaly import ERROR_SPIKE, SURGE, AnomalyDetector, DetectorConfig, detect
from clickstream.times import iso_us
from tests.conftest import CLICKSTREAM

US = 1_000_000
WINDOW = 10 * US


def series(
    windows: int,
    seed: int = 1,
    mean: float = 200.0,
    error_rate: float = 0.005,
    incidents: dict[range, float] | None = None,
    surges: dict[range, float] | None = None,
) -> list[tuple[int, int, int, int]]:
    """Synthetic (start, end, events, errors): Poisson-like traffic, binomial errors."""
    rng = random.Random(seed)
    out = []
    for i in range(windows):
        m = mean
        for span, factor in (surges or {}).items():
            if i in span:
                m *= factor
        p = error_rate
        for span, rate in (incidents or {}).items():
            if i in span:
                p = rate
        n = max(0, round(rng.gauss(m, m**0.5)))
        e = sum(rng.random() < p for _ in range(n))
        out.append((i * WINDOW, (i + 1) * WINDOW, n, e))
    return out


def test_quiet_traffic_raises_no_alert():
    assert detect(series(3000, seed=2)) == []


def test_an_error_spike_opens_then_closes_after_it():
    alerts = detect(series(200, incidents={range(60, 66): 0.2}))
    assert len(alerts) == 1
    a = alerts[0]
    assert a.kind == ERROR_SPIKE and a.status == "closed"
    assert a.opened_at == iso_us(60 * WINDOW) and a.alert_id == f"error_spike:{a.opened_at}"
    assert a.closed_at == iso_us(66 * WINDOW)  # end of the last anomalous window
    assert 0.1 < a.peak < 0.35 and a.baseline < 0.02
    assert "error rate" in a.detail and "peak" in a.detail


def test_a_surge_opens_then_closes_after_it():
    alerts = detect(series(200, surges={range(100, 104): 3.0}))
    assert [(a.kind, a.opened_at, a.closed_at) for a in alerts] == [
        (SURGE, iso_us(100 * WINDOW), iso_us(104 * WINDOW))
    ]
    assert alerts[0].peak > 2 * alerts[0].baseline


def test_one_quiet_window_inside_an_incident_does_not_split_it():
    data = series(120, incidents={range(40, 50): 0.3})
    start, end, n, _ = data[45]
    data[45] = (start, end, n, 0)  # a normal-looking window in the middle
    alerts = detect(data)
    assert len(alerts) == 1 and alerts[0].closed_at == iso_us(50 * WINDOW)


def test_the_baseline_ignores_anomalous_windows():
    detector = AnomalyDetector()
    data = series(300, incidents={range(50, 250): 0.3})
    for window in data[:50]:
        detector.update(*window)
    before = detector.errors.mean
    for window in data[50:250]:
        detector.update(*window)
    assert detector.errors.mean == before  # a long incident never becomes the new normal
    assert detector.open_alerts()


def test_nothing_is_flagged_during_warm_up():
    data = series(20, incidents={range(0, 3): 0.5})
    assert all(a.opened_at >= iso_us(5 * WINDOW) for a in detect(data))


def test_a_checkpointed_detector_continues_identically():
    data = series(400, seed=9, incidents={range(100, 110): 0.1}, surges={range(300, 305): 2.5})
    whole = detect(data)
    first = AnomalyDetector()
    changed = []
    for window in data[:105]:
        changed += [a.row() for a in first.update(*window)]
    resumed = AnomalyDetector(DetectorConfig(), pickle.loads(pickle.dumps(first.state())))
    for window in data[105:]:
        changed += [a.row() for a in resumed.update(*window)]
    final = {row["alert_id"]: row for row in changed}
    assert list(final.values()) == [a.row() for a in whole]
    assert len(whole) == 2


def test_score_matches_alerts_to_injections_by_overlap():
    data = series(300, incidents={range(100, 110): 0.2}, surges={range(200, 205): 3.0})
    alerts = detect(data)
    injected = {
        ERROR_SPIKE: [(100 * 10.0, 110 * 10.0), (250 * 10.0, 260 * 10.0)],  # second: missed
        SURGE: [],
    }
    result = score(alerts, injected, windows=len(data), window_s=10)
    assert result.detected == {ERROR_SPIKE: 1}
    assert result.false_alerts == 1  # the surge alert matches no injected surge
    assert result.recall == 0.5 and len(result.missed) == 1
    assert any("recall 1/2" in line for line in result.lines())


def test_bench_over_a_moderate_stream_finds_every_injection_and_nothing_else():
    result = bench(hours=3.0, rate=20.0, window_s=10, incidents=3, surges=3, seed=5)
    s = result.score
    assert s.injected == {ERROR_SPIKE: 3, SURGE: 3}
    assert s.recall == 1.0, s.lines()
    assert s.false_alerts == 0, s.lines()
    assert s.windows == 3 * 360
    assert max(s.delays_s) <= 3 * 10  # found within three windows
    assert "recall 3/3" in result.text()


def test_scenarios_keep_injections_apart_or_refuse():
    incidents, surges = random_scenario(1, hours=6, incidents=3, surges=2)
    spans = sorted((a, b) for a, b, _ in incidents + surges)
    assert len(spans) == 5
    assert all(b + 1200 <= c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))
    assert all(0.03 <= r <= 0.3 for *_, r in incidents)
    with pytest.raises(AnomalyBenchError, match="do not fit"):
        random_scenario(1, hours=1, incidents=4, surges=4)


def test_bench_anomalies_command_prints_json():
    out = subprocess.run(
        [CLICKSTREAM, "bench", "anomalies", "--hours", "1.5", "--rate", "10", "--window", "10"]
        + ["--incidents", "1", "--surges", "1", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(out.stdout)
    assert report["recall"] == 1.0 and report["false_alerts"] == 0
    assert report["injected"] == {"error_spike": 1, "surge": 1}
