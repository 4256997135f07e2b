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

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from clickstream.serving import (
    Store,
    StoreError,
    StoreMissingError,
    StoreVersionError,
    iso,
    open_store,
)
from clickstream.stream import SESSIONS_JOB

# Choices offered by the dashboard's time-range control, in minutes of event time.
TIME_RANGES: dict[str, int] = {
    "5 minutes": 5,
    "15 minutes": 15,
    "30 minutes": 30,
    "1 hour": 60,
    "6 hours": 360,
    "24 hours": 1440,
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
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _frame(rows: list[dict], columns: Iterable[str], times=("window_start", "window_end")):
    """Rows -> DataFrame with the given columns (even when empty), times as UTC datetimes."""
    df = pd.DataFrame(rows, columns=list(columns))
    for col in times:
        if col in df.columns:
            df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601")
    return df


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
    """The windows a refresh reads: [since, newest window], in event time."""

    newest: datetime  # start of the newest window in the store
    window_s: float  # window length in seconds
    since: datetime
    minutes: int

    @property
    def per_minute(self) -> float:
        """Multiply a per-window count by this to get a per-minute rate."""
        return 60.0 / self.window_s if self.window_s else 1.0


def newest_window(store: Store, hint: datetime | None = None) -> tuple[datetime, float] | None:
    """Start and length of the newest traffic window, or None when there is none.

    `hint` (the job's latest event time) bounds the lookup to the hour before it, so it does not
    depend on the history; without a hint, or when it finds nothing, the store's own `limit`
    decides.
    """
    rows: list[dict] = []
    if hint is not None:
        rows = store.read("traffic", since=hint - timedelta(hours=1), limit=1)
    if not rows:
        rows = store.read("traffic", limit=1)
    if not rows:
        return None
    start = to_datetime(rows[0]["window_start"])
    end = to_datetime(rows[0].get("window_end"))
    length = (end - start).total_seconds() if end and end > start else 60.0
    return start, length


def time_range(newest: datetime, window_s: float, minutes: int) -> TimeRange:
    """The last `minutes` of event time, ending with the window that starts at `newest`."""
    span = max(minutes * 60.0, window_s)
    since = newest - timedelta(seconds=span - window_s)
    return TimeRange(newest=newest, window_s=window_s, since=since, minutes=minutes)


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
    cols = ["product_id", "category", "views", "carts", "purchases", "revenue", "conversion"]
    totals: dict[str, list] = {}
    for row in rows:  # plain Python: a range holds (products x windows) rows
        pid = row.get("product_id")
        t = totals.get(pid)
        if t is None:
            t = totals[pid] = [row.get("category") or "-", 0, 0, 0, 0.0]
        t[1] += int(_num(row.get("views")))
        t[2] += int(_num(row.get("carts")))
        t[3] += int(_num(row.get("purchases")))
        t[4] += _num(row.get("revenue"))
    records = [
        (pid, cat, views, carts, buys, round(revenue, 2), buys / views if views else 0.0)
        for pid, (cat, views, carts, buys, revenue) in totals.items()
    ]
    key = cols.index(sort_by)
    records.sort(key=lambda r: (-r[key], r[0]))
    return pd.DataFrame(records[:n], columns=cols)


def funnel_totals(rows: list[dict]) -> dict[str, float]:
    """Sessions that viewed, carted and purchased, summed over the range."""
    return {
        stage: sum(_num(r.get(stage)) for r in rows) for stage in ("viewed", "carted", "purchased")
    }


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
    """Segment rows -> totals per value (plain Python: the range can hold ~10^5 rows)."""
    out = Segments()
    windows = set()
    country, device, category = (out.by[col] for col in SEGMENT_COLUMNS)
    for row in rows:
        n = _num(row.get("count"))
        out.total += n
        windows.add(row.get("window_start"))
        for counts, value in (
            (country, row.get("country") or "-"),
            (device, row.get("device") or "-"),
            (category, row.get("category") or "-"),
        ):
            counts[value] = counts.get(value, 0) + n
    out.total = int(out.total)
    out.windows = len(windows)
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


def sessions_summary(rows: list[dict]) -> Sessions:
    """Sessions that started in the range: how many, how long, how many events."""
    if not rows:
        return Sessions()
    df = pd.DataFrame(rows)
    # A session that grew between batches can appear with several window ends: keep its last.
    keys = [k for k in ("user_id", "session_id", "window_start") if k in df.columns]
    if keys and "window_end" in df.columns:
        df = df.sort_values("window_end").drop_duplicates(keys, keep="last")
    dur = pd.to_numeric(df.get("duration_s"), errors="coerce").dropna()
    ev = pd.to_numeric(df.get("events"), errors="coerce").dropna()
    return Sessions(
        count=len(df),
        median_duration_s=float(dur.median()) if len(dur) else None,
        mean_events=float(ev.mean()) if len(ev) else None,
        durations=dur.reset_index(drop=True),
    )


def top_paths(rows: list[dict], n: int = TOP_N) -> pd.DataFrame:
    """The most frequent page-to-page transitions in the range."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row.get("from_page"), row.get("to_page"))
        counts[key] = counts.get(key, 0) + int(_num(row.get("count")))
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return pd.DataFrame([(a, b, c) for (a, b), c in top], columns=["from_page", "to_page", "count"])


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
@dataclass
class Snapshot:
    """Everything one refresh of the dashboard shows."""

    status: Status
    range: TimeRange | None = None
    filters: Filters = field(default_factory=Filters)
    headline: Headline = field(default_factory=Headline)
    traffic: pd.DataFrame = field(default_factory=lambda: traffic_frame([]))
    traffic_by_type: pd.DataFrame = field(default_factory=pd.DataFrame)
    products: pd.DataFrame = field(default_factory=lambda: top_products([]))
    product_sort: str = "revenue"
    funnel: pd.DataFrame = field(default_factory=lambda: funnel_frame({}))
    segments: Segments = field(default_factory=Segments)
    active_users: pd.DataFrame = field(default_factory=lambda: active_users_frame([]))
    errors: pd.DataFrame = field(default_factory=lambda: errors_frame([]))
    error_rate: float | None = None
    sessions: Sessions = field(default_factory=Sessions)
    paths: pd.DataFrame = field(default_factory=lambda: top_paths([]))
    alerts: pd.DataFrame = field(default_factory=lambda: alerts_frame([]))
    open_alerts: pd.DataFrame = field(default_factory=lambda: alerts_frame([]))
    quarantine: pd.DataFrame = field(default_factory=lambda: quarantine_frame([]))
    quality: Quality = field(default_factory=Quality)
    health: Health = field(default_factory=Health)
    health_rows: list = field(default_factory=list)
    marker: tuple | None = None  # the newest batch when this was read (see `change_marker`)
    serial: int = field(default_factory=time.monotonic_ns)
    reads: int = 0  # store queries this refresh made


def _marker(health_rows: list[dict]) -> tuple | None:
    if not health_rows:
        return None
    last = health_rows[0]
    return (last.get("job"), last.get("batch_id"), last.get("committed_at"))


def job_health(store: Store, limit: int) -> list[dict]:
    """The newest `limit` batches of the streaming job's health, newest first. The sessions
    query's batches are left out: they only mark that sessions were written."""
    rows = store.health(limit=2 * limit)
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


def load_snapshot(
    store: Store,
    minutes: int = TIME_RANGES[DEFAULT_RANGE],
    filters: Filters | None = None,
    product_sort: str = "revenue",
    now: float | None = None,
) -> Snapshot:
    """All a refresh needs, in a fixed number of queries bounded by the time range."""
    filters = filters or Filters()
    status = store_status(store)
    if not status.ok:
        return Snapshot(status=status, filters=filters, reads=1)
    health_rows = job_health(store, HEALTH_BATCHES)
    snap = Snapshot(status=status, filters=filters, product_sort=product_sort, reads=3)
    snap.health = health_summary(health_rows, now=now)
    snap.health_rows = health_rows
    snap.marker = _marker(health_rows)
    quarantine = quarantine_frame(store.read("quarantine"))
    snap.quarantine = quarantine
    snap.quality = quality(quarantine, store.counters())
    snap.alerts = alerts_frame(store.read("alerts"))
    snap.open_alerts = open_alerts(snap.alerts)
    snap.reads += 3
    max_event_time = latest_event_time(health_rows)
    found = newest_window(store, hint=max_event_time)
    snap.reads += 1
    if found is None:
        snap.status = Status("empty", NO_DATA)
        return snap
    tr = time_range(*found, minutes=minutes)
    snap.range = tr
    since = iso(tr.since)
    traffic = traffic_frame(store.read("traffic", since=since))
    active = active_users_frame(store.read("active_users", since=since))
    errors = errors_frame(store.read("errors", since=since))
    funnel = funnel_totals(store.read("funnel", since=since))
    snap.traffic = traffic
    snap.traffic_by_type = traffic_by_type(traffic)
    snap.active_users = active
    snap.errors = errors
    snap.error_rate = error_rate_in_range(errors)
    snap.funnel = funnel_frame(funnel)
    snap.headline = headline(traffic, active, errors, funnel, tr, max_event_time)
    snap.products = top_products(
        store.read("products", since=since, where=filters.products() or None), sort_by=product_sort
    )
    snap.segments = segment_counts(
        store.read("segments", since=since, where=filters.segments() or None)
    )
    snap.sessions = sessions_summary(store.read("sessions", since=since))
    snap.paths = top_paths(store.read("paths", since=since))
    snap.reads += 8
    return snap


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


# -- benchmark ---------------------------------------------------------------------------------
def fill_for_bench(store: Store, minutes: int = 1440, end: str = "2026-11-28T00:00:00Z") -> int:
    """Write `minutes` per-minute windows of every metric (shaped like a simulated day)."""
    from clickstream.simulator import COUNTRIES, load_catalogue

    catalogue = load_catalogue()
    categories = sorted({p.category for p in catalogue})
    countries = [c for c, _ in COUNTRIES]
    devices = ("desktop", "mobile", "tablet")
    pages = ["/", "/search", "/cart", "/checkout"] + [f"/category/{c}" for c in categories]
    first = to_datetime(end) - timedelta(minutes=minutes)
    written = 0
    batch: dict[str, list[dict]] = {}
    for m in range(minutes):
        start = first + timedelta(minutes=m)
        stop = start + timedelta(minutes=1)
        w = {"window_start": start, "window_end": stop}
        base = 2000 + (m % 60) * 10
        batch.setdefault("traffic", []).extend(
            {**w, "event_type": t, "count": base // (i + 1)}
            for i, t in enumerate(
                ("page_view", "search", "add_to_cart", "remove_from_cart", "purchase", "error")
            )
        )
        batch.setdefault("segments", []).extend(
            {**w, "country": c, "device": d, "category": k, "count": 1 + (m + i) % 7}
            for i, (c, d, k) in enumerate(
                (c, d, k) for c in countries for d in devices for k in categories
            )
        )
        batch.setdefault("products", []).extend(
            {
                **w,
                "product_id": p.product_id,
                "category": p.category,
                "views": 5 + (m + i) % 11,
                "carts": (m + i) % 4,
                "purchases": (m + i) % 2,
                "revenue": ((m + i) % 2) * p.price,
            }
            for i, p in enumerate(catalogue)
        )
        batch.setdefault("active_users", []).append({**w, "users": 300 + m % 50})
        batch.setdefault("funnel", []).append(
            {**w, "viewed": 250, "carted": 60 + m % 10, "purchased": 20 + m % 5}
        )
        batch.setdefault("errors", []).append(
            {**w, "events": base * 2, "errors": 10 + m % 5, "error_rate": (10 + m % 5) / base / 2}
        )
        batch.setdefault("sessions", []).extend(
            {
                "window_start": start,
                "window_end": stop + timedelta(minutes=5),
                "user_id": f"u_{(m * 40 + s) % 500:04d}",
                "session_id": f"s_{m:04d}_{s:02d}",
                "duration_s": 30 + s * 7,
                "events": 3 + s % 9,
            }
            for s in range(40)
        )
        batch.setdefault("paths", []).extend(
            {**w, "from_page": a, "to_page": b, "count": 1 + (m + i) % 9}
            for i, (a, b) in enumerate(zip(pages, pages[1:] + pages[:1], strict=True))
        )
        if (m + 1) % 60 == 0 or m == minutes - 1:
            store.write_batch(
                "bench",
                m,
                batch,
                health={
                    "input_rows": 6000,
                    "duration_ms": 800,
                    "input_rate": 100.0,
                    "processing_rate": 400.0,
                    "max_event_time": iso(stop),
                    "watermark": iso(start),
                    "lag": 0,
                },
            )
            written += sum(len(v) for v in batch.values())
            batch = {}
    store.write_batch(
        "bench",
        minutes,
        {
            "alerts": [
                {
                    "alert_id": f"a{i}",
                    "kind": "error_spike",
                    "status": "closed",
                    "opened_at": first + timedelta(hours=i),
                    "closed_at": first + timedelta(hours=i, minutes=5),
                    "peak": 0.2,
                    "baseline": 0.01,
                    "detail": "bench",
                }
                for i in range(minutes // 60)
            ],
            "quarantine": [{"reason": "not_json", "count": 12}, {"reason": "bad_time", "count": 3}],
            "counters": [{"name": "late_dropped", "value": 7}, {"name": "duplicates", "value": 2}],
        },
        health={
            "input_rows": 0,
            "duration_ms": 20,
            "input_rate": 100.0,
            "processing_rate": 400.0,
            "max_event_time": iso(end),
            "lag": 0,
        },
    )
    return written


def machine() -> str:
    """CPU model, cores, memory, OS and Python: what a timing was measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except Exception:  # noqa: BLE001 - a description, not a requirement
        mem = "RAM unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ""
    if hasattr(os, "getloadavg"):  # other work on the machine inflates the timings
        load = f", load average {os.getloadavg()[0]:.1f}"
    return (
        f"{model}, {cores} cores available, {mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}{load}"
    )


@dataclass
class BenchResult:
    store_url: str
    minutes: int
    rows: int
    fill_s: float
    timings_ms: dict[str, list[float]]
    reads: int
    machine: str

    def median(self, name: str) -> float:
        return statistics.median(self.timings_ms[name])

    def p95(self, name: str) -> float:
        values = sorted(self.timings_ms[name])
        return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]

    def lines(self) -> list[str]:
        out = [
            f"store: {self.store_url} holding {self.minutes} per-minute windows of every metric "
            f"({self.rows:,} rows, filled in {self.fill_s:.1f} s)",
        ]
        for name in self.timings_ms:
            out.append(
                f"  {name:<44} median {self.median(name):7.1f} ms   p95 {self.p95(name):7.1f} ms"
                f"   ({len(self.timings_ms[name])} runs)"
            )
        out.append(f"  queries per refresh: {self.reads} after a new batch, 1 when nothing changed")
        out.append(f"machine: {self.machine}")
        return out


def bench_refresh(
    store_url: str | None = None,
    minutes: int = 1440,
    repeats: int = 20,
    ranges: Iterable[str] = (DEFAULT_RANGE, "24 hours"),
    figures=None,
) -> BenchResult:
    """Time one dashboard refresh over a store holding `minutes` per-minute windows.

    Without `store_url` a temporary SQLite store is used; a Redis URL is flushed first (its
    keys are removed with `Store.reset`). `figures(snapshot)`, when given, is timed too.
    """
    tmp = None
    if store_url is None:
        tmp = tempfile.TemporaryDirectory(prefix="clickstream-bench-")
        store_url = f"sqlite:///{Path(tmp.name) / 'serving.db'}"
    try:
        writer = open_store(store_url)
        writer.reset()
        started = time.perf_counter()
        rows = fill_for_bench(writer, minutes=minutes)
        fill_s = time.perf_counter() - started
        writer.close()
        reader = open_store(store_url, readonly=True)
        timings: dict[str, list[float]] = {}
        reads = 0
        for label in ranges:
            span = TIME_RANGES[label]
            snap = load_snapshot(reader, minutes=span)  # warm-up: connection, page cache
            data, total = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                snap = load_snapshot(reader, minutes=span)
                t1 = time.perf_counter()
                if figures is not None:
                    figures(snap)
                t2 = time.perf_counter()
                data.append((t1 - t0) * 1000)
                total.append((t2 - t0) * 1000)
                reads = snap.reads
            timings[f"new batch, range {label}: data"] = data
            if figures is not None:
                timings[f"new batch, range {label}: data + charts"] = total
        idle = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            if change_marker(reader) == snap.marker:
                with_freshness(snap)
            idle.append((time.perf_counter() - t0) * 1000)
        timings["no new batch (any range)"] = idle
        reader.close()
        return BenchResult(store_url, minutes, rows, fill_s, timings, reads, machine())
    finally:
        if tmp is not None:
            tmp.cleanup()
