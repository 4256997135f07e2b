"""What the dashboard shows, computed from the serving store with plain functions.

`load_snapshot(store, ...)` is everything one refresh of the dashboard reads: a bounded number of
bounded queries (the newest window, then the chosen time range of each metric, the last batches'
health), whatever the history in the store. The functions that shape each panel's numbers take
rows or DataFrames, so tests can check them without Streamlit and the benchmark can time them.

Time ranges are in event time and end at the newest window in the store (a replayed day from
last week shows up as well as a live stream); freshness compares the last batch's commit time
with the wall clock. Windows are the job's tumbling windows (one minute by default).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from clickstream.process.stream import SESSIONS_JOB
from clickstream.serve.rollups import bucket, grain_for
from clickstream.serve.schema import SESSION_BANDS, table_name
from clickstream.serve.store import (
    Store,
    StoreError,
    StoreMissingError,
    StoreVersionError,
)
from clickstream.times import iso, parse_iso

# Choices offered by the dashboard's time-range control, in minutes of event time.
TIME_RANGES: dict[str, int] = {
    "5 minutes": 5,
    "15 minutes": 15,
    "30 minutes": 30,
    "1 hour": 60,
    "6 hours": 360,
    "24 hours": 1440,
    "7 days": 7 * 1440,
}
DEFAULT_RANGE = "30 minutes"
PRODUCT_SORTS = ("revenue", "views", "carts", "purchases")
STALE_AFTER_S = 30.0  # no batch committed for this long: the data is called stale
HEALTH_BATCHES = 60  # batches shown in the pipeline-health chart
RECENT_ALERTS = 10
TOP_N = 10

NO_DATA = (
    "No data yet: is the streaming job running? Start it with `clickstream stream` (and send "
    "events with `clickstream produce`). This page picks the data up by itself as soon as the "
    "job writes it."
)


# -- small helpers -----------------------------------------------------------------------------
def to_datetime(value) -> datetime | None:
    """Store value (ISO text, epoch seconds, datetime) -> aware UTC datetime, None if absent."""
    if value is None or value == "" or (isinstance(value, float) and pd.isna(value)):
        return None
    try:
        text = iso(value)
    except (TypeError, ValueError):
        return None
    return parse_iso(text)


def _frame(rows: list[dict], columns: Iterable[str], times=("window_start", "window_end")):
    """Rows -> DataFrame with the given columns (even when empty), times as UTC datetimes."""
    df = pd.DataFrame(rows, columns=list(columns))
    for col in times:
        if col in df.columns:
            df[col] = _utc_times(df[col])
    return df


def _utc_times(values: pd.Series) -> pd.Series:
    """Store times (ISO text such as '2026-11-28T10:15:00Z', or None) -> UTC datetimes."""
    try:  # the stores' own format: parsed by numpy, several times faster than by pandas
        parsed = np.array([v[:19] for v in values], dtype="datetime64[s]")
        return pd.Series(pd.DatetimeIndex(parsed).tz_localize("UTC"), index=values.index)
    except (TypeError, ValueError):
        return pd.to_datetime(values, utc=True, format="ISO8601")


def _num(value, default: float = 0.0) -> float:
    if type(value) is int:  # the common case, on hot paths
        return value
    if value is None:
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return default if out != out else out  # NaN


def fmt_age(seconds: float) -> str:
    """12.3 -> '12 s', 125 -> '2 min 5 s', 7300 -> '2 h 1 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def fmt_time(when: datetime | None) -> str:
    return "-" if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")


# -- what to show ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """Segment filters; None means all. Segments know all three, products only the category."""

    category: str | None = None
    country: str | None = None
    device: str | None = None

    def segments(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}

    def products(self) -> dict[str, str]:
        return {"category": self.category} if self.category else {}

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.segments().items()]
        return ", ".join(parts) if parts else "all"


@dataclass(frozen=True)
class Status:
    """Whether there is anything to show: ok, empty, missing, version or error."""

    state: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def store_status(store: Store) -> Status:
    """Checks the store's version; `empty` when it holds no windows yet."""
    try:
        store.check_version()
    except StoreMissingError:
        return Status("missing", NO_DATA)
    except StoreVersionError as exc:
        return Status("version", str(exc))
    return Status("ok")


# -- the time axis -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeRange:
    """The windows a refresh reads: [since, newest window], in event time, at a grain."""

    newest: datetime  # start of the newest window in the store
    window_s: float  # window length in seconds
    since: datetime  # start of the first window (or rollup bucket) in the range
    minutes: int
    grain_min: int | None = None  # the rollup read (None: the job's own windows)

    @property
    def per_minute(self) -> float:
        """Multiply a per-window count by this to get a per-minute rate."""
        return 60.0 / self.window_s if self.window_s else 1.0

    @property
    def step_s(self) -> float:
        """Seconds between two points of the range's series."""
        return self.grain_min * 60.0 if self.grain_min else self.window_s


