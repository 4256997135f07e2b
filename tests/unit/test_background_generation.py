"""The simulator in a process of its own (`generated_in_background`), as `produce` runs it flat out."""

from __future__ import annotations

import pytest

from clickstream.errors import ClickstreamError
from clickstream.source.producer import generated_in_background, simulated_records
from clickstream.source.simulator import SimConfig


def test_same_items_in_the_same_order_as_in_process():
    config = SimConfig(seed=7, count=5_000, duplicate_count=20, malformed_count=15)
    expected = list(simulated_records(config, with_times=False))
    got = list(generated_in_background(config, chunk=333))  # chunks that do not divide 5,000
    assert len(got) == 5_000
    assert got == expected
    timed = list(generated_in_background(SimConfig(seed=7, count=50), with_times=True))
    assert timed == list(simulated_records(SimConfig(seed=7, count=50), with_times=True))


def _command_line(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # a child of an earlier test, exited (or a zombie not yet reaped)
        return ""


def test_closing_early_stops_the_generator_process():
    import psutil

    items = generated_in_background(SimConfig(seed=1, count=10**9), chunk=64)
    first = [next(items) for _ in range(100)]
    assert len(first) == 100
    generators = [c for c in psutil.Process().children() if "_generator_main" in _command_line(c)]
    assert len(generators) == 1
    items.close()
    assert not psutil.pid_exists(generators[0].pid)  # stopped and reaped


def test_a_failing_generator_is_reported_not_truncated(monkeypatch):
    config = SimConfig(seed=1, count=10)
    bad = config.to_dict()
    bad["rate"] = -5  # rejected when the child builds its SimConfig
    monkeypatch.setattr(SimConfig, "to_dict", lambda self: bad)
    with pytest.raises(ClickstreamError, match="simulator failed: .*rate"):
        list(generated_in_background(config))
