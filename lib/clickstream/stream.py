"""The streaming job (`clickstream stream`): Kafka -> Spark Structured Streaming -> serving store.

One Spark streaming query reads the raw topic; its `foreachBatch` hands each micro-batch to an
incremental engine that maintains every metric by event time and writes the results with
`Store.write_batch(job, batch_id, ...)`. Metrics (store names in brackets):

- events per window and event type [traffic]; by country, device and category [segments];
  views, add-to-carts, purchases and revenue per product [products]; exact distinct users
  [active_users]; sessions that viewed a product, then added to cart, then purchased [funnel];
  events, errors and error rate [errors] -- all per window (tumbling, or sliding with a slide);
- gap-based session windows per user and session id [sessions]; page-to-page transitions
  within sessions [paths]; anomaly alerts on the error rate and traffic [alerts] (also sent to
  the alerts topic); records that break the contract per reason [quarantine] (also sent,
  each with its reason, to the quarantine topic); and totals [counters]: records,
  quarantined, late_dropped, duplicates_removed, events.

Why one query and our own state, rather than one Spark query per metric with Spark's state
------------------------------------------------------------------------------------------
Several queries on one source each plan their own micro-batches and therefore advance their own
watermark: the same late event can be counted in one metric and dropped in another, and the
number dropped (`numRowsDroppedByWatermark`) is only reported after a batch has committed, so it
cannot be written atomically with the batch and is lost or doubled by a crash. Spark's session
windows in update mode also change their key (the window end) as sessions grow, which an upsert
store cannot follow. So the job is one query whose `foreachBatch` does, for each batch:

1. validate every record with `events.parse_value` (the contract itself, so quarantine is
   exactly what `events.validate` rejects, with the same reason codes);
2. drop events older than the batch's watermark (the largest event time of earlier batches
   minus the delay, as Spark defines it) and count them -- one decision for every metric. As
   in Spark, the watermark is global: a batch that reads one partition further ahead in event
   time than another (Spark splits `maxOffsetsPerTrigger` by backlog) moves it for all;
3. drop repeated event ids (ids are kept while their event time is above the watermark: an
   older repeat would be dropped as late anyway) and count them;
4. update the windows, sessions, paths and funnels, then advance the watermark: windows,
   sessions and paths it has passed are final; closed windows feed the anomaly detector in
   window order, which makes alerts a function of the data alone.

Exactly-once. Spark's checkpoint fixes the Kafka offsets of every batch before it runs, so a
replayed batch has the same records. The engine's state after batch N is saved as a file named
N in the checkpoint (written atomically, before the store write), and batch N starts from state
N-1. The store applies each (job, batch_id) once, in one transaction, with every row an upsert
of an absolute value. A job killed at any moment therefore resumes from consistent state: a
batch the store already holds is skipped, any other batch is recomputed from the same state and
records, giving the same rows. Topic outputs (alerts, quarantined records) are sent before the
store write, so they are at-least-once: keyed by alert id / source offset for de-duplication.

Active users are exact (a set of user ids per open window): state is bounded by the watermark
(only windows not yet closed hold sets), a few thousand ids at course scale, and exact numbers
can be checked against the ground truth; at millions of users per window an HyperLogLog sketch
(`approx_count_distinct`) would be the right trade.

Order within a session is event time, then event id. Sessions are gap-based (an event joins a
session if it falls within `session_gap` of it, as `F.session_window` does) per (user_id,
session_id), and are written once the watermark passes their end (last event + gap). Paths
are transitions between consecutive events of one session, by page kind (home, category,
product, search, cart, checkout, error), counted in the window of the later event once the
watermark passes it (so a late-but-accepted event is put in its place first). The funnel counts,
per window, sessions with a product view, then an add-to-cart after it, then a purchase after
that, within the window. Segment values that are absent are written as "-".
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clickstream import events
from clickstream.anomaly import AnomalyDetector, DetectorConfig
from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError
from clickstream.serving import Store, open_store

JOB = "stream"
STATE_VERSION = 1
MISSING = "-"  # segment value when the event does not say
DEFAULT_ALERTS_TOPIC = "clickstream_alerts"
DEFAULT_QUARANTINE_TOPIC = "clickstream_quarantine"
COUNTERS = ("records", "quarantined", "late_dropped", "duplicates_removed", "events")

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


class StreamJobError(ClickstreamError):
    """The streaming job cannot start or has failed."""


class CheckpointMismatchError(StreamJobError):
    """The checkpoint belongs to another topic, configuration or store, or the topic changed."""


# -- durations ---------------------------------------------------------------------------------
_UNITS = {
    "ms": 1_000,
    "millisecond": 1_000,
    "milliseconds": 1_000,
    "s": _US,
    "sec": _US,
    "secs": _US,
    "second": _US,
    "seconds": _US,
    "m": 60 * _US,
    "min": 60 * _US,
    "mins": 60 * _US,
    "minute": 60 * _US,
    "minutes": 60 * _US,
    "h": 3600 * _US,
    "hour": 3600 * _US,
    "hours": 3600 * _US,
    "d": 86400 * _US,
    "day": 86400 * _US,
    "days": 86400 * _US,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def duration_us(text: str, name: str = "duration") -> int:
    """'10 seconds', '1 minute', '90s', '2 min' -> microseconds."""
    match = _DURATION.match(str(text))
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or not unit:
        raise StreamJobError(
            f"{name} {text!r} is not a duration: write it like '10 seconds', '1 minute', '2 "
            "minutes' or '1 hour'."
        )
    return round(float(match.group(1)) * unit)


def _iso(us: int, cache: dict[int, str] | None = None) -> str:
    """Epoch microseconds -> '2026-11-28T10:15:00Z' (whole seconds, as the store keeps them)."""
    if cache is not None:
        text = cache.get(us)
        if text is not None:
            return text
    text = datetime.fromtimestamp(us // _US, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if cache is not None:
        if len(cache) > 100_000:
            cache.clear()
        cache[us] = text
    return text


def to_us(dt: datetime) -> int:
    """Aware datetime -> epoch microseconds, exactly."""
    return (dt - _EPOCH) // _ONE_US


# -- what the job computes ---------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """The event-time settings every metric shares, in microseconds."""

    window_us: int
    slide_us: int
    delay_us: int
    gap_us: int

    def window_starts(self, t: int) -> list[int]:
        """Starts of the windows [s, s + window) holding t; s is a multiple of the slide."""
        last = t - t % self.slide_us
        starts = []
        s = last
        while s > t - self.window_us:
            starts.append(s)
            s -= self.slide_us
        starts.reverse()
        return starts


def page_kind(event_type: str, page: str) -> str:
    """The step a path is made of: home, category, product, search, cart, checkout, error."""
    if event_type == "page_view":
        if page == "/" or page == "":
            return "home"
        for prefix, kind in _PAGE_KINDS:
            if page.startswith(prefix):
                return kind
        return "other"
    return _EVENT_STEPS.get(event_type, "other")


_PAGE_KINDS = (
    ("/product/", "product"),
    ("/category/", "category"),
    ("/search", "search"),
    ("/cart", "cart"),
    ("/checkout", "checkout"),
)
_EVENT_STEPS = {
    "search": "search",
    "add_to_cart": "cart",
    "remove_from_cart": "cart",
    "purchase": "checkout",
    "error": "error",
}
_FUNNEL_CODE = {"add_to_cart": 1, "purchase": 2}


def funnel_stage(steps: Iterable[tuple[int, str, int]]) -> int:
    """0..3: how far a session got through view -> cart -> purchase, in (time, id) order."""
    stage = 0
    for _, _, code in sorted(steps):
        if code == stage:
            stage += 1
            if stage == 3:
                break
    return stage


class Window:
    """The running aggregates of one window."""

    __slots__ = ("traffic", "segments", "products", "users", "funnel")

    def __init__(self) -> None:
        self.traffic: dict[str, int] = {}
        self.segments: dict[tuple[str, str, str], int] = {}
        self.products: dict[str, list] = {}  # product -> [category, views, carts, purchases, cents]
        self.users: set[str] = set()
        self.funnel: dict[tuple[str, str], list[tuple[int, str, int]]] = {}

    def __getstate__(self):
        return (self.traffic, self.segments, self.products, self.users, self.funnel)

    def __setstate__(self, state):
        self.traffic, self.segments, self.products, self.users, self.funnel = state


@dataclass
class JobState:
    """Everything the job carries from one batch to the next (saved per batch id)."""

    batch_id: int = -1
    max_us: int | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    quarantine: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # event_id -> event time
    windows: dict[int, Window] = field(default_factory=dict)
    sessions: dict[tuple[str, str], list[list[int]]] = field(default_factory=dict)
    paths: dict[tuple[str, str], list] = field(default_factory=dict)  # [last, pending]
    path_counts: dict[int, dict[tuple[str, str], int]] = field(default_factory=dict)
    first_window: int | None = None
    next_detect: int | None = None
    detector: dict | None = None  # AnomalyDetector state (open alerts included)

    def watermark(self, delay_us: int) -> int | None:
        return None if self.max_us is None else self.max_us - delay_us


@dataclass
class BatchResult:
    """What one batch produced: store rows, topic messages, and numbers for health/progress."""

    rows: dict[str, list[dict]]
    alerts: list[dict]
    quarantined: list[tuple[str, int, int, bytes | None]]  # reason, partition, offset, value
    records: int = 0
    accepted: int = 0
    late: int = 0
    duplicates: int = 0
    invalid: int = 0
    watermark_us: int | None = None
    max_us: int | None = None


class Engine:
    """The per-batch logic, pure Python: `process(state, records)` updates state, returns rows.

    Independent of Spark, so it can be unit-tested and reasoned about on its own; the Spark
    job feeds it micro-batches of (partition, offset, value).
    """

    def __init__(
        self,
        spec: Spec,
        detector: DetectorConfig | None = None,
        categories: dict[str, str] | None = None,
        max_ahead: timedelta = events.DEFAULT_MAX_AHEAD,
    ) -> None:
        self.spec = spec
        self.detector_config = detector or DetectorConfig()
        if categories is None:
            from clickstream.simulator import load_catalogue

            categories = {p.product_id: p.category for p in load_catalogue()}
        self.categories = categories
        self.max_ahead = max_ahead
        self._iso: dict[int, str] = {}

    def process(
        self,
        state: JobState,
        records: Iterable[tuple[int, int, Any]],
        now: datetime | None = None,
    ) -> BatchResult:
        """Apply one micro-batch of (partition, offset, raw value) in offset order.

        `now` is the batch's clock (Spark's batch timestamp, the same when a batch is replayed):
        event times more than `max_ahead` past it, or before 2000, are quarantined."""
        now = now or datetime.now(UTC)
        spec = self.spec
        wm = state.watermark(spec.delay_us)
        counters = state.counters
        result = BatchResult(rows={}, alerts=[], quarantined=[])
        touched: set[int] = set()
        reasons: set[str] = set()
        batch_max = state.max_us
        for partition, offset, value in sorted(records, key=lambda r: (r[0], r[1])):
            result.records += 1
            event, reason = events.parse_value(value)
            if reason is not None:
                state.quarantine[reason] = state.quarantine.get(reason, 0) + 1
                reasons.add(reason)
                result.invalid += 1
                result.quarantined.append((reason, partition, offset, value))
                continue
            when = events.parse_event_time(event["event_time"])
            reason = events.event_time_range_reason(when, now, self.max_ahead)
            if reason is not None:
                state.quarantine[reason] = state.quarantine.get(reason, 0) + 1
                reasons.add(reason)
                result.invalid += 1
                result.quarantined.append((reason, partition, offset, value))
                continue
            t = to_us(when)
            if batch_max is None or t > batch_max:
                batch_max = t
            if wm is not None and t < wm:
                result.late += 1
                continue
            event_id = event["event_id"]
            if event_id in state.seen:
                result.duplicates += 1
                continue
            state.seen[event_id] = t
            result.accepted += 1
            self._add(state, event, t, touched)
        counters["records"] += result.records
        counters["quarantined"] += result.invalid
        counters["late_dropped"] += result.late
        counters["duplicates_removed"] += result.duplicates
        counters["events"] += result.accepted
        state.max_us = batch_max
        new_wm = state.watermark(spec.delay_us)
        result.max_us, result.watermark_us = batch_max, new_wm
        rows = result.rows
        self._window_rows(state, touched, rows)
        if new_wm is not None:
            self._advance(state, new_wm, rows, result)
        rows["quarantine"] = [{"reason": r, "count": state.quarantine[r]} for r in sorted(reasons)]
        rows["counters"] = [{"name": n, "value": v} for n, v in counters.items()]
        return result

    # -- one accepted event --------------------------------------------------------------------
    def _add(self, state: JobState, event: dict, t: int, touched: set[int]) -> None:
        spec = self.spec
        event_type, page = event["event_type"], event["page"]
        user, session = event["user_id"], event["session_id"]
        product = event.get("product_id")
        if product:
            category = self.categories.get(product, MISSING)
        elif page.startswith("/category/"):
            category = page[len("/category/") :] or MISSING
        else:
            category = MISSING
        segment = (event.get("country") or MISSING, event.get("device") or MISSING, category)
        if event_type == "page_view":
            code = 0 if product else None
        else:
            code = _FUNNEL_CODE.get(event_type)
        event_id = event["event_id"]
        starts = spec.window_starts(t)
        if state.first_window is None or starts[0] < state.first_window:
            state.first_window = starts[0]
        for start in starts:
            window = state.windows.get(start)
            if window is None:
                window = state.windows[start] = Window()
            touched.add(start)
            window.traffic[event_type] = window.traffic.get(event_type, 0) + 1
            window.segments[segment] = window.segments.get(segment, 0) + 1
            window.users.add(user)
            if product and event_type in ("page_view", "add_to_cart", "purchase"):
                stats = window.products.get(product)
                if stats is None:
                    stats = window.products[product] = [category, 0, 0, 0, 0]
                if event_type == "page_view":
                    stats[1] += 1
                elif event_type == "add_to_cart":
                    stats[2] += 1
                else:
                    stats[3] += 1
                    price = event.get("price")
                    stats[4] += round(price * 100) if price is not None else 0
            if code is not None:
                window.funnel.setdefault((user, session), []).append((t, event_id, code))
        self._add_to_session(state, (user, session), t)
        path = state.paths.get((user, session))
        if path is None:
            path = state.paths[(user, session)] = [None, []]
        path[1].append((t, event_id, page_kind(event_type, page)))

    def _add_to_session(self, state: JobState, key: tuple[str, str], t: int) -> None:
        """Merge t into the key's open gap-sessions, as session windows merge."""
        gap = self.spec.gap_us
        merged = [t, t, 1]
        remaining = state.sessions.get(key, [])
        changed = True
        while changed:
            changed, keep = False, []
            for s in remaining:
                if s[0] < merged[1] + gap and merged[0] < s[1] + gap:
                    merged = [min(merged[0], s[0]), max(merged[1], s[1]), merged[2] + s[2]]
                    changed = True
                else:
                    keep.append(s)
            remaining = keep
        remaining.append(merged)
        remaining.sort()
        state.sessions[key] = remaining

    # -- rows of the windows a batch changed -----------------------------------------------------
    def _window_rows(self, state: JobState, touched: set[int], rows: dict[str, list]) -> None:
        size = self.spec.window_us
        traffic, segments, products, users, funnel, errors = ([] for _ in range(6))
        for start in sorted(touched):
            w = state.windows[start]
            bounds = {
                "window_start": _iso(start, self._iso),
                "window_end": _iso(start + size, self._iso),
            }
            for event_type, n in sorted(w.traffic.items()):
                traffic.append({**bounds, "event_type": event_type, "count": n})
            for (country, device, category), n in sorted(w.segments.items()):
                segments.append(
                    {
                        **bounds,
                        "country": country,
                        "device": device,
                        "category": category,
                        "count": n,
                    }
                )
            for product, (category, views, carts, purchases, cents) in sorted(w.products.items()):
                products.append(
                    {
                        **bounds,
                        "product_id": product,
                        "category": category,
                        "views": views,
                        "carts": carts,
                        "purchases": purchases,
                        "revenue": cents / 100,
                    }
                )
            users.append({**bounds, "users": len(w.users)})
            stages = [funnel_stage(steps) for steps in w.funnel.values()]
            funnel.append(
                {
                    **bounds,
                    "viewed": sum(s >= 1 for s in stages),
                    "carted": sum(s >= 2 for s in stages),
                    "purchased": sum(s >= 3 for s in stages),
                }
            )
            total = sum(w.traffic.values())
            bad = w.traffic.get("error", 0)
            errors.append({**bounds, "events": total, "errors": bad, "error_rate": bad / total})
        rows.update(
            traffic=traffic,
            segments=segments,
            products=products,
            active_users=users,
            funnel=funnel,
            errors=errors,
        )

    # -- the watermark moves: finalise what it passed ------------------------------------------
    def _advance(self, state: JobState, wm: int, rows: dict[str, list], result) -> None:
        spec = self.spec
        size, gap = spec.window_us, spec.gap_us
        # Paths: events below the watermark are final, so their order is too.
        path_touched: set[int] = set()
        for key in list(state.paths):
            last, pending = state.paths[key]
            if pending:
                pending.sort()
                i = 0
                while i < len(pending) and pending[i][0] < wm:
                    step = pending[i]
                    if last is not None and step[0] - last[0] < gap:
                        transition = (last[2], step[2])
                        for start in spec.window_starts(step[0]):
                            counts = state.path_counts.get(start)
                            if counts is None:
                                counts = state.path_counts[start] = {}
                            counts[transition] = counts.get(transition, 0) + 1
                            path_touched.add(start)
                    last = step
                    i += 1
                pending = pending[i:]
                state.paths[key] = [last, pending]
            if not pending and last is not None and last[0] + gap <= wm:
                del state.paths[key]
        rows["paths"] = [
            {
                "window_start": _iso(start, self._iso),
                "window_end": _iso(start + size, self._iso),
                "from_page": a,
                "to_page": b,
                "count": n,
            }
            for start in sorted(path_touched)
            for (a, b), n in sorted(state.path_counts[start].items())
        ]
        for start in [s for s in state.path_counts if s + size <= wm]:
            del state.path_counts[start]
        # Sessions whose end (last event + gap) the watermark passed can no longer grow.
        closed = []
        for key in list(state.sessions):
            open_ = []
            for s in state.sessions[key]:
                if s[1] + gap <= wm:
                    closed.append((key, s))
                else:
                    open_.append(s)
            if open_:
                state.sessions[key] = open_
            else:
                del state.sessions[key]
        rows["sessions"] = [
            {
                "window_start": _iso(s[0]),
                "window_end": _iso(s[1] + gap),
                "user_id": user,
                "session_id": session,
                "duration_s": (s[1] - s[0]) / _US,
                "events": s[2],
            }
            for (user, session), s in sorted(closed, key=lambda x: (x[1][0], x[0]))
        ]
        # Closed windows feed the anomaly detector in window order, empty ones included.
        if state.next_detect is None and state.first_window is not None:
            state.next_detect = state.first_window
        changed: dict[str, dict] = {}
        if state.next_detect is not None and state.next_detect + size <= wm:
            detector = AnomalyDetector(self.detector_config, state.detector)
            start = state.next_detect
            while start + size <= wm:
                w = state.windows.get(start)
                n = sum(w.traffic.values()) if w else 0
                e = w.traffic.get("error", 0) if w else 0
                for alert in detector.update(start, start + size, n, e):
                    changed[alert.alert_id] = alert.row()
                    result.alerts.append(alert.row())
                start += spec.slide_us
            state.next_detect = start
            state.detector = detector.state()
        rows["alerts"] = [changed[k] for k in sorted(changed)]
        for start in [s for s in state.windows if s + size <= wm]:
            del state.windows[start]
        # An id older than the watermark cannot come back without being dropped as late.
        state.seen = {k: t for k, t in state.seen.items() if t >= wm}


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamConfig:
    """What `clickstream stream` runs. `StreamConfig.create(...)` fills defaults from settings."""

    topic: str
    bootstrap_servers: str
    store_url: str
    checkpoint: Path
    window: str = "1 minute"
    slide: str | None = None
    watermark: str = "2 minutes"
    session_gap: str = "30 minutes"
    trigger: str = "1 second"
    available_now: bool = False
    max_offsets_per_trigger: int | None = None
    alerts_topic: str | None = DEFAULT_ALERTS_TOPIC
    quarantine_topic: str | None = DEFAULT_QUARANTINE_TOPIC
    master: str | None = None
    reset: bool = False
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    @classmethod
    def create(cls, settings: Settings | None = None, **options) -> StreamConfig:
        """Defaults from settings; None options keep the default. The checkpoint defaults to
        one directory per topic and store, so two stores never share one."""
        settings = settings or get_settings()
        options = {k: v for k, v in options.items() if v is not None}
        topic = options.pop("topic", settings.topic)
        bootstrap = options.pop("bootstrap_servers", settings.bootstrap_servers)
        store_url = options.pop("store_url", settings.default_store_url)
        checkpoint = options.pop("checkpoint", None)
        if checkpoint is None:
            digest = hashlib.sha1(store_url.encode()).hexdigest()[:10]
            checkpoint = settings.checkpoint_root / "stream" / f"{topic}-{digest}"
        return cls(
            topic=topic,
            bootstrap_servers=bootstrap,
            store_url=store_url,
            checkpoint=Path(checkpoint),
            **options,
        )

    def spec(self) -> Spec:
        """The event-time settings, checked."""
        window = duration_us(self.window, "--window")
        slide = duration_us(self.slide, "--slide") if self.slide else window
        delay = duration_us(self.watermark, "--watermark")
        gap = duration_us(self.session_gap, "--session-gap")
        if window < _US or window % _US or slide % _US or slide < _US:
            raise StreamJobError(
                f"--window {self.window!r} and --slide {self.slide!r} must be whole seconds "
                "(at least 1 second): the store keys windows by their start in seconds."
            )
        if slide > window:
            raise StreamJobError(f"--slide {self.slide!r} is longer than --window {self.window!r}.")
        if gap < _US:
            raise StreamJobError(f"--session-gap {self.session_gap!r} must be at least 1 second.")
        return Spec(window_us=window, slide_us=slide, delay_us=delay, gap_us=gap)

    def identity(self) -> dict:
        """What a checkpoint is bound to: reusing it with other values would mix results."""
        spec = self.spec()
        return {
            "topic": self.topic,
            "store_url": self.store_url,
            "window_us": spec.window_us,
            "slide_us": spec.slide_us,
            "watermark_us": spec.delay_us,
            "session_gap_us": spec.gap_us,
            "state_version": STATE_VERSION,
        }


