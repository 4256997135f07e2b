"""Anomaly alerts on the per-window error rate and traffic: the detector the job runs.

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

Its recall and false alerts over a long simulated stream with random incidents and surges are
measured by `clickstream bench anomalies` (`clickstream.bench.anomalies`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from clickstream.times import iso_us

ERROR_SPIKE = "error_spike"
SURGE = "surge"
KINDS = (ERROR_SPIKE, SURGE)
_US = 1_000_000


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
