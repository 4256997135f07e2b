"""Anomaly alerts on the per-window error rate and traffic: detector, scoring and a benchmark.

The detector reads one closed window at a time, in window order, and keeps an exponentially
weighted baseline (EWMA) of each signal over the windows that were *not* anomalous:

- **error spike**: the window's errors against a binomial expectation at the baseline error
  rate, ``z = (errors - n p) / sqrt(n p (1 - p))``. A binomial score (rather than a z-score of the
  rate against its own past spread) stays right whatever the window size and traffic: ten errors
  out of 100 events and out of 10,000 mean very different things.
- **surge**: the window's event count against the EWMA mean, scaled by the larger of the EWMA
  variance and the mean (a Poisson floor, so a quiet history does not make every wobble a surge).

An alert opens when the score reaches ``open_z`` (and the window is clearly above the baseline
by ratio and, for errors, by count); it closes after ``close_after`` consecutive windows below
``close_z`` (hysteresis, so one quieter window inside an incident does not split it in two).
While an alert is open its signal's baseline is frozen, so an incident never becomes "normal".

Everything here is plain Python arithmetic on integer counts in a fixed order, so one series of
windows always gives the same alerts: the streaming job (which feeds closed windows as the
watermark passes them) and an offline replay agree exactly.

Measure recall and false alerts over a long simulated stream with random incidents and surges:

    clickstream bench anomalies
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from clickstream.errors import ClickstreamError
from clickstream.times import epoch_seconds, iso_us

ERROR_SPIKE = "error_spike"
SURGE = "surge"
KINDS = (ERROR_SPIKE, SURGE)
_US = 1_000_000


class AnomalyBenchError(ClickstreamError, ValueError):
    """A benchmark scenario that cannot be built."""


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of the detector; the defaults suit windows of 10 s to a few minutes."""

    alpha: float = 0.1  # EWMA weight of the newest normal window (memory of ~10 windows)
    warmup: int = 5  # windows that only build the baseline
    open_z: float = 6.0  # score that opens an alert
    close_z: float = 3.0  # an open alert's window counts as normal below this score
    close_after: int = 2  # consecutive normal windows that close an alert
    min_errors: int = 5  # an error spike needs at least this many errors in the window
    min_error_ratio: float = 2.0  # ... and an error rate at least this times the baseline
    min_surge_ratio: float = 1.5  # a surge needs at least this times the baseline traffic
    error_rate_floor: float = 0.001  # baseline error rate never assumed below this


@dataclass
class Alert:
    """One alert: open until `closed_at` is set. Times are ISO-8601 UTC (window bounds)."""

    alert_id: str
    kind: str
    status: str
    opened_at: str
    closed_at: str | None
    peak: float
    baseline: float
    detail: str

    def row(self) -> dict:
        """The store's `alerts` row."""
        return asdict(self)


@dataclass
class _Signal:
    """Baseline and alert bookkeeping of one signal."""

    seen: int = 0  # windows that fed the baseline
    mean: float = 0.0
    var: float = 0.0
    warm: list = field(default_factory=list)  # warm-up values
    alert: Alert | None = None
    quiet: int = 0  # consecutive normal windows while an alert is open
    last_bad_end: int = 0  # end (epoch us) of the last anomalous window of the open alert