def newest_window(
    store: Store, hint: datetime | None = None, read=None
) -> tuple[datetime, float] | None:
    """Start and length of the newest traffic window, or None when there is none.

    `hint` (the job's latest event time) bounds the lookup to the hour before it, so it does not
    depend on the history; without a hint, or when it finds nothing, the store's own `limit`
    decides.
    """
    read = read or store.read
    rows: list[dict] = []
    if hint is not None:
        rows = read("traffic", since=hint - timedelta(hours=1), limit=1)
    if not rows:
        rows = read("traffic", limit=1)
    if not rows:
        return None
    start = to_datetime(rows[0]["window_start"])
    end = to_datetime(rows[0].get("window_end"))
    length = (end - start).total_seconds() if end and end > start else 60.0
    return start, length


def time_range(newest: datetime, window_s: float, minutes: int, rollups: bool = True) -> TimeRange:
    """The last `minutes` of event time, ending with the window that starts at `newest`, read
    at the coarsest grain that still draws a few hundred points (`rollups.grain_for`), or at
    the job's own windows with `rollups=False`."""
    span = max(minutes * 60.0, window_s)
    since = newest - timedelta(seconds=span - window_s)
    grain = grain_for(minutes, window_s) if rollups else None
    if grain:  # whole buckets, the first one starting at or after `since`
        first = bucket(since, grain)
        if first < since.timestamp():
            first += grain * 60
        since = datetime.fromtimestamp(first, tz=UTC)
    return TimeRange(
        newest=newest, window_s=window_s, since=since, minutes=minutes, grain_min=grain
    )


# -- the range's rows, kept between refreshes ----------------------------------------------------
class Totals:
    """Running sums per key over a range's rows (`values` summed per `key`; `attrs`, such as a
    product's category, kept as last seen). Rows of a window can be added and taken out again,
    so a refresh updates the totals with the windows that changed, not the whole range."""

    def __init__(self, key: tuple[str, ...], values: tuple[str, ...], attrs: tuple[str, ...] = ()):
        self.key, self.values, self.attr_names = key, values, attrs
        self.sums: dict[tuple, list[float]] = {}
        self.attrs: dict[tuple, dict] = {}

    def copy(self) -> Totals:
        out = Totals(self.key, self.values, self.attr_names)
        out.sums = {k: list(v) for k, v in self.sums.items()}
        out.attrs = dict(self.attrs)
        return out

    def partial(self, rows: Iterable[Mapping]) -> dict[tuple, list[float]]:
        """The sums of these rows alone, per key."""
        out: dict[tuple, list[float]] = {}
        key, values = self.key, self.values
        for row in rows:
            k = tuple(row.get(c) for c in key)
            acc = out.get(k)
            if acc is None:
                acc = out[k] = [0] * len(values)
                if self.attr_names:
                    self.attrs[k] = {a: row.get(a) for a in self.attr_names}
            for i, c in enumerate(values):
                acc[i] += _num(row.get(c))
        return out

    def apply(self, partial: Mapping[tuple, list[float]], sign: int = 1) -> None:
        sums = self.sums
        for k, add in partial.items():
            acc = sums.get(k)
            if acc is None:
                acc = sums[k] = [0] * len(add)
            for i, v in enumerate(add):
                acc[i] += sign * v
            if sign < 0 and all(abs(v) < 1e-9 for v in acc):
                del sums[k]  # gone from the range

    def add_rows(self, rows: Iterable[Mapping]) -> None:
        self.apply(self.partial(rows))


# Metrics whose panels show sums over the range: (key, summed values, attributes).
RANGE_TOTALS: dict[str, tuple[tuple, tuple, tuple]] = {
    "segments": (("country", "device", "category"), ("count",), ()),
    "products": (("product_id",), ("views", "carts", "purchases", "revenue"), ("category",)),
    "paths": (("from_page", "to_page"), ("count",), ()),
    "funnel": ((), ("viewed", "carted", "purchased"), ()),
}
BANDS_TOTALS = (("duration_bin",), ("sessions", "events"), ())  # the sessions rollup


