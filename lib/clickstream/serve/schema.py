"""What every serving store keeps, whatever its engine: the tables, the batch ledger, the
interface of a store and its errors.

- `METRICS`: the tables the streaming job writes (one per metric), with their keys and columns;
- `ROLLUPS` / `ROLLUP_TABLES`: every windowed metric also kept per 5 and 30 minutes (how their
  rows are computed: `clickstream.serve.rollups`);
- the ledger: one row per applied (job, batch_id), with the batch's health (`HEALTH_COLUMNS`);
- `Store`: what the SQLite and Redis stores (`clickstream.serve.store`) and the PostgreSQL store
  (`clickstream.serve.postgres`) all offer, and `select_sql`, the query both SQL stores read with.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from clickstream.errors import ClickstreamError
from clickstream.times import iso

SCHEMA_VERSION = 3  # 3: rollup tables, and the windows each batch touched in its ledger row

# Ledger rows kept per job: the batch ids a store has applied. A replay only ever repeats the
# last batch or two (Spark's checkpoint says which committed), so the ledger keeps the newest
# ones and counts any id below the oldest it kept as applied.
KEEP_BATCHES = 10_000


class StoreError(ClickstreamError):
    """The serving store is unreachable, missing or of another version."""


class StoreMissingError(StoreError):
    """Nothing has been written yet."""


class StoreVersionError(StoreError):
    """The store was written by another version of the library."""


@dataclass(frozen=True)
class Metric:
    """A table of results: `key` columns identify a row; `windowed` ones have window_start/end."""

    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    windowed: bool = True
    description: str = ""

    @cached_property
    def all_columns(self) -> tuple[str, ...]:
        cols = list(self.key) + [c for c in self.columns if c not in self.key]
        if self.windowed and "window_end" not in cols:
            cols.insert(1, "window_end")
        return tuple(cols)


# Every metric the job writes; the dashboard and `clickstream metrics` read the same names.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "traffic",
            ("window_start", "event_type"),
            ("count",),
            description="events per window and event_type",
        ),
        Metric(
            "segments",
            ("window_start", "country", "device", "category"),
            ("count",),
            description="events per window by country, device and product category",
        ),
        Metric(
            "products",
            ("window_start", "product_id"),
            ("category", "views", "carts", "purchases", "revenue"),
            description="views, add-to-carts, purchases and revenue per product",
        ),
        Metric(
            "active_users", ("window_start",), ("users",), description="distinct users per window"
        ),
        Metric(
            "funnel",
            ("window_start",),
            ("viewed", "carted", "purchased"),
            description="sessions that viewed, then added to cart, then purchased",
        ),
        Metric(
            "sessions",
            ("window_start", "window_end", "user_id", "session_id"),
            ("duration_s", "events"),
            description="session windows per user (gap-based)",
        ),
        Metric(
            "paths",
            ("window_start", "from_page", "to_page"),
            ("count",),
            description="page-to-page transitions per window",
        ),
        Metric(
            "errors",
            ("window_start",),
            ("events", "errors", "error_rate"),
            description="error rate per window",
        ),
        Metric(
            "alerts",
            ("alert_id",),
            ("kind", "status", "opened_at", "closed_at", "peak", "baseline", "detail"),
            windowed=False,
            description="anomaly alerts (open and closed)",
        ),
        Metric(
            "quarantine",
            ("reason",),
            ("count",),
            windowed=False,
            description="records that broke the contract, per reason",
        ),
        Metric(
            "counters",
            ("name",),
            ("value",),
            windowed=False,
            description="late events dropped, duplicates removed, totals",
        ),
    )
}


def normalise(metric: Metric, row: Mapping) -> dict:
    """A row with exactly the metric's columns, times as ISO text."""
    out = {}
    for col in metric.all_columns:
        value = row.get(col)
        if col in ("window_start", "window_end", "opened_at", "closed_at"):
            value = iso(value)
        out[col] = value
    return out


# -- the rollup tables (their contents: clickstream.serve.rollups) ------------------------------
GRAINS_MIN: tuple[int, ...] = (5, 30)  # rollup grains, in minutes, finest first

