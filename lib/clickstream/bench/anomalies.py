"""`clickstream bench anomalies`: how well the anomaly detector finds what was injected.

A seeded simulator injects incidents (error spikes) and surges at random places of a long
stream; the detector reads its closed windows (`window_series`), and `score` matches its alerts
to the injections by overlap: recall, false alerts per 1,000 windows and the detection delay.
No Spark and no broker are involved, so hours of event time are scored in seconds. Notebook 06
uses the same functions to tune the detector.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from clickstream.errors import ClickstreamError
from clickstream.process.anomaly import (
    ERROR_SPIKE,
    KINDS,
    SURGE,
    Alert,
    DetectorConfig,
    detect,
)
from clickstream.times import epoch_seconds, iso_us

_US = 1_000_000


class AnomalyBenchError(ClickstreamError, ValueError):
    """A benchmark scenario that cannot be built."""


@dataclass
class Score:
    """How alerts compare with what was injected."""

    injected: dict[str, int]
    detected: dict[str, int]
    false_alerts: int
    alerts: int
    windows: int
    delays_s: list[float] = field(default_factory=list)  # first alerting window end - start
    missed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        total = sum(self.injected.values())
        return sum(self.detected.values()) / total if total else 1.0

    def lines(self) -> list[str]:
        out = []
        for kind in KINDS:
            if self.injected.get(kind):
                out.append(
                    f"  {kind:<12} recall {self.detected.get(kind, 0)}/{self.injected[kind]}"
                )
        per_1000 = 1000 * self.false_alerts / self.windows if self.windows else 0.0
        out.append(
            f"  false alerts {self.false_alerts} of {self.alerts} alerts over {self.windows:,} "
            f"windows ({per_1000:.2f} per 1000 windows)"
        )
        if self.delays_s:
            out.append(
                f"  detection delay (end of first alerting window - start of the injection): "
                f"median {sorted(self.delays_s)[len(self.delays_s) // 2]:.0f} s, "
                f"max {max(self.delays_s):.0f} s"
            )
        out.extend(f"  missed: {m}" for m in self.missed)
        return out


def _epoch_s(text: str | None) -> float:
    return math.inf if text is None else epoch_seconds(text)


def score(
    alerts: Iterable[Alert],
    injected: dict[str, list[tuple[float, float]]],
    windows: int,
    window_s: float,
) -> Score:
    """Match alerts to injected intervals (epoch seconds) of the same kind by overlap.

    An injection is detected when an alert of its kind overlaps it; an alert that overlaps no
    injection of its kind is a false alert.
    """
    alerts = list(alerts)
    result = Score(
        injected={k: len(v) for k, v in injected.items()},
        detected={},
        false_alerts=0,
        alerts=len(alerts),
        windows=windows,
    )
    for kind, intervals in injected.items():
        for start, end in intervals:
            hits = [
                a
                for a in alerts
                if a.kind == kind and _epoch_s(a.opened_at) < end and _epoch_s(a.closed_at) > start
            ]
            if hits:
                result.detected[kind] = result.detected.get(kind, 0) + 1
                first = min(_epoch_s(a.opened_at) for a in hits)
                result.delays_s.append(max(0.0, first + window_s - start))
            else:
                result.missed.append(f"{kind} {iso_us(int(start * _US))}..{iso_us(int(end * _US))}")
    for a in alerts:
        lo, hi = _epoch_s(a.opened_at), _epoch_s(a.closed_at)
        if not any(lo < e and hi > s for s, e in injected.get(a.kind, [])):
            result.false_alerts += 1
    return result


# -- benchmark over simulated streams -----------------------------------------------------------
def window_series(
    records: Iterable, window_s: int, until: str | None = None
) -> list[tuple[int, int, int, int]]:
    """(start_us, end_us, events, errors) for every tumbling window from the first event's to
    the last one's, empty windows included, from simulator records (valid and late ones).

    `until` (an event_time string such as "2026-11-28T12:00:00.000Z") stops reading at the first
    genuine event at or after it, so an endless simulator can be cut at a time.
    """
    from clickstream.source.simulator import GroundTruthBuilder, SimConfig

    builder = GroundTruthBuilder(SimConfig(count=0))
    for record in records:
        if record.kind not in ("valid", "late"):
            continue
        if until is not None and record.event["event_time"] >= until:
            break
        builder.add(record)
    totals: dict[int, list[int]] = {}
    for (second, event_type), (on_time, late) in builder.result().per_second.items():
        slot = totals.setdefault(second - second % window_s, [0, 0])
        slot[0] += on_time + late
        if event_type == "error":
            slot[1] += on_time + late
    if not totals:
        return []
    first, last = min(totals), max(totals)
    return [
        (s * _US, (s + window_s) * _US, *totals.get(s, (0, 0)))
        for s in range(first, last + window_s, window_s)
    ]


_QUIET_S = 600.0  # normal traffic kept before and after each injection


def random_scenario(seed: int, hours: float, incidents: int, surges: int) -> tuple[tuple, tuple]:
    """Incidents and surges at random places, in their own slots, with quiet time around each.

    Error rates are drawn from 3 % to 30 % (against a 0.5 % base), surges from 1.8x to 4x the
    traffic, durations from 3 to 15 minutes; the first slot starts after 20 minutes of warm-up.
    """
    rng = random.Random(f"anomaly-bench:{seed}")
    total = incidents + surges
    warmup = 1200.0
    slot = (hours * 3600.0 - warmup) / max(total, 1)
    if total and slot < 180 + 2 * _QUIET_S:
        raise AnomalyBenchError(
            f"{total} injections do not fit in {hours} h: each needs at least "
            f"{(180 + 2 * _QUIET_S) / 60:.0f} minutes; use more hours or fewer injections"
        )
    kinds = [ERROR_SPIKE] * incidents + [SURGE] * surges
    rng.shuffle(kinds)
    out_incidents, out_surges = [], []
    for i, kind in enumerate(kinds):
        length = rng.uniform(180, min(900, slot - 2 * _QUIET_S))
        start = warmup + slot * i + _QUIET_S + rng.uniform(0, slot - 2 * _QUIET_S - length)
        start, end = round(start, 3), round(start + length, 3)
        if kind == ERROR_SPIKE:
            out_incidents.append((start, end, round(rng.uniform(0.03, 0.3), 3)))
        else:
            out_surges.append((start, end, round(rng.uniform(1.8, 4.0), 2)))
    return tuple(out_incidents), tuple(out_surges)


@dataclass
class BenchResult:
    hours: float
    events: int
    window_s: int
    score: Score
    seconds: float
    config: dict

    def text(self) -> str:
        head = (
            f"anomaly detector over {self.hours:.1f} h of simulated event time "
            f"({self.events:,} events, {self.window_s} s windows), {self.seconds:.1f} s:"
        )
        return "\n".join([head, *self.score.lines()])

    def to_dict(self) -> dict:
        return {
            "hours": self.hours,
            "events": self.events,
            "window_s": self.window_s,
            "recall": self.score.recall,
            "injected": self.score.injected,
            "detected": self.score.detected,
            "false_alerts": self.score.false_alerts,
            "alerts": self.score.alerts,
            "windows": self.score.windows,
            "delays_s": self.score.delays_s,
            "missed": self.score.missed,
            "seconds": self.seconds,
            "config": self.config,
        }


def bench(
    hours: float = 12.0,
    rate: float = 50.0,
    window_s: int = 60,
    incidents: int = 8,
    surges: int = 6,
    seed: int = 42,
    config: DetectorConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Recall and false alerts of the detector over a long seeded stream (no Spark involved)."""
    from clickstream.source.simulator import SimConfig, Simulator

    started = time.perf_counter()
    inc, sur = random_scenario(seed, hours, incidents, surges)
    # More than enough records; the series stops at the end of the requested event time.
    count = int(hours * 3600 * rate * 4) + 1000
    sim = SimConfig(seed=seed, count=count, rate=rate, incidents=inc, surges=sur)
    until = sim.start_time + timedelta(hours=hours)
    if progress:
        progress(f"simulating {hours:g} h of traffic at {rate:g} events/s on average...")
    series = window_series(
        Simulator(sim).records(), window_s, until=until.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    )
    count = sum(w[2] for w in series)
    alerts = detect(series, config)
    t0 = sim.start_time.timestamp()
    injected = {
        ERROR_SPIKE: [(t0 + a, t0 + b) for a, b, _ in inc],
        SURGE: [(t0 + a, t0 + b) for a, b, _ in sur],
    }
    result = score(alerts, injected, windows=len(series), window_s=window_s)
    return BenchResult(
        hours=hours,
        events=count,
        window_s=window_s,
        score=result,
        seconds=time.perf_counter() - started,
        config=asdict(config or DetectorConfig()),
    )