class RangeRows:
    """One metric's rows over the time range, by window start, with running totals when its
    panel sums over the range. A refresh takes out the windows that left the range or that
    new batches touched, and adds those it re-read."""

    def __init__(self, totals: tuple[tuple, tuple, tuple] | None = None):
        self.windows: dict[str, list[dict]] = {}
        self.partials: dict[str, dict] = {}
        self.totals = Totals(*totals) if totals else None

    def copy(self) -> RangeRows:
        out = RangeRows()
        out.windows, out.partials = dict(self.windows), dict(self.partials)
        out.totals = self.totals.copy() if self.totals is not None else None
        return out

    def add(self, rows: Iterable[dict]) -> None:
        by_window: dict[str, list[dict]] = {}
        for row in rows:
            by_window.setdefault(row["window_start"], []).append(row)
        for start, items in by_window.items():
            if self.totals is None:
                self.windows[start] = items
            else:  # the panel needs the sums only: keep those, not the rows (memory)
                self.windows[start] = []
                self.partials[start] = part = self.totals.partial(items)
                self.totals.apply(part)

    def drop(self, keep) -> None:
        """Take out every window whose start `keep(start)` refuses."""
        for start in [w for w in self.windows if not keep(w)]:
            del self.windows[start]
            part = self.partials.pop(start, None)
            if part is not None:
                self.totals.apply(part, sign=-1)

    def rows(self) -> list[dict]:
        """Every row, in window order (none for a metric kept as running totals)."""
        return [r for start in sorted(self.windows) for r in self.windows[start]]


# -- panels ------------------------------------------------------------------------------------
@dataclass
class Headline:
    """The top row: page views per minute (last complete window) and friends."""

    page_views_per_min: float | None = None
    page_views_delta: float | None = None
    headline_window: datetime | None = None  # start of the last complete window
    current_window: datetime | None = None  # start of the newest window (may still fill)
    current_events: int = 0
    current_complete: bool = True
    events_in_range: int = 0
    active_users: int | None = None
    active_users_delta: int | None = None
    conversion: float | None = None  # purchasing sessions / viewing sessions, whole range
    error_rate: float | None = None  # last complete window
    error_rate_delta: float | None = None


def traffic_frame(rows: list[dict]) -> pd.DataFrame:
    return _frame(rows, ("window_start", "window_end", "event_type", "count"))


def complete_windows(windows: list, window_s: float, max_event_time: datetime | None) -> list:
    """Windows the job's event time has passed; the newest one is still filling otherwise."""
    if max_event_time is None:
        return list(windows)
    step = timedelta(seconds=window_s)
    return [w for w in windows if w + step <= max_event_time]


def headline(
    traffic: pd.DataFrame,
    active: pd.DataFrame,
    errors: pd.DataFrame,
    funnel: Mapping[str, float],
    tr: TimeRange,
    max_event_time: datetime | None,
) -> Headline:
    """Headline numbers from the range's frames."""
    h = Headline()
    if traffic.empty:
        return h
    windows = sorted(traffic["window_start"].unique())
    totals = traffic.groupby("window_start")["count"].sum()
    views = (
        traffic[traffic["event_type"] == "page_view"]
        .groupby("window_start")["count"]
        .sum()
        .reindex(windows, fill_value=0)
    )
    done = complete_windows(windows, tr.window_s, max_event_time)
    h.events_in_range = int(totals.sum())
    h.current_window = pd.Timestamp(windows[-1]).to_pydatetime()
    h.current_events = int(totals.loc[windows[-1]])
    h.current_complete = bool(done) and done[-1] == windows[-1]
    if done:
        last = done[-1]
        h.headline_window = pd.Timestamp(last).to_pydatetime()
        h.page_views_per_min = float(views.loc[last]) * tr.per_minute
        if len(done) > 1:
            h.page_views_delta = h.page_views_per_min - float(views.loc[done[-2]]) * tr.per_minute
        users = active.set_index("window_start")["users"] if not active.empty else None
        if users is not None and last in users.index:
            h.active_users = int(users.loc[last])
            if len(done) > 1 and done[-2] in users.index:
                h.active_users_delta = h.active_users - int(users.loc[done[-2]])
        rates = errors.set_index("window_start")["error_rate"] if not errors.empty else None
        if rates is not None and last in rates.index:
            h.error_rate = _num(rates.loc[last])
            if len(done) > 1 and done[-2] in rates.index:
                h.error_rate_delta = h.error_rate - _num(rates.loc[done[-2]])
    if funnel.get("viewed"):
        h.conversion = funnel["purchased"] / funnel["viewed"]
    return h


def traffic_by_type(traffic: pd.DataFrame) -> pd.DataFrame:
    """Events per window and event type (one column per type), for a stacked chart."""
    if traffic.empty:
        return pd.DataFrame()
    table: dict = {}
    for start, event_type, count in zip(
        traffic["window_start"], traffic["event_type"], traffic["count"], strict=True
    ):
        per_type = table.setdefault(start, {})
        per_type[event_type] = per_type.get(event_type, 0) + int(_num(count))
    return pd.DataFrame.from_dict(table, orient="index").fillna(0).astype(int).sort_index()


def top_products(rows: list[dict], sort_by: str = "revenue", n: int = TOP_N) -> pd.DataFrame:
    """Products over the range: views, carts, purchases, revenue; the top `n` by `sort_by`."""
    totals = Totals(("product_id",), PRODUCT_VALUES, ("category",))
    totals.add_rows(rows)
    return top_products_of(totals, sort_by, n)