# Lower bounds, in seconds, of the bands a session's length falls in (the last is open-ended).
SESSION_BANDS: tuple[int, ...] = (
    0, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip


@dataclass(frozen=True)
class Rollup:
    """How one windowed metric rolls up: grouped by `group` within each bucket."""

    metric: str
    group: tuple[str, ...]
    sums: tuple[str, ...] = ()
    maxes: tuple[str, ...] = ()  # peaks, and attributes that do not vary within a key
    ratio: tuple[str, str, str] | None = None  # (column, numerator, denominator)
    label: str = ""  # what the coarse grain shows, where it differs from the fine one

    @property
    def columns(self) -> tuple[str, ...]:
        out = self.sums + self.maxes
        return out + ((self.ratio[0],) if self.ratio else ())

    def table(self, grain_min: int) -> Metric:
        return Metric(
            f"{self.metric}_{grain_min}m",
            ("window_start", *self.group),
            self.columns,
            description=f"{METRICS[self.metric].description}, per {grain_min} minutes",
        )


ROLLUPS: dict[str, Rollup] = {
    r.metric: r
    for r in (
        Rollup("traffic", ("event_type",), sums=("count",)),
        Rollup("segments", ("country", "device", "category"), sums=("count",)),
        Rollup(
            "products",
            ("product_id",),
            sums=("views", "carts", "purchases", "revenue"),
            maxes=("category",),
        ),
        Rollup(
            "active_users",
            (),
            maxes=("users",),
            label="peak distinct users in any one window of the bucket",
        ),
        Rollup("funnel", (), sums=("viewed", "carted", "purchased")),
        Rollup(
            "sessions",
            ("duration_bin",),
            sums=("sessions", "events", "duration_s"),
            label="sessions by start bucket and band of length",
        ),
        Rollup("paths", ("from_page", "to_page"), sums=("count",)),
        Rollup(
            "errors",
            (),
            sums=("events", "errors"),
            ratio=("error_rate", "errors", "events"),
        ),
    )
}

# Every rollup table, by name: the stores create them beside the metrics.
ROLLUP_TABLES: dict[str, Metric] = {
    t.name: t for r in ROLLUPS.values() for t in (r.table(g) for g in GRAINS_MIN)
}


def table_name(metric: str, grain_min: int | None) -> str:
    """The table holding `metric` at `grain_min` minutes (None: the job's own windows)."""
    return metric if not grain_min else f"{metric}_{grain_min}m"


def tables() -> dict[str, Metric]:
    """Every table a store keeps: the metrics, then their rollups (`clickstream.serve.rollups`)."""
    return {**METRICS, **ROLLUP_TABLES}


def metric(name: str) -> Metric:
    """The metric or rollup table called `name`."""
    found = METRICS.get(name) or tables().get(name)
    if found is None:
        raise StoreError(
            f"Unknown metric {name!r}; the store holds: {', '.join(METRICS)} (and their "
            "rollups, such as traffic_5m)."
        )
    return found


def touched_windows(rows: Mapping[str, Iterable[Mapping]]) -> tuple[str | None, str | None]:
    """The first and last window start among a batch's windowed rows (None, None if none):
    kept with the batch, so a reader can re-read just what the batch changed."""
    starts = [
        iso(r["window_start"])
        for name, items in rows.items()
        if metric(name).windowed
        for r in items
    ]
    return (min(starts), max(starts)) if starts else (None, None)


def ledger_row(job: str, batch_id: int, rows: Mapping, health: Mapping | None) -> dict:
    """The batch's row in the ledger: its health, when it committed, the windows it touched."""
    h = dict(health or {})
    first, last = touched_windows(rows)
    h.update(job=job, batch_id=batch_id, committed_at=h.get("committed_at") or time.time())
    h.update(windows_from=first, windows_to=last)
    return h


def differences(got: Mapping[str, list], want: Mapping[str, list], limit: int = 5) -> str:
    """How two stores' `contents()` differ, one line per metric ('' when they are equal)."""
    out = []
    for name in METRICS:
        g, w = got.get(name, []), want.get(name, [])
        if g == w:
            continue
        extra = [r for r in g if r not in w]
        missing = [r for r in w if r not in g]
        out.append(
            f"{name}: {len(g)} rows, expected {len(w)}; unexpected {extra[:limit]}; "
            f"missing {missing[:limit]}"
        )
    return "\n".join(out)


def select_sql(
    m: Metric, table: str, columns: str, mark: str, since=None, until=None, limit=None, where=None
) -> tuple[str, list]:
    """The SELECT behind `Store.read`, for any SQL store: `table` and `columns` quoted for it,
    `mark` its parameter placeholder ('?' or '%s'). Returns (sql, params)."""
    clauses, params = [], []
    if m.windowed and since is not None:
        clauses.append(f"window_start >= {mark}")
        params.append(iso(since))
    if m.windowed and until is not None:
        clauses.append(f"window_start < {mark}")
        params.append(iso(until))
    for col, value in (where or {}).items():
        if col not in m.all_columns:
            raise StoreError(f"{m.name} has no column {col!r}")
        clauses.append(f'"{col}" = {mark}')
        params.append(value)
    cond = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    sql = f"SELECT {columns} FROM {table}{cond}"
    if m.windowed and limit:
        # Every row of the newest `limit` windows: a bounded query, whatever the history.
        newest = (
            f"SELECT DISTINCT window_start FROM {table}{cond} "
            f"ORDER BY window_start DESC LIMIT {int(limit)}"
        )
        sql += (" AND " if cond else " WHERE ") + f"window_start IN ({newest})"
        params = params + params
    elif limit:
        sql += f" LIMIT {int(limit)}"
    order = ", ".join(f'"{k}"' for k in m.key)
    return f"SELECT * FROM ({sql}) AS r ORDER BY {order}", params


class Store:
    """Common interface of the SQLite, Redis and PostgreSQL stores."""

    url: str

    def contents(self) -> dict[str, list[dict]]:
        """Every metric, read in full, metric by metric: what two runs of the job are compared
        by (`differences`)."""
        return {name: self.read(name) for name in METRICS}

    def write_batch(
        self,
        job: str,
        batch_id: int,
        rows: Mapping[str, Iterable[Mapping]],
        health: Mapping | None = None,
    ) -> bool:
        raise NotImplementedError

    def read(
        self,
        name: str,
        since=None,
        until=None,
        limit: int | None = None,
        where: Mapping[str, object] | None = None,
    ) -> list[dict]:
        raise NotImplementedError

    def last_batch(self, job: str) -> int | None:
        raise NotImplementedError

    def add_ledger_rows(self, rows: Iterable[Mapping]) -> None:
        """Add ledger rows (as `ledger_row` makes them) in bulk, as batches already applied and
        never pruned: a long history of batches without writing each (the dashboard bench)."""
        raise NotImplementedError

    def health(self, job: str | None = None, limit: int = 60) -> list[dict]:
        raise NotImplementedError

    def schema_version(self) -> int | None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def use_spark(self, spark) -> None:
        """Write through this Spark session where the store can (PostgreSQL: the JDBC writer)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_version(self) -> None:
        found = self.schema_version()
        if found is None:
            raise StoreMissingError(
                f"No data in {self.url} yet: is the streaming job running? Start it with "
                "`clickstream stream`."
            )
        if found != SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.url} was written with store schema version {found}; this version of "
                f"clickstream reads version {SCHEMA_VERSION}. Rebuild it with "
                "`clickstream stream --reset`."
            )

    def counters(self) -> dict[str, float]:
        return {r["name"]: r["value"] for r in self.read("counters")}


HEALTH_COLUMNS = (
    "job",
    "batch_id",
    "committed_at",
    "input_rows",
    "duration_ms",
    "input_rate",
    "processing_rate",
    "max_event_time",
    "watermark",
    "lag",
    # Spark's own figures, reported once the batch before this one committed: rows its
    # de-duplication dropped as late or repeated, and the size of the job's state store.
    "late_dropped",
    "duplicates_removed",
    "state_rows",
    "state_memory_bytes",
    "state_operators",  # JSON: rows and memory per stateful operator
    "windows_from",  # the first and last window start the batch wrote (rollups excluded)
    "windows_to",
)