class AnomalyDetector:
    """Feed closed windows in order with `update`; it returns the alerts that opened or closed.

    The state is plain data (`state()` / `AnomalyDetector(config, state)`), so the streaming job
    can checkpoint it with the rest of its state.
    """

    def __init__(self, config: DetectorConfig | None = None, state: dict | None = None):
        self.config = config or DetectorConfig()
        self.errors = _Signal()
        self.traffic = _Signal()
        if state:
            self.errors = state["errors"]
            self.traffic = state["traffic"]

    def state(self) -> dict:
        return {"errors": self.errors, "traffic": self.traffic}

    def to_json(self) -> dict:
        """The state as plain JSON data (the streaming job saves it per micro-batch)."""
        return {"errors": asdict(self.errors), "traffic": asdict(self.traffic)}

    @classmethod
    def from_json(cls, config: DetectorConfig | None, data: dict | None) -> AnomalyDetector:
        """A detector continuing from `to_json()` data (None: a fresh one)."""
        detector = cls(config)
        for name in ("errors", "traffic"):
            if data and data.get(name):
                signal = dict(data[name])
                alert = signal.get("alert")
                signal["alert"] = Alert(**alert) if alert else None
                setattr(detector, name, _Signal(**signal))
        return detector

    def open_alerts(self) -> list[Alert]:
        return [s.alert for s in (self.errors, self.traffic) if s.alert is not None]

    def update(self, start_us: int, end_us: int, events: int, errors: int) -> list[Alert]:
        """One closed window [start, end): its event and error counts. Returns changed alerts."""
        changed = []
        alert = self._update_errors(start_us, end_us, events, errors)
        if alert is not None:
            changed.append(alert)
        alert = self._update_traffic(start_us, end_us, events)
        if alert is not None:
            changed.append(alert)
        return changed

    # -- error rate ---------------------------------------------------------------------------
    def _update_errors(self, start: int, end: int, n: int, e: int) -> Alert | None:
        cfg, sig = self.config, self.errors
        if n <= 0:
            return None  # no events, no rate: neither evidence of a spike nor of its end
        rate = e / n
        if sig.seen < cfg.warmup:
            sig.warm.append((n, e))
            sig.seen += 1
            if sig.seen == cfg.warmup:
                sig.mean = sum(x[1] for x in sig.warm) / sum(x[0] for x in sig.warm)
                sig.warm = []
            return None
        p = max(sig.mean, cfg.error_rate_floor)
        z = (e - n * p) / math.sqrt(n * p * (1.0 - p)) if p < 1.0 else 0.0
        if sig.alert is None:
            if z >= cfg.open_z and e >= cfg.min_errors and rate >= cfg.min_error_ratio * p:
                sig.alert = Alert(
                    alert_id=f"{ERROR_SPIKE}:{iso_us(start)}",
                    kind=ERROR_SPIKE,
                    status="open",
                    opened_at=iso_us(start),
                    closed_at=None,
                    peak=rate,
                    baseline=p,
                    detail=f"error rate {rate:.1%} vs baseline {p:.2%} ({e} of {n} events, "
                    f"z={z:.1f})",
                )
                sig.quiet, sig.last_bad_end = 0, end
                return sig.alert
            sig.mean += cfg.alpha * (rate - sig.mean)
            sig.seen += 1
            return None
        return self._continue(
            sig, z, rate, end, f"peak error rate {{peak:.1%}} vs baseline {p:.2%}"
        )

    # -- traffic ------------------------------------------------------------------------------
    def _update_traffic(self, start: int, end: int, n: int) -> Alert | None:
        cfg, sig = self.config, self.traffic
        if sig.seen < cfg.warmup:
            sig.warm.append(n)
            sig.seen += 1
            if sig.seen == cfg.warmup:
                sig.mean = sum(sig.warm) / len(sig.warm)
                sig.var = sum((x - sig.mean) ** 2 for x in sig.warm) / len(sig.warm)
                sig.warm = []
            return None
        mean = sig.mean
        z = (n - mean) / math.sqrt(max(sig.var, mean, 1.0))
        if sig.alert is None:
            if z >= cfg.open_z and n >= cfg.min_surge_ratio * mean:
                sig.alert = Alert(
                    alert_id=f"{SURGE}:{iso_us(start)}",
                    kind=SURGE,
                    status="open",
                    opened_at=iso_us(start),
                    closed_at=None,
                    peak=float(n),
                    baseline=mean,
                    detail=f"{n} events in the window vs baseline {mean:.0f} (z={z:.1f})",
                )
                sig.quiet, sig.last_bad_end = 0, end
                return sig.alert
            delta = n - mean
            sig.mean = mean + cfg.alpha * delta
            sig.var = (1.0 - cfg.alpha) * (sig.var + cfg.alpha * delta * delta)
            sig.seen += 1
            return None
        return self._continue(sig, z, float(n), end, f"peak {{peak:.0f}} events vs {mean:.0f}")

    def _continue(self, sig: _Signal, z: float, value: float, end: int, text: str):
        """An alert is open: extend it, or count towards closing it."""
        alert = sig.alert
        if z >= self.config.close_z:
            sig.quiet, sig.last_bad_end = 0, end
            alert.peak = max(alert.peak, value)
            return None
        sig.quiet += 1
        if sig.quiet < self.config.close_after:
            return None
        alert.status = "closed"
        alert.closed_at = iso_us(sig.last_bad_end)
        alert.detail = f"{alert.detail}; {text.format(peak=alert.peak)}"
        sig.alert = None
        return alert


def detect(
    windows: Iterable[tuple[int, int, int, int]], config: DetectorConfig | None = None
) -> list[Alert]:
    """Alerts over a whole series of (start_us, end_us, events, errors), in window order."""
    detector = AnomalyDetector(config)
    alerts: dict[str, Alert] = {}
    for start, end, events, errors in windows:
        for alert in detector.update(start, end, events, errors):
            alerts[alert.alert_id] = Alert(**asdict(alert))
    return list(alerts.values())


# -- scoring ------------------------------------------------------------------------------------
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