PRODUCT_VALUES = ("views", "carts", "purchases", "revenue")


def top_products_of(totals: Totals, sort_by: str = "revenue", n: int = TOP_N) -> pd.DataFrame:
    """The top `n` products by `sort_by`, from the range's running totals."""
    cols = ["product_id", "category", "views", "carts", "purchases", "revenue", "conversion"]
    records = [
        (
            pid,
            totals.attrs.get((pid,), {}).get("category") or "-",
            int(views),
            int(carts),
            int(buys),
            round(revenue, 2),
            buys / views if views else 0.0,
        )
        for (pid,), (views, carts, buys, revenue) in totals.sums.items()
    ]
    key = cols.index(sort_by)
    records.sort(key=lambda r: (-r[key], r[0]))
    return pd.DataFrame(records[:n], columns=cols)


def funnel_totals(rows: list[dict]) -> dict[str, float]:
    """Sessions that viewed, carted and purchased, summed over the range."""
    totals = Totals((), FUNNEL_VALUES)
    totals.add_rows(rows)
    return funnel_of(totals)


FUNNEL_VALUES = ("viewed", "carted", "purchased")


def funnel_of(totals: Totals) -> dict[str, float]:
    sums = totals.sums.get((), [0] * len(FUNNEL_VALUES))
    return dict(zip(FUNNEL_VALUES, sums, strict=True))


def funnel_frame(totals: Mapping[str, float]) -> pd.DataFrame:
    """Funnel stages with their share of the first stage."""
    first = totals.get("viewed") or 0
    stages = [
        ("Viewed a product", "viewed"),
        ("Added to cart", "carted"),
        ("Purchased", "purchased"),
    ]
    return pd.DataFrame(
        {
            "stage": [label for label, _ in stages],
            "sessions": [int(totals.get(key, 0)) for _, key in stages],
            "share": [(totals.get(key, 0) / first) if first else 0.0 for _, key in stages],
        }
    )


SEGMENT_COLUMNS = ("country", "device", "category")


@dataclass
class Segments:
    """Events in the range per country, device and category (of the filtered segment)."""

    total: int = 0
    windows: int = 0
    by: dict[str, dict[str, int]] = field(
        default_factory=lambda: {col: {} for col in SEGMENT_COLUMNS}
    )


def segment_counts(rows: list[dict]) -> Segments:
    """Segment rows -> totals per value."""
    totals = Totals(SEGMENT_COLUMNS, ("count",))
    totals.add_rows(rows)
    return segments_of(totals, windows=len({row.get("window_start") for row in rows}))


def segments_of(totals: Totals, windows: int) -> Segments:
    """Events in the range per country, device and category, from the running totals."""
    out = Segments()
    for key, (n,) in totals.sums.items():
        out.total += n
        for col, value in zip(SEGMENT_COLUMNS, key, strict=True):
            counts = out.by[col]
            counts[value or "-"] = counts.get(value or "-", 0) + n
    out.total = int(out.total)
    out.by = {col: {k: int(v) for k, v in counts.items()} for col, counts in out.by.items()}
    out.windows = windows
    return out


def segment_breakdown(segments: Segments, by: str) -> pd.DataFrame:
    """Events in the range per value of `by` (country, device or category), largest first."""
    items = sorted(segments.by[by].items(), key=lambda kv: (-kv[1], kv[0]))
    return pd.DataFrame(items, columns=[by, "count"])


def active_users_frame(rows: list[dict]) -> pd.DataFrame:
    return _frame(rows, ("window_start", "window_end", "users"))


def errors_frame(rows: list[dict]) -> pd.DataFrame:
    df = _frame(rows, ("window_start", "window_end", "events", "errors", "error_rate"))
    if not df.empty:
        df["error_rate"] = pd.to_numeric(df["error_rate"], errors="coerce")
        missing = df["error_rate"].isna() & (pd.to_numeric(df["events"], errors="coerce") > 0)
        df.loc[missing, "error_rate"] = df["errors"] / df["events"]
    return df


def error_rate_in_range(errors: pd.DataFrame) -> float | None:
    if errors.empty or not pd.to_numeric(errors["events"], errors="coerce").sum():
        return None
    return float(errors["errors"].sum() / errors["events"].sum())


@dataclass
class Sessions:
    count: int = 0
    median_duration_s: float | None = None
    mean_events: float | None = None
    durations: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    # At a rollup grain: sessions per band of length (its lower bound in seconds), and the
    # median is interpolated within its band.
    bands: pd.DataFrame | None = None