# -- state files in the checkpoint -------------------------------------------------------------
class StateFiles:
    """JobState after batch N, saved as `state/N` (atomically) next to Spark's checkpoint."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def path(self, batch_id: int) -> Path:
        return self.dir / str(batch_id)

    def exists(self, batch_id: int) -> bool:
        return batch_id < 0 or self.path(batch_id).exists()

    def load(self, batch_id: int) -> JobState:
        if batch_id < 0:
            return JobState()
        path = self.path(batch_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointMismatchError(
                f"The job's state after batch {batch_id} is missing from {self.dir}, so batch "
                f"{batch_id + 1} cannot be computed exactly. Start over with "
                "`clickstream stream --reset`."
            ) from None
        header, _, body = data.partition(b"\n")
        if header != f"clickstream-state v{STATE_VERSION}".encode():
            raise CheckpointMismatchError(
                f"{path} was written by another version of the streaming job ({header[:40]!r}). "
                "Start over with `clickstream stream --reset`."
            )
        state = pickle.loads(body)
        state.batch_id = batch_id
        return state

    def save(self, state: JobState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(state.batch_id)
        tmp = path.with_name(f".{path.name}.tmp")
        header = f"clickstream-state v{STATE_VERSION}\n".encode()
        tmp.write_bytes(header + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one

    def prune(self, keep_from: int) -> None:
        """Delete states older than `keep_from` (the newest two are all a restart needs)."""
        for item in self.dir.glob("*"):
            if item.name.isdigit() and int(item.name) < keep_from:
                item.unlink(missing_ok=True)


# -- Spark's checkpoint, read before Spark starts ------------------------------------------------
def _log_ids(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def checkpoint_offsets(spark_dir: Path) -> tuple[int | None, dict, int | None]:
    """(last planned batch, its Kafka offsets {topic: {partition: offset}}, last committed)."""
    planned = _log_ids(spark_dir / "offsets")
    committed = _log_ids(spark_dir / "commits")
    offsets: dict = {}
    if planned:
        lines = (spark_dir / "offsets" / str(planned[-1])).read_text().splitlines()
        for line in lines[2:]:
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                offsets.update(parsed)
    return (planned[-1] if planned else None), offsets, (committed[-1] if committed else None)


def batch_clock(spark_dir: Path, batch_id: int) -> datetime | None:
    """The batch's timestamp as Spark recorded it in its offset log before running the batch,
    so a replayed batch sees the same clock (None if the log cannot be read)."""
    try:
        lines = (spark_dir / "offsets" / str(batch_id)).read_text().splitlines()
        millis = json.loads(lines[1])["batchTimestampMs"]
    except (OSError, IndexError, ValueError, KeyError, TypeError):
        return None
    return datetime.fromtimestamp(millis / 1000, UTC)


def batch_end_offsets(spark_dir: Path, batch_id: int, topic: str) -> dict[int, int] | None:
    """The Kafka offsets batch `batch_id` reads up to (Spark plans them before running it)."""
    try:
        lines = (spark_dir / "offsets" / str(batch_id)).read_text().splitlines()
    except OSError:
        return None
    for line in lines[2:]:
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict) and topic in parsed:
            return {int(p): int(o) for p, o in parsed[topic].items()}
    return None


# -- the job -----------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a run did (this process only)."""

    batches: int = 0
    skipped: int = 0
    records: int = 0
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    watermark: str | None = None
    max_event_time: str | None = None

    def line(self) -> str:
        c = self.counters
        return (
            f"{self.batches} batches ({self.skipped} already in the store), {self.records:,} "
            f"records in {self.seconds:.1f} s; totals: {c.get('events', 0):,} events counted, "
            f"{c.get('quarantined', 0):,} quarantined, {c.get('late_dropped', 0):,} late, "
            f"{c.get('duplicates_removed', 0):,} duplicates; watermark {self.watermark or '-'}"
        )


