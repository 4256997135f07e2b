"""`clickstream bench dashboard`: what one dashboard refresh costs as history grows.

A scratch store is filled with N days of per-minute windows of every metric (shaped like the
simulator's traffic: 6 event types, 336 country x device x category segments, 100 products, 40
sessions and 12 page transitions per minute), their rollups, and a ledger holding a week of
batches at one per second. Then, for each time range the dashboard offers:

- *new batch*: a batch adds the next minute of every metric (untimed), then the refresh is
  timed: the dashboard's own path, which reads the range's grain (`clickstream.serve.rollups`) and
  re-reads only the windows the batch touched, merging them into what it holds; with the charts
  built and serialised too;
- *before*: the same refresh as the dashboard did it without rollups or merging: every window
  of the range re-read at one minute, measured in the same run as the reference.

And the refresh when no batch has landed (one query for the newest batch, against the week of
batches in the ledger).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from clickstream.bench.machine import machine_info, machine_line
from clickstream.dashboard import data as dd
from clickstream.redact import redact_url
from clickstream.serve.store import Store, open_store
from clickstream.times import iso

END = "2026-11-28T00:00:00Z"  # the filled history ends here; new batches come after it
WEEK_OF_BATCHES = 7 * 24 * 3600  # a week of batches at one per second
BENCH_RANGES = ("30 minutes", "6 hours", "24 hours", "7 days")
BEFORE_REPEATS = 3  # the reference re-reads whole ranges: a few runs are enough


class _Shape:
    """The fixed keys of a simulated minute: segments, products, pages."""

    def __init__(self):
        from clickstream.source.simulator import COUNTRIES, load_catalogue

        self.catalogue = load_catalogue()
        categories = sorted({p.category for p in self.catalogue})
        devices = ("desktop", "mobile", "tablet")
        self.segments = [(c, d, k) for c, _ in COUNTRIES for d in devices for k in categories]
        pages = ["/", "/search", "/cart", "/checkout"] + [f"/category/{c}" for c in categories]
        self.paths = list(zip(pages, pages[1:] + pages[:1], strict=True))


EVENT_TYPES = ("page_view", "search", "add_to_cart", "remove_from_cart", "purchase", "error")


def minute_rows(shape: _Shape, m: int, end: str = END) -> dict[str, list[dict]]:
    """Every metric's rows for minute `m` (0 = the first minute of the history)."""
    first = dd.to_datetime(end)
    start = first + timedelta(minutes=m)
    stop = start + timedelta(minutes=1)
    w = {"window_start": iso(start), "window_end": iso(stop)}
    base = 2000 + (m % 60) * 10
    return {
        "traffic": [
            {**w, "event_type": t, "count": base // (i + 1)} for i, t in enumerate(EVENT_TYPES)
        ],
        "segments": [
            {**w, "country": c, "device": d, "category": k, "count": 1 + (m + i) % 7}
            for i, (c, d, k) in enumerate(shape.segments)
        ],
        "products": [
            {
                **w,
                "product_id": p.product_id,
                "category": p.category,
                "views": 5 + (m + i) % 11,
                "carts": (m + i) % 4,
                "purchases": (m + i) % 2,
                "revenue": ((m + i) % 2) * p.price,
            }
            for i, p in enumerate(shape.catalogue)
        ],
        "active_users": [{**w, "users": 300 + m % 50}],
        "funnel": [{**w, "viewed": 250, "carted": 60 + m % 10, "purchased": 20 + m % 5}],
        "errors": [
            {**w, "events": base * 2, "errors": 10 + m % 5, "error_rate": (10 + m % 5) / base / 2}
        ],
        "sessions": [
            {
                "window_start": w["window_start"],
                "window_end": iso(stop + timedelta(minutes=5)),
                "user_id": f"u_{(m * 40 + s) % 500:04d}",
                "session_id": f"s_{m:05d}_{s:02d}",
                "duration_s": 30 + s * 7,
                "events": 3 + s % 9,
            }
            for s in range(40)
        ],
        "paths": [
            {**w, "from_page": a, "to_page": b, "count": 1 + (m + i) % 9}
            for i, (a, b) in enumerate(shape.paths)
        ],
    }


def _health(end_minute_iso: str, rows: int) -> dict:
    return {
        "input_rows": rows,
        "duration_ms": 800,
        "input_rate": 100.0,
        "processing_rate": 400.0,
        "max_event_time": end_minute_iso,
        "watermark": end_minute_iso,
        "lag": 0,
    }


def fill(
    store: Store,
    minutes: int,
    end: str = END,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write `minutes` minutes of every metric ending at `end`, an hour per batch, through
    `write_batch` (so with their rollups), plus alerts, quarantine and counters. Returns the
    rows written (rollups not counted)."""
    shape = _Shape()
    start_minute = -minutes
    written, batch = 0, {}
    for m in range(start_minute, 0):
        for name, items in minute_rows(shape, m, end).items():
            batch.setdefault(name, []).extend(items)
        if (m + 1) % 60 == 0 or m == -1:
            until = iso(dd.to_datetime(end) + timedelta(minutes=m + 1))
            store.write_batch("bench", m + minutes, batch, health=_health(until, 6000))
            written += sum(len(v) for v in batch.values())
            batch = {}
            if progress is not None:
                progress(m + minutes + 1)
    first = dd.to_datetime(end) - timedelta(minutes=minutes)
    store.write_batch(
        "bench",
        minutes,
        {
            "alerts": [
                {
                    "alert_id": f"a{i}",
                    "kind": "error_spike",
                    "status": "closed",
                    "opened_at": iso(first + timedelta(hours=i)),
                    "closed_at": iso(first + timedelta(hours=i, minutes=5)),
                    "peak": 0.2,
                    "baseline": 0.01,
                    "detail": "bench",
                }
                for i in range(0, minutes // 60, 6)
            ],
            "quarantine": [{"reason": "not_json", "count": 12}, {"reason": "bad_time", "count": 3}],
            "counters": [{"name": "late_dropped", "value": 7}, {"name": "duplicates", "value": 2}],
        },
        health=_health(end, 0),
    )
    return written


def fill_ledger(store: Store, batches: int, job: str = "bench-history") -> None:
    """`batches` ledger rows of an earlier job, one per second, committed before the filled
    history, inserted in bulk (one `write_batch` each would take minutes). A week of them is
    what a store that never pruned its ledger would hold (the stores keep the newest
    `serving.KEEP_BATCHES` per job): the no-change refresh must find the newest batch among
    them as fast as among a few."""
    before = time.time() - batches - 3600
    store.add_ledger_rows(
        {"job": job, "batch_id": i, "committed_at": before + i, "input_rows": 1}
        for i in range(batches)
    )


@dataclass
class BenchResult:
    store_url: str
    minutes: int
    rows: int
    ledger_batches: int
    fill_s: float
    timings_ms: dict[str, list[float]]
    before_ms: dict[str, list[float]]  # range label -> the reference refresh
    grains: dict[str, int | None] = field(default_factory=dict)
    rows_read: dict[str, int] = field(default_factory=dict)  # per range, a new-batch refresh
    reads: int = 0
    machine: str = ""

    @staticmethod
    def _median(values: list[float]) -> float:
        return statistics.median(values)

    def median(self, name: str) -> float:
        return self._median(self.timings_ms[name])

    def p95(self, name: str) -> float:
        values = sorted(self.timings_ms[name])
        return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]

    def ratio(self, label: str) -> float | None:
        """How many times faster than the reference a new-batch refresh with charts is."""
        before = self.before_ms.get(label)
        now = self.timings_ms.get(f"new batch, range {label}: data")
        if not before or not now:
            return None
        return self._median(before) / self._median(now)

    def lines(self) -> list[str]:
        out = [
            f"store: {self.store_url} holding {self.minutes:,} per-minute windows of every metric "
            f"({self.rows:,} rows, and their rollups; filled in {self.fill_s:.1f} s) and a "
            f"ledger of {self.ledger_batches:,} batches",
        ]
        for name in self.timings_ms:
            out.append(
                f"  {name:<44} median {self.median(name):8.1f} ms   p95 {self.p95(name):8.1f} ms"
                f"   ({len(self.timings_ms[name])} runs)"
            )
        out.append("  before (every window of the range re-read at one minute, same run):")
        for label, values in self.before_ms.items():
            ratio = self.ratio(label)
            grain = self.grains.get(label)
            out.append(
                f"    range {label:<12} median {self._median(values):8.1f} ms   "
                f"({len(values)} runs)   now {ratio:,.1f}x faster, reading "
                f"{'1-minute windows' if grain is None else f'{grain}-minute rollups'}, "
                f"{self.rows_read.get(label, 0):,} rows per new batch"
            )
        out.append(f"  queries per refresh: {self.reads} after a new batch, 1 when nothing changed")
        out.append(f"machine: {self.machine}")
        return out

    def as_json(self) -> dict:
        return {
            "store": self.store_url,
            "minutes": self.minutes,
            "rows": self.rows,
            "ledger_batches": self.ledger_batches,
            "queries_per_refresh": self.reads,
            "median_ms": {k: round(self.median(k), 2) for k in self.timings_ms},
            "p95_ms": {k: round(self.p95(k), 2) for k in self.timings_ms},
            "before_median_ms": {k: round(self._median(v), 2) for k, v in self.before_ms.items()},
            "speedup": {k: round(self.ratio(k) or 0.0, 2) for k in self.before_ms},
            "grain_minutes": self.grains,
            "rows_read_per_new_batch": self.rows_read,
            "machine": self.machine,
        }


@contextmanager
def _scratch_store_url(store_url: str | None) -> Iterator[str]:
    """`store_url`, or without one a temporary SQLite store's, removed at the end."""
    if store_url is not None:
        yield store_url
        return
    with tempfile.TemporaryDirectory(prefix="clickstream-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'serving.db'}"


def _fill_history(
    writer: Store, minutes: int, ledger_batches: int, say: Callable[[str], None]
) -> tuple[int, float]:
    """`fill` and `fill_ledger`; the rows written and the seconds both took."""
    started = time.perf_counter()
    hours = max(1, minutes // 60)
    rows = fill(
        writer,
        minutes,
        progress=lambda done: (
            done % (24 * 60) == 0 and say(f"  {done // 60} of {hours} hours written")
        ),
    )
    fill_ledger(writer, ledger_batches)
    return rows, time.perf_counter() - started


class _Refreshes:
    """The timed refreshes of one run, into `result`: `writer` adds the batches, the
    dashboard's refreshes read through `reader`."""

    def __init__(self, writer: Store, reader: Store, result: BenchResult, repeats: int, figures):
        self.writer, self.reader, self.result = writer, reader, result
        self.repeats, self.figures = repeats, figures
        self.shape = _Shape()
        self.next_minute = 0
        self.snap: dd.Snapshot | None = None  # what the page holds

    def before(self, label: str, span: int) -> None:
        """The reference: the range's refresh without rollups or merging."""
        before = []
        for _ in range(BEFORE_REPEATS if span >= 360 else self.repeats):
            t0 = time.perf_counter()
            dd.load_snapshot(self.reader, minutes=span, rollups=False)
            before.append((time.perf_counter() - t0) * 1000)
        self.result.before_ms[label] = before

    def add_batch(self) -> None:
        """The next minute of every metric, as a batch of the live job (untimed)."""
        m = self.next_minute
        until = iso(dd.to_datetime(END) + timedelta(minutes=m + 1))
        self.writer.write_batch("live", m, minute_rows(self.shape, m), health=_health(until, 600))
        self.next_minute += 1

    def after_new_batches(self, label: str, span: int) -> None:
        """A batch, then the timed refresh (with the charts when `figures` is given), `repeats`
        times, starting from what the page holds when it opens."""
        snap = dd.load_snapshot(self.reader, minutes=span)
        data, total = [], []
        for _ in range(self.repeats):
            self.add_batch()
            t0 = time.perf_counter()
            snap = dd.load_snapshot(self.reader, minutes=span, previous=snap)
            t1 = time.perf_counter()
            if self.figures is not None:
                self.figures(snap)
            t2 = time.perf_counter()
            assert snap.incremental, "a new batch should only re-read what it touched"
            data.append((t1 - t0) * 1000)
            total.append((t2 - t0) * 1000)
        result = self.result
        result.timings_ms[f"new batch, range {label}: data"] = data
        if self.figures is not None:
            result.timings_ms[f"new batch, range {label}: data + charts"] = total
        result.grains[label] = snap.range.grain_min
        result.rows_read[label] = sum(snap.rows_read.values())
        result.reads = snap.reads
        self.snap = snap

    def without_new_batch(self) -> None:
        """The refresh when no batch has landed: one query for the newest batch."""
        idle = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            if self.snap is not None and dd.change_marker(self.reader) == self.snap.marker:
                dd.with_freshness(self.snap)
            idle.append((time.perf_counter() - t0) * 1000)
        self.result.timings_ms["no new batch (any range)"] = idle


def bench_refresh(
    store_url: str | None = None,
    minutes: int = 7 * 1440,
    repeats: int = 20,
    ranges: Iterable[str] = BENCH_RANGES,
    figures: Callable[[dd.Snapshot], object] | None = None,
    ledger_batches: int = WEEK_OF_BATCHES,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time dashboard refreshes over a store holding `minutes` per-minute windows.

    Without `store_url` a temporary SQLite store is used; a given store is emptied first
    (`Store.reset`). `figures(snapshot)`, when given, is timed too. Ranges longer than the
    history are left out.
    """
    say = progress or (lambda text: None)
    with _scratch_store_url(store_url) as url, open_store(url) as writer:
        writer.reset()
        rows, fill_s = _fill_history(writer, minutes, ledger_batches, say)
        with open_store(url, readonly=True) as reader:
            shown = redact_url(url)  # printed and in the JSON: never a password
            result = BenchResult(shown, minutes, rows, ledger_batches, fill_s, {}, {})
            refreshes = _Refreshes(writer, reader, result, repeats, figures)
            for label in ranges:
                span = dd.TIME_RANGES[label]
                if span > minutes:
                    continue
                say(f"  range {label}...")
                refreshes.before(label, span)
                refreshes.after_new_batches(label, span)
            refreshes.without_new_batch()
            result.machine = machine_line(machine_info())
    return result