def sessions_from_bands(rows: list[dict]) -> Sessions:
    """Sessions that started in the range, from a sessions rollup (per start bucket and band
    of length): the count and the events per session are exact, the median is from bands."""
    totals = Totals(("duration_bin",), BAND_VALUES)
    totals.add_rows(rows)
    return sessions_of_bands(totals)


BAND_VALUES = ("sessions", "events")


def sessions_of_bands(totals: Totals) -> Sessions:
    counts = {int(_num(k[0])): int(v[0]) for k, v in totals.sums.items() if v[0]}
    total = sum(counts.values())
    if not total:
        return Sessions()
    events = sum(v[1] for v in totals.sums.values())
    median, seen = None, 0
    for band in sorted(counts):
        n = counts[band]
        if seen + n >= total / 2:
            upper = next((b for b in SESSION_BANDS if b > band), band)
            median = band + (upper - band) * (total / 2 - seen) / n
            break
        seen += n
    bands = pd.DataFrame(sorted(counts.items()), columns=["duration_bin", "sessions"])
    return Sessions(count=total, median_duration_s=median, mean_events=events / total, bands=bands)


def sessions_summary(rows: list[dict]) -> Sessions:
    """Sessions that started in the range: how many, how long, how many events."""
    if not rows:
        return Sessions()
    # A session that grew between batches can appear with several window ends: keep its last.
    last: dict[tuple, dict] = {}
    for row in rows:
        key = (row.get("user_id"), row.get("session_id"), row.get("window_start"))
        seen = last.get(key)
        if seen is None or (row.get("window_end") or "") >= (seen.get("window_end") or ""):
            last[key] = row
    dur = pd.to_numeric(pd.Series([r.get("duration_s") for r in last.values()]), errors="coerce")
    ev = pd.to_numeric(pd.Series([r.get("events") for r in last.values()]), errors="coerce")
    dur, ev = dur.dropna().reset_index(drop=True), ev.dropna()
    return Sessions(
        count=len(last),
        median_duration_s=float(dur.median()) if len(dur) else None,
        mean_events=float(ev.mean()) if len(ev) else None,
        durations=dur,
    )


def top_paths(rows: list[dict], n: int = TOP_N) -> pd.DataFrame:
    """The most frequent page-to-page transitions in the range."""
    totals = Totals(PATH_KEY, ("count",))
    totals.add_rows(rows)
    return top_paths_of(totals, n)


PATH_KEY = ("from_page", "to_page")


def top_paths_of(totals: Totals, n: int = TOP_N) -> pd.DataFrame:
    top = sorted(((k, int(v[0])) for k, v in totals.sums.items()), key=lambda kv: (-kv[1], kv[0]))
    return pd.DataFrame(
        [(a, b, c) for (a, b), c in top[:n]], columns=["from_page", "to_page", "count"]
    )


def alerts_frame(rows: list[dict]) -> pd.DataFrame:
    """Every alert, newest first, with times as datetimes."""
    cols = (
        "alert_id",
        "kind",
        "status",
        "opened_at",
        "closed_at",
        "peak",
        "baseline",
        "detail",
    )
    df = _frame(rows, cols, times=("opened_at", "closed_at"))
    if df.empty:
        return df
    df["status"] = df["status"].fillna("open").astype(str)
    return df.sort_values(["opened_at", "alert_id"], ascending=[False, True]).reset_index(drop=True)


def open_alerts(alerts: pd.DataFrame) -> pd.DataFrame:
    if alerts.empty:
        return alerts
    return alerts[alerts["status"].str.lower() == "open"].reset_index(drop=True)


def quarantine_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["reason", "count"])
    if df.empty:
        return df
    df["count"] = pd.to_numeric(df["count"], errors="coerce").fillna(0).astype(int)
    return df.sort_values(["count", "reason"], ascending=[False, True]).reset_index(drop=True)


def _first(counters: Mapping[str, float], *names: str) -> float | None:
    for name in names:
        if name in counters and counters[name] is not None:
            return _num(counters[name])
    return None


@dataclass
class Quality:
    """Data-quality counters: quarantined records, late events dropped, duplicates removed."""

    quarantined: int = 0
    late_dropped: float | None = None
    duplicates: float | None = None
    counters: dict = field(default_factory=dict)


def quality(quarantine: pd.DataFrame, counters: Mapping[str, float]) -> Quality:
    return Quality(
        quarantined=int(quarantine["count"].sum()) if not quarantine.empty else 0,
        late_dropped=_first(counters, "late_dropped", "late_events_dropped", "late"),
        duplicates=_first(counters, "duplicates_removed", "duplicates", "duplicates_dropped"),
        counters=dict(counters),
    )