class StreamJob:
    """The streaming job. `start()` returns a handle (stop, await_termination); see also
    `run_available_now`. Pass `spark` to reuse a session (notebooks, tests)."""

    def __init__(
        self,
        config: StreamConfig,
        spark=None,
        echo: Callable[[str], Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.config = config
        self.spec = config.spec()
        self.engine = engine or Engine(self.spec, config.detector)
        self.spark = spark
        self.echo = echo or (lambda message: None)
        self.checkpoint = Path(config.checkpoint)
        self.spark_dir = self.checkpoint / "spark"
        self.states = StateFiles(self.checkpoint / "state")
        self.store: Store | None = None
        self.summary = RunSummary()
        self._state: JobState | None = None
        self._producer = None
        self._consumer = None
        self._last_started: float | None = None
        self._applied: int | None = None  # the store's last batch of this job
        self._began = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> StreamHandle:
        """Check the checkpoint against the topic and store, then start the Spark query."""
        from clickstream.pipeline import read_kafka

        self.store = open_store(self.config.store_url)
        try:
            if self.config.reset:
                self.reset()
            self.preflight()
        except BaseException:
            self.close()
            raise
        spark = self.spark
        if spark is None:
            from clickstream.spark import get_spark

            self.echo("starting Spark...")
            spark = self.spark = get_spark("clickstream-stream", master=self.config.master)
        self.store.use_spark(spark)  # PostgreSQL: batches go in through Spark's JDBC writer
        raw = read_kafka(
            spark,
            self.config.topic,
            self.config.bootstrap_servers,
            starting_offsets="earliest",
            max_offsets_per_trigger=self.config.max_offsets_per_trigger,
            # The preflight check explains a changed topic; at run time, fail rather than skip.
            options={"failOnDataLoss": "true"},
        )
        writer = (
            raw.select("partition", "offset", "value")
            .writeStream.foreachBatch(self._on_batch)
            .option("checkpointLocation", str(self.spark_dir))
        )
        if self.config.available_now:
            writer = writer.trigger(availableNow=True)
        else:
            trigger_ms = max(1, duration_us(self.config.trigger, "--trigger") // 1000)
            writer = writer.trigger(processingTime=f"{trigger_ms} milliseconds")
        self._began = time.monotonic()
        query = writer.start()
        return StreamHandle(self, query)

    def reset(self) -> None:
        """Delete the checkpoint and the store's contents (start over)."""
        if self.checkpoint.exists():
            ours = {"job.json", "spark", "state"}
            found = {p.name for p in self.checkpoint.iterdir()}
            if found - ours:
                # Never delete a directory the job did not make (a mistyped --checkpoint).
                raise StreamJobError(
                    f"{self.checkpoint} holds files the streaming job did not write "
                    f"({', '.join(sorted(found - ours)[:3])}); not deleting it. Check "
                    "--checkpoint, or delete the directory yourself."
                )
            shutil.rmtree(self.checkpoint)
        store = self.store or open_store(self.config.store_url)
        store.reset()
        self.echo(f"reset: deleted {self.checkpoint} and the contents of {self.config.store_url}")

    def close(self) -> None:
        for resource in (self._producer, self._consumer):
            if resource is not None:
                try:
                    resource.close()
                except Exception:  # noqa: BLE001 - closing must not hide the real outcome
                    pass
        self._producer = self._consumer = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- checks before Spark starts ------------------------------------------------------------
    def preflight(self) -> None:
        """Refuse to run on a checkpoint that does not match the topic, settings or store."""
        from clickstream.kafka_io import ensure_topic

        cfg = self.config
        if self.store is None:
            self.store = open_store(cfg.store_url)
        identity = cfg.identity()
        meta_path = self.checkpoint / "job.json"
        if meta_path.exists():
            try:
                saved = json.loads(meta_path.read_text())
            except ValueError:
                saved = {}
            diffs = [
                f"{k} {saved.get(k)!r} (now {v!r})"
                for k, v in identity.items()
                if saved.get(k) != v
            ]
            if diffs:
                raise CheckpointMismatchError(
                    f"The checkpoint {self.checkpoint} was made with other settings: "
                    f"{'; '.join(diffs)}. Its offsets and state would mix with this run's. Use "
                    "`clickstream stream --reset` to start over (this deletes the checkpoint and "
                    "the store's contents), or give this run its own --checkpoint DIR."
                )
        offsets = self._topic_offsets(cfg.topic)
        planned, saved_offsets, committed = checkpoint_offsets(self.spark_dir)
        if not offsets:
            if planned is not None:
                raise CheckpointMismatchError(
                    f"Topic {cfg.topic} does not exist at {cfg.bootstrap_servers}, but the "
                    f"checkpoint {self.checkpoint} has read it up to batch {planned}: was it "
                    "deleted? Start over with `clickstream stream --reset`."
                )
            if cfg.available_now:
                raise StreamJobError(
                    f"Topic {cfg.topic} does not exist at {cfg.bootstrap_servers}: there is "
                    f"nothing to read. Produce to it first (`clickstream produce --topic "
                    f"{cfg.topic}`)."
                )
            ensure_topic(cfg.topic, bootstrap=cfg.bootstrap_servers)
            self.echo(f"created topic {cfg.topic}; waiting for events")
        if saved_offsets:
            self._check_offsets(saved_offsets, offsets)
        stored = self.store.last_batch(JOB)
        self._applied = stored
        s = -1 if stored is None else stored
        c = -1 if committed is None else committed
        p = -1 if planned is None else planned
        if not c <= s <= max(p, c):
            if s < 0:
                problem = (
                    f"the store {cfg.store_url} holds no results, but the checkpoint says "
                    f"batches up to {c} were written to it"
                )
            elif p < 0:
                problem = (
                    f"the store {cfg.store_url} holds results up to batch {s} of an earlier run, "
                    "but the checkpoint is new"
                )
            else:
                problem = (
                    f"the store {cfg.store_url} holds batches up to {s}, the checkpoint "
                    f"{self.checkpoint} has committed {c}"
                )
            raise CheckpointMismatchError(
                f"The store and the checkpoint disagree: {problem}. Continuing would count "
                "events twice or not at all. Start over with `clickstream stream --reset`."
            )
        if s >= 0 and not self.states.exists(s):
            raise CheckpointMismatchError(
                f"The job's state for batch {s} is missing from {self.states.dir}. Start over "
                "with `clickstream stream --reset`."
            )
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(identity, indent=2) + "\n")
        for topic in (cfg.alerts_topic, cfg.quarantine_topic):
            if topic:
                ensure_topic(topic, partitions=1, bootstrap=cfg.bootstrap_servers)

    def _topic_offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        from clickstream.kafka_io import _bootstrap_errors, topic_offsets, unreachable

        try:
            return topic_offsets(topic, self.config.bootstrap_servers)
        except _bootstrap_errors():
            raise unreachable(self.config.bootstrap_servers) from None

    def _check_offsets(self, saved: dict, offsets: dict[int, tuple[int, int]]) -> None:
        topic = self.config.topic
        if topic not in saved:
            raise CheckpointMismatchError(
                f"The checkpoint {self.checkpoint} holds offsets of topic(s) "
                f"{', '.join(sorted(saved))}, not {topic}. Use `clickstream stream --reset` or "
                "another --checkpoint DIR."
            )
        for part, offset in sorted((int(p), int(o)) for p, o in saved[topic].items()):
            if part not in offsets:
                raise CheckpointMismatchError(
                    f"The checkpoint has read partition {part} of {topic}, which the topic no "
                    "longer has: it was deleted and re-created. Start over with "
                    "`clickstream stream --reset`."
                )
            earliest, latest = offsets[part]
            if offset > latest:
                raise CheckpointMismatchError(
                    f"The checkpoint has read {topic} partition {part} up to offset {offset}, "
                    f"but the topic ends at {latest}: it was deleted and re-created since. Start "
                    "over with `clickstream stream --reset`."
                )
            if offset < earliest:
                raise CheckpointMismatchError(
                    f"Records {offset}..{earliest - 1} of {topic} partition {part} were deleted "
                    "(retention) before the job read them, so its results cannot be exact. "
                    "Start over with `clickstream stream --reset`."
                )

    # -- one micro-batch -----------------------------------------------------------------------
    def _on_batch(self, df, batch_id: int) -> None:
        try:
            self._run_batch(df, batch_id)
        except Exception:
            self._state = None  # may be half-updated: reload from its file next time
            raise

    def _run_batch(self, df, batch_id: int) -> None:
        started = time.time()
        # This job is the store's only writer, so the last applied batch is known after the
        # preflight check and after each write.
        stored = self._applied
        if stored is not None and stored >= batch_id:
            # A batch replayed after a restart that the store already holds: nothing to do.
            self._state = None
            self.summary.skipped += 1
            self.echo(f"batch {batch_id}: already in the store (replayed after a restart)")
            return
        state = self._state
        if state is None or state.batch_id != batch_id - 1:
            state = self.states.load(batch_id - 1)
        table = df.toArrow()
        records = zip(
            table.column("partition").to_pylist(),
            table.column("offset").to_pylist(),
            table.column("value").to_pylist(),
            strict=True,
        )
        result = self.engine.process(state, records, batch_clock(self.spark_dir, batch_id))
        state.batch_id = batch_id
        self._publish(result)
        self.states.save(state)
        health = self._health(batch_id, result, started)
        self.store.write_batch(JOB, batch_id, result.rows, health)
        self._applied = batch_id
        self.states.prune(batch_id - 1)
        self._state = state
        self._last_started = started
        self._update_summary(result, state)
        self.echo(
            f"batch {batch_id}: {result.records:,} records ({result.invalid} quarantined, "
            f"{result.late} late, {result.duplicates} duplicates) in "
            f"{health['duration_ms'] / 1000:.2f} s; watermark {health['watermark'] or '-'}; "
            f"lag {health['lag'] if health['lag'] is not None else '-'}"
        )

    def _update_summary(self, result: BatchResult, state: JobState) -> None:
        s = self.summary
        s.batches += 1
        s.records += result.records
        s.counters = dict(state.counters)
        s.watermark = _iso(result.watermark_us) if result.watermark_us is not None else None
        s.max_event_time = _iso(result.max_us) if result.max_us is not None else None
        s.seconds = time.monotonic() - self._began

    def _health(self, batch_id: int, result: BatchResult, started: float) -> dict:
        seconds = max(time.time() - started, 1e-6)
        since_last = started - self._last_started if self._last_started else None
        return {
            "input_rows": result.records,
            "duration_ms": round(seconds * 1000, 1),
            "input_rate": result.records / since_last if since_last else None,
            "processing_rate": result.records / seconds,
            "max_event_time": _iso(result.max_us) if result.max_us is not None else None,
            "watermark": _iso(result.watermark_us) if result.watermark_us is not None else None,
            "lag": self._lag(batch_id),
        }

    def _lag(self, batch_id: int) -> int | None:
        """Records in the topic beyond this batch's end offsets."""
        done = batch_end_offsets(self.spark_dir, batch_id, self.config.topic)
        if done is None:
            return None
        try:
            if self._consumer is None:
                from kafka import KafkaConsumer

                self._consumer = KafkaConsumer(
                    bootstrap_servers=self.config.bootstrap_servers,
                    client_id="clickstream-stream-lag",
                    enable_auto_commit=False,
                )
            from kafka import TopicPartition

            tps = [TopicPartition(self.config.topic, p) for p in sorted(done)]
            latest = self._consumer.end_offsets(tps)
        except Exception:  # noqa: BLE001 - lag is informative; never fail a batch over it
            return None
        return sum(max(0, latest[tp] - done[tp.partition]) for tp in tps)

    def _publish(self, result: BatchResult) -> None:
        """Alerts and quarantined records to their topics (at-least-once, before the store)."""
        cfg = self.config
        messages = []
        if cfg.alerts_topic:
            for alert in result.alerts:
                value = {**alert, "source_topic": cfg.topic}
                messages.append((cfg.alerts_topic, alert["alert_id"], value))
        if cfg.quarantine_topic:
            for reason, partition, offset, raw in result.quarantined:
                value = {
                    "reason": reason,
                    "source_topic": cfg.topic,
                    "partition": partition,
                    "offset": offset,
                }
                try:
                    value["value"] = raw.decode("utf-8") if raw is not None else None
                except UnicodeDecodeError:
                    import base64

                    value["value_base64"] = base64.b64encode(raw).decode("ascii")
                messages.append((cfg.quarantine_topic, f"{cfg.topic}:{partition}:{offset}", value))
        if not messages:
            return
        if self._producer is None:
            from clickstream.kafka_io import make_producer

            self._producer = make_producer(cfg.bootstrap_servers)
        failures: list[BaseException] = []
        for topic, key, value in messages:
            self._producer.send(
                topic, key=key.encode(), value=events.to_json_bytes(value)
            ).add_errback(failures.append)
        self._producer.flush()
        if failures:
            raise StreamJobError(
                f"{len(failures)} alert/quarantine messages could not be sent: {failures[0]}"
            )


class StreamHandle:
    """A running job: `stop()`, `await_termination()`, `process_all_available()`."""

    def __init__(self, job: StreamJob, query) -> None:
        self.job = job
        self.query = query

    @property
    def active(self) -> bool:
        return self.query.isActive

    @property
    def summary(self) -> RunSummary:
        return self.job.summary

    def await_termination(self, timeout: float | None = None) -> bool:
        """Wait for the query to end (True) or the timeout (False); raise if it failed."""
        try:
            if timeout is None:
                self.query.awaitTermination()
                ended = True
            else:
                ended = bool(self.query.awaitTermination(timeout))
        except Exception as exc:  # noqa: BLE001 - StreamingQueryException and Py4J errors
            self.job.close()
            raise explain_failure(exc, self.job.config) from exc
        if ended:
            self.job.close()
        return ended

    def process_all_available(self) -> None:
        try:
            self.query.processAllAvailable()
        except Exception as exc:  # noqa: BLE001
            raise explain_failure(exc, self.job.config) from exc

    def stop(self) -> None:
        """Stop the query (the current batch finishes first) and release connections."""
        try:
            self.query.stop()
        finally:
            self.job.close()

    def __enter__(self) -> StreamHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# What Spark's Kafka source says when the topic lost records the checkpoint expected.
_DATA_LOSS = (
    "KAFKA_DATA_LOSS",
    "may have been lost",
    "offset was changed",
    "OffsetOutOfRange",
    "LOST_TOPIC_PARTITIONS",
    "KAFKA_START_OFFSET_DOES_NOT_MATCH_ASSIGNED",
)


def explain_failure(exc: BaseException, config: StreamConfig) -> ClickstreamError:
    """A failed query's exception -> one clear message (the cause, then what to do)."""
    text = str(exc)
    for marker in ("ClickstreamError", "StreamJobError", "StoreError", "CheckpointMismatchError"):
        if marker in text:
            # Our own error raised inside foreachBatch: show its message, not Spark's wrapping.
            found = re.search(rf"{marker}\w*: (.+)", text)
            if found:
                return StreamJobError(f"The streaming job stopped: {found.group(1).strip()}")
    if any(marker in text for marker in _DATA_LOSS):
        return CheckpointMismatchError(
            f"The streaming job stopped: topic {config.topic} no longer has the records its "
            "checkpoint expects (deleted, re-created, or expired by retention). Start over with "
            "`clickstream stream --reset`."
        )
    if "TimeoutException" in text or "NoBrokersAvailable" in text:
        return StreamJobError(
            f"The streaming job stopped: Kafka at {config.bootstrap_servers} did not answer in "
            "time. Is the broker running (`clickstream broker status`)? Restarted, the job "
            "resumes from its checkpoint and loses nothing."
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return StreamJobError(
        f"The streaming job stopped: {first[:500]} (run with --debug for the full trace)."
    )


def start(config: StreamConfig, spark=None, echo=None) -> StreamHandle:
    """Start the job; stop it with the returned handle's `stop()`."""
    return StreamJob(config, spark=spark, echo=echo).start()


def run_available_now(
    config: StreamConfig | None = None, spark=None, echo=None, **options
) -> RunSummary:
    """Process everything the topic holds now, then return (tests, notebooks, backfills).

    `options` are StreamConfig fields (topic, store_url, window, ...) used when `config` is None.
    """
    if config is None:
        config = StreamConfig.create(**options)
    config = replace(config, available_now=True)
    job = StreamJob(config, spark=spark, echo=echo)
    handle = job.start()
    handle.await_termination()
    job.summary.seconds = time.monotonic() - job._began
    return job.summary