@dataclass
class Health:
    """The streaming job's last batch and how fresh the data is."""

    has_batches: bool = False
    job: str | None = None
    batch_id: int | None = None
    committed_at: datetime | None = None
    age_s: float | None = None
    stale: bool = True
    freshness: str = "no batch has been committed yet"
    duration_ms: float | None = None
    input_rows: float | None = None
    input_rate: float | None = None
    processing_rate: float | None = None
    lag: float | None = None
    max_event_time: datetime | None = None
    watermark: datetime | None = None
    batches: pd.DataFrame = field(default_factory=pd.DataFrame)


def health_summary(rows: list[dict], now: float | None = None) -> Health:
    """Health rows (newest first, as `Store.health` returns them) -> the pipeline-health panel."""
    if not rows:
        return Health()
    now = time.time() if now is None else now
    last = rows[0]
    committed = _num(last.get("committed_at"), default=float("nan"))
    h = Health(has_batches=True, job=last.get("job"))
    h.batch_id = int(last["batch_id"]) if last.get("batch_id") is not None else None
    if not pd.isna(committed):
        h.committed_at = datetime.fromtimestamp(committed, tz=UTC)
        h.age_s = max(0.0, now - committed)
        h.stale = h.age_s > STALE_AFTER_S
        h.freshness = (
            f"stale since {fmt_time(h.committed_at)} ({fmt_age(h.age_s)} without a new batch)"
            if h.stale
            else f"data is {fmt_age(h.age_s)} old"
        )
    for name in ("duration_ms", "input_rows", "input_rate", "processing_rate", "lag"):
        value = last.get(name)
        setattr(h, name, None if value is None else _num(value))
    h.max_event_time = to_datetime(last.get("max_event_time"))
    h.watermark = to_datetime(last.get("watermark"))
    df = pd.DataFrame(rows)
    for col in ("committed_at", "duration_ms", "input_rate", "processing_rate", "lag"):
        if col not in df.columns:
            df[col] = None
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["committed_at"] = pd.to_datetime(df["committed_at"], unit="s", utc=True)
    h.batches = df.sort_values("committed_at").reset_index(drop=True)
    return h


def latest_event_time(health_rows: list[dict]) -> datetime | None:
    """The newest event time any job has seen, from the last batches' health."""
    times = [to_datetime(r.get("max_event_time")) for r in health_rows]
    times = [t for t in times if t is not None]
    return max(times) if times else None


# -- one refresh -------------------------------------------------------------------------------
# The windowed metrics a refresh reads over its range, each from the table of the range's grain.
RANGE_METRICS = ("traffic", "active_users", "errors", "funnel", "products", "segments", "sessions")
RANGE_METRICS += ("paths",)


_EMPTY: dict[str, pd.DataFrame] = {}


def _empty(name: str) -> pd.DataFrame:
    """The empty frame a snapshot shows for panel `name` before any data: built once and
    shared (a refresh replaces frames, never changes them in place)."""
    if name not in _EMPTY:
        _EMPTY.update(
            traffic=traffic_frame([]),
            products=top_products([]),
            funnel=funnel_frame({}),
            active_users=active_users_frame([]),
            errors=errors_frame([]),
            paths=top_paths([]),
            alerts=alerts_frame([]),
            open_alerts=alerts_frame([]),
            quarantine=quarantine_frame([]),
        )
    return _EMPTY[name]


@dataclass
class Snapshot:
    """Everything one refresh of the dashboard shows."""

    status: Status
    range: TimeRange | None = None
    filters: Filters = field(default_factory=Filters)
    headline: Headline = field(default_factory=Headline)
    traffic: pd.DataFrame = field(default_factory=lambda: _empty("traffic"))
    traffic_by_type: pd.DataFrame = field(default_factory=pd.DataFrame)
    products: pd.DataFrame = field(default_factory=lambda: _empty("products"))
    product_sort: str = "revenue"
    funnel: pd.DataFrame = field(default_factory=lambda: _empty("funnel"))
    segments: Segments = field(default_factory=Segments)
    active_users: pd.DataFrame = field(default_factory=lambda: _empty("active_users"))
    errors: pd.DataFrame = field(default_factory=lambda: _empty("errors"))
    error_rate: float | None = None
    sessions: Sessions = field(default_factory=Sessions)
    paths: pd.DataFrame = field(default_factory=lambda: _empty("paths"))
    alerts: pd.DataFrame = field(default_factory=lambda: _empty("alerts"))
    open_alerts: pd.DataFrame = field(default_factory=lambda: _empty("open_alerts"))
    quarantine: pd.DataFrame = field(default_factory=lambda: _empty("quarantine"))
    quality: Quality = field(default_factory=Quality)
    health: Health = field(default_factory=Health)
    health_rows: list = field(default_factory=list)
    marker: tuple | None = None  # the newest batch when this was read (see `change_marker`)
    serial: int = field(default_factory=time.monotonic_ns)
    reads: int = 0  # store queries this refresh made
    rows_read: dict[str, int] = field(default_factory=dict)  # rows read, per table
    held: dict[str, RangeRows] | None = None  # the range's rows, kept for the next refresh
    incremental: bool = False  # this refresh re-read only the windows new batches touched
    small: dict[str, list[dict]] | None = None  # alerts, quarantine and counters as read

    @property
    def grain_label(self) -> str:
        """What one point of the range's series stands for."""
        if self.range is None or not self.range.grain_min:
            return "window"
        return f"{self.range.grain_min} minutes"


def _marker(health_rows: list[dict]) -> tuple | None:
    if not health_rows:
        return None
    last = health_rows[0]
    return (last.get("job"), last.get("batch_id"), last.get("committed_at"))


def job_health(store: Store, limit: int) -> list[dict]:
    """The newest `limit` batches of the streaming job's health, newest first. The sessions
    query's batches are left out: they only mark that sessions were written."""
    return _without_sessions_job(store.health(limit=2 * limit), limit)


def _without_sessions_job(rows: list[dict], limit: int) -> list[dict]:
    return [r for r in rows if r.get("job") != SESSIONS_JOB][:limit]


def change_marker(store: Store) -> tuple | None:
    """The newest committed batch: every write to the store adds one, so while this stays the
    same the store holds the same data and a refresh can skip reading it (one tiny query)."""
    return _marker(store.health(limit=1))


def with_freshness(snap: Snapshot, now: float | None = None) -> Snapshot:
    """The same data with its freshness ("data is 3 s old") brought up to `now`."""
    fresh = health_summary(snap.health_rows, now=now)
    for name in ("age_s", "stale", "freshness"):
        setattr(snap.health, name, getattr(fresh, name))
    return snap


class _Reader:
    """The store's `read`, counting queries and rows per table (the bench and tests check
    that a refresh reads no more than its range and grain imply)."""

    def __init__(self, store: Store, snap: Snapshot):
        self.store, self.snap = store, snap

    def __call__(self, name: str, **kwargs) -> list[dict]:
        rows = self.store.read(name, **kwargs)
        self.snap.reads += 1
        self.snap.rows_read[name] = self.snap.rows_read.get(name, 0) + len(rows)
        return rows


def _where(name: str, filters: Filters) -> dict | None:
    if name == "products":
        return filters.products() or None
    if name == "segments":
        return filters.segments() or None
    return None


def changed_span(
    previous: Snapshot | None, tr: TimeRange, health_rows: list[dict]
) -> tuple[str, str] | None:
    """The window starts [lo, hi) the batches committed since `previous` touched, at the
    range's grain; None when `previous` cannot be brought up to date (other grain, no rows
    kept, or more new batches than `health_rows` shows)."""
    if previous is None or previous.held is None or previous.range is None:
        return None
    if (previous.range.grain_min, previous.range.window_s) != (tr.grain_min, tr.window_s):
        return None
    newer = []
    for row in health_rows:  # newest first
        if _marker([row]) == previous.marker:
            break
        newer.append(row)
    else:
        return None
    starts = [r["windows_from"] for r in newer if r.get("windows_from")]
    ends = [r["windows_to"] for r in newer if r.get("windows_to")]
    if not starts:
        return ("", "")  # nothing windowed changed: re-read no window
    lo, hi = iso(min(starts)), iso(max(ends))
    if tr.grain_min:
        g = tr.grain_min
        return iso(bucket(lo, g)), iso(bucket(hi, g) + g * 60)
    return lo, iso(to_datetime(hi) + timedelta(seconds=1))


def range_rows(
    read, tr: TimeRange, filters: Filters, previous: Snapshot | None, span
) -> dict[str, RangeRows]:
    """Every range metric's rows at the range's grain: all of them, or, given what `previous`
    held and the `span` new batches touched, those rows with just the span re-read."""
    since = iso(tr.since)
    held: dict[str, RangeRows] = {}
    for name in RANGE_METRICS:
        table = table_name(name, tr.grain_min)
        where = _where(name, filters)
        if span is None:
            totals = BANDS_TOTALS if name == "sessions" and tr.grain_min else None
            held[name] = rows = RangeRows(RANGE_TOTALS.get(name, totals))
            rows.add(read(table, since=since, where=where))
            continue
        lo, hi = span
        held[name] = rows = previous.held[name].copy()
        rows.drop(lambda start, lo=lo, hi=hi: start >= since and not lo <= start < hi)
        if hi > since:
            rows.add(read(table, since=max(since, lo), until=hi, where=where))
    return held


def load_snapshot(
    store: Store,
    minutes: int = TIME_RANGES[DEFAULT_RANGE],
    filters: Filters | None = None,
    product_sort: str = "revenue",
    now: float | None = None,
    previous: Snapshot | None = None,
    rollups: bool = True,
) -> Snapshot:
    """All a refresh needs, in a fixed number of queries bounded by the time range.

    Long ranges read a rollup (`TimeRange.grain_min`). Given the `previous` snapshot of the
    same settings, only the windows the batches committed since then touched are re-read and
    merged into the rows it kept. `rollups=False` reads the job's own windows at any range
    (what the benchmark compares with).
    """
    filters = filters or Filters()
    status = store_status(store)
    if not status.ok:
        return Snapshot(status=status, filters=filters, reads=1)
    snap = Snapshot(status=status, filters=filters, product_sort=product_sort, reads=1)
    read = _Reader(store, snap)
    every_job = store.health(limit=2 * HEALTH_BATCHES)
    health_rows = _without_sessions_job(every_job, HEALTH_BATCHES)
    snap.reads += 1
    snap.health = health_summary(health_rows, now=now)
    snap.health_rows = health_rows
    snap.marker = _marker(every_job)
    _add_small_tables(snap, read, previous)
    max_event_time = latest_event_time(health_rows)
    found = newest_window(store, hint=max_event_time, read=read)
    if found is None:
        snap.status = Status("empty", NO_DATA)
        return snap
    tr = time_range(*found, minutes=minutes, rollups=rollups)
    snap.range = tr
    span = changed_span(previous, tr, every_job)
    snap.incremental = span is not None
    snap.held = range_rows(read, tr, filters, previous, span)
    _add_range_panels(snap, read, max_event_time)
    return snap


def _add_small_tables(snap: Snapshot, read: _Reader, previous: Snapshot | None) -> None:
    """Quarantine, counters and alerts, read in full (they are small); their frames are those
    of `previous` when nothing in them changed."""
    small = {name: read(name) for name in ("quarantine", "counters", "alerts")}
    snap.small = small
    if previous is not None and previous.small == small:  # unchanged: its frames still hold
        snap.quarantine, snap.quality = previous.quarantine, previous.quality
        snap.alerts, snap.open_alerts = previous.alerts, previous.open_alerts
        return
    snap.quarantine = quarantine_frame(small["quarantine"])
    counters = {r["name"]: r["value"] for r in small["counters"]}
    snap.quality = quality(snap.quarantine, counters)
    snap.alerts = alerts_frame(small["alerts"])
    snap.open_alerts = open_alerts(snap.alerts)


def _add_range_panels(snap: Snapshot, read: _Reader, max_event_time: datetime | None) -> None:
    """Every panel of the time range, from the rows `snap.held` keeps (with rollups, the
    headline reads the last few windows of the job's own length too)."""
    held, tr = snap.held, snap.range
    traffic = traffic_frame(held["traffic"].rows())
    active = active_users_frame(held["active_users"].rows())
    errors = errors_frame(held["errors"].rows())
    funnel = funnel_of(held["funnel"].totals)
    snap.traffic = traffic
    snap.traffic_by_type = traffic_by_type(traffic)
    snap.active_users = active
    snap.errors = errors
    snap.error_rate = error_rate_in_range(errors)
    snap.funnel = funnel_frame(funnel)
    if tr.grain_min:
        # The headline compares the last complete windows of the job's own length.
        recent = iso(tr.newest - timedelta(seconds=2 * tr.window_s))
        snap.headline = headline(
            traffic_frame(read("traffic", since=recent)),
            active_users_frame(read("active_users", since=recent)),
            errors_frame(read("errors", since=recent)),
            funnel,
            tr,
            max_event_time,
        )
        snap.headline.events_in_range = int(traffic["count"].sum()) if len(traffic) else 0
        snap.sessions = sessions_of_bands(held["sessions"].totals)
    else:
        snap.headline = headline(traffic, active, errors, funnel, tr, max_event_time)
        snap.sessions = sessions_summary(held["sessions"].rows())
    snap.products = top_products_of(held["products"].totals, sort_by=snap.product_sort)
    snap.segments = segments_of(held["segments"].totals, windows=len(held["segments"].windows))
    snap.paths = top_paths_of(held["paths"].totals)


def filter_options(store: Store, windows: int = 10) -> dict[str, list[str]]:
    """Values the filters can take: those seen in the newest `windows` windows of segments."""
    options: dict[str, set] = {"category": set(), "country": set(), "device": set()}
    try:
        found = newest_window(store, hint=latest_event_time(job_health(store, 5)))
        if found is not None:
            start, length = found
            since = iso(start - timedelta(seconds=length * (windows - 1)))
            for row in store.read("segments", since=since):
                for key, values in options.items():
                    if row.get(key):
                        values.add(str(row[key]))
            for row in store.read("products", since=since):
                if row.get("category"):
                    options["category"].add(str(row["category"]))
    except StoreError:
        pass
    options["category"].discard("-")  # "-": events without a product
    return {k: sorted(v) for k, v in options.items()}
