"""The serving store: where the streaming job writes its results and the dashboard reads them.

Chosen by URL: `sqlite:///path/to/serving.db` (default; embedded, no server: one writer, readers in
other processes thanks to WAL mode), `redis://host:port/db` (a real redis-server) or
`postgresql://user@host:port/db` (a warehouse: written through Spark's JDBC writer, see
`clickstream.serve.postgres`).

Writes are idempotent per micro-batch and key: `write_batch(job, batch_id, rows)` applies a batch
in one transaction and records its id; a batch that was already applied (a restarted job replaying
it from its checkpoint) is skipped, and rows are upserts by their metric's key, so a job killed at
any point ends with exactly the same contents as one that never stopped.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from clickstream.errors import ClickstreamError
from clickstream.times import epoch_seconds, iso

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


def _rollups():
    """`clickstream.serve.rollups`, which builds on this module's names (imported when first used)."""
    from clickstream.serve import rollups

    return rollups


def tables() -> dict[str, Metric]:
    """Every table a store keeps: the metrics, then their rollups (`clickstream.serve.rollups`)."""
    return {**METRICS, **_rollups().ROLLUP_TABLES}


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


# -- SQLite ------------------------------------------------------------------------------------
class SQLiteStore(Store):
    """Embedded store: one writer, any number of readers in other processes (WAL mode)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise StoreMissingError(
                    f"No serving store at {self.path} yet: is the streaming job running? Start "
                    "it with `clickstream stream`."
                )
            self.conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=10, check_same_thread=False
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self._create()
        self.conn.row_factory = sqlite3.Row

    def _create(self) -> None:
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.url} has store schema version {row[0]}, this library writes "
                f"{SCHEMA_VERSION}: start over with `clickstream stream --reset`."
            )
        for m in tables().values():
            cols = ", ".join(f'"{col}"' for col in m.all_columns)
            key = ", ".join(f'"{col}"' for col in m.key)
            c.execute(f'CREATE TABLE IF NOT EXISTS "{m.name}" ({cols}, PRIMARY KEY ({key}))')
            if m.windowed:
                c.execute(
                    f'CREATE INDEX IF NOT EXISTS "{m.name}_window" ON "{m.name}" (window_start)'
                )
        c.execute(
            "CREATE TABLE IF NOT EXISTS batches ("
            + ", ".join(HEALTH_COLUMNS)
            + ", PRIMARY KEY (job, batch_id))"
        )
        # The dashboard asks for the newest batches on every refresh: by index, not a scan.
        c.execute("CREATE INDEX IF NOT EXISTS batches_committed ON batches (committed_at)")
        c.execute("CREATE INDEX IF NOT EXISTS batches_job ON batches (job, committed_at)")
        c.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        c.commit()

    def schema_version(self) -> int | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row else None

    def write_batch(self, job, batch_id, rows, health=None) -> bool:
        c = self.conn
        with c:  # one transaction: all of the batch or nothing
            if self._applied(job, batch_id):
                return False
            for name, items in rows.items():
                self._upsert(name, items)
            # Same transaction: the rollups of every bucket the batch touched (reads see it).
            for name, items in _rollups().rollup_rows(self.read, rows).items():
                self._upsert(name, items)
            h = ledger_row(job, batch_id, rows, health)
            c.execute(
                f"INSERT INTO batches ({', '.join(HEALTH_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in HEALTH_COLUMNS)})",
                tuple(h.get(col) for col in HEALTH_COLUMNS),
            )
            c.execute(
                "DELETE FROM batches WHERE job=? AND batch_id <= ?",
                (job, batch_id - KEEP_BATCHES),
            )
        return True

    def _applied(self, job: str, batch_id: int) -> bool:
        """In the ledger, or older than the oldest batch id it still keeps."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM batches WHERE job=? AND batch_id=?), "
            "(SELECT min(batch_id) FROM batches WHERE job=?)",
            (job, batch_id, job),
        ).fetchone()
        return bool(row[0]) or (row[1] is not None and batch_id < row[1])

    def _upsert(self, name: str, items: Iterable[Mapping]) -> None:
        m = metric(name)
        cols = m.all_columns
        sql = (
            f'INSERT OR REPLACE INTO "{m.name}" ({", ".join(chr(34) + x + chr(34) for x in cols)}) '
            f"VALUES ({', '.join('?' for _ in cols)})"
        )
        rows = (normalise(m, r) for r in items)
        self.conn.executemany(sql, [tuple(r[x] for x in cols) for r in rows])

    def read(self, name, since=None, until=None, limit=None, where=None) -> list[dict]:
        m = metric(name)
        try:
            sql, params = select_sql(m, f'"{m.name}"', "*", "?", since, until, limit, where)
            return [dict(r) for r in self.conn.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                self.check_version()
            raise StoreError(f"Reading {name} from {self.url} failed: {exc}") from exc

    def last_batch(self, job):
        row = self.conn.execute("SELECT max(batch_id) FROM batches WHERE job=?", (job,)).fetchone()
        return row[0] if row else None

    def add_ledger_rows(self, rows) -> None:
        with self.conn:
            self.conn.executemany(
                f"INSERT OR IGNORE INTO batches ({', '.join(HEALTH_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in HEALTH_COLUMNS)})",
                (tuple(r.get(c) for c in HEALTH_COLUMNS) for r in rows),
            )

    def health(self, job=None, limit=60):
        sql = "SELECT * FROM batches"
        params: list = []
        if job:
            sql += " WHERE job=?"
            params.append(job)
        sql += f" ORDER BY committed_at DESC LIMIT {int(limit)}"
        return [dict(r) for r in self.conn.execute(sql, params)]

    def reset(self) -> None:
        with self.conn:
            for m in tables().values():
                self.conn.execute(f'DELETE FROM "{m.name}"')
            self.conn.execute("DELETE FROM batches")

    def close(self) -> None:
        self.conn.close()


# -- Redis -------------------------------------------------------------------------------------
class RedisStore(Store):
    """Redis layout: a hash per metric and rollup (field = key as JSON, value = row as JSON), a
    sorted set per windowed one indexing keys by window start, and per job a sorted set of its
    newest applied batch ids (the ledger) and one of its last 500 batches' health."""

    def __init__(self, url: str, prefix: str = "cs"):
        import redis

        from clickstream.redact import redact_text, redact_url

        self.url = redact_url(url)  # for messages: the password stays in the client only
        self.prefix = prefix
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        try:
            self.r.ping()
        except redis.exceptions.AuthenticationError as exc:
            raise StoreError(
                f"Redis at {self.url} refused the login ({redact_text(str(exc), url)}): give "
                "the server's password in the URL, redis://:PASSWORD@host:port/db (with "
                "@ : / ? # in it percent-encoded)."
            ) from None
        except redis.exceptions.ConnectionError as exc:
            raise StoreError(
                f"Redis at {self.url} is not reachable ({redact_text(str(exc), url)}). Start it "
                f"(`redis-server --port {urlparse(url).port or 6379}`) or use the default SQLite "
                "store."
            ) from None

    def _k(self, *parts) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    def schema_version(self):
        value = self.r.hget(self._k("meta"), "schema_version")
        return int(value) if value is not None else None

    def _ensure_version(self) -> None:
        found = self.schema_version()
        if found is None:
            self.r.hset(self._k("meta"), "schema_version", SCHEMA_VERSION)
        elif found != SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.url} has store schema version {found}, this library writes "
                f"{SCHEMA_VERSION}: start over with `clickstream stream --reset`."
            )

    def write_batch(self, job, batch_id, rows, health=None) -> bool:
        """Check the ledger and write the batch as one atomic step: the ledger is WATCHed, so
        if another writer applies a batch of this job in between, EXEC fails and the check
        runs again (two writers of the same batch: one applies it, the other sees it done)."""
        import redis

        self._ensure_version()
        ledger = self._k("batches", job)  # sorted set: the newest KEEP_BATCHES batch ids
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(ledger)
                    if self._applied(pipe, ledger, batch_id):
                        pipe.unwatch()
                        return False
                    # The rollups of the buckets the batch touches, from what the store holds
                    # with the batch's rows in place; written in the same MULTI/EXEC.
                    rolled = _rollups().rollup_rows(self.read, rows)
                    pipe.multi()  # MULTI/EXEC: all of the batch or nothing
                    self._queue_batch(pipe, job, batch_id, rows, rolled, health)
                    pipe.zadd(ledger, {str(batch_id): batch_id})
                    pipe.zremrangebyrank(ledger, 0, -KEEP_BATCHES - 1)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    @staticmethod
    def _applied(pipe, ledger: str, batch_id: int) -> bool:
        """In the ledger, or older than the oldest batch id it still keeps."""
        if pipe.zscore(ledger, str(batch_id)) is not None:
            return True
        oldest = pipe.zrange(ledger, 0, 0, withscores=True)
        return bool(oldest) and batch_id < oldest[0][1]

    def _queue_batch(self, pipe, job, batch_id, rows, rolled, health) -> None:
        for name, items in [*rows.items(), *rolled.items()]:
            m = metric(name)
            for row in items:
                row = normalise(m, row)
                field = json.dumps([row[k] for k in m.key])
                pipe.hset(self._k("m", m.name), field, json.dumps(row))
                if m.windowed:
                    score = epoch_seconds(row["window_start"])
                    pipe.zadd(self._k("idx", m.name), {field: score})
        h = ledger_row(job, batch_id, rows, health)
        pipe.zadd(self._k("health", job), {json.dumps(h, default=str): float(batch_id)})
        pipe.zremrangebyrank(self._k("health", job), 0, -501)  # keep the last 500 batches
        pipe.sadd(self._k("jobs"), job)

    def read(self, name, since=None, until=None, limit=None, where=None):
        m = metric(name)
        if self.schema_version() is None and not self.r.exists(self._k("m", m.name)):
            self.check_version()
        if m.windowed:
            lo = epoch_seconds(since) if since is not None else "-inf"
            hi = f"({epoch_seconds(until)}" if until is not None else "+inf"
            if limit:
                fields = self.r.zrevrangebyscore(self._k("idx", m.name), hi, lo)
                starts = []
                for f in fields:  # keep every row of the newest `limit` windows
                    start = json.loads(f)[0]
                    if start not in starts:
                        if len(starts) == int(limit):
                            break
                        starts.append(start)
                fields = [f for f in fields if json.loads(f)[0] in starts]
            else:
                fields = self.r.zrangebyscore(self._k("idx", m.name), lo, hi)
            values = self.r.hmget(self._k("m", m.name), fields) if fields else []
        else:
            values = list(self.r.hgetall(self._k("m", m.name)).values())
            if limit:
                values = values[: int(limit)]
        rows = [json.loads(v) for v in values if v is not None]
        for col, value in (where or {}).items():
            if col not in m.all_columns:
                raise StoreError(f"{name} has no column {col!r}")
            rows = [r for r in rows if r.get(col) == value]
        rows.sort(key=lambda r: tuple("" if r[k] is None else r[k] for k in m.key))
        return rows

    def last_batch(self, job):
        newest = self.r.zrange(self._k("batches", job), -1, -1, withscores=True)
        return int(newest[0][1]) if newest else None

    def add_ledger_rows(self, rows) -> None:
        """The rows' batch ids join their job's ledger (the health of the last 500 batches is
        kept apart, by `write_batch`)."""
        ids: dict[str, list[int]] = {}
        for row in rows:
            ids.setdefault(row["job"], []).append(int(row["batch_id"]))
        for job, batch_ids in ids.items():
            for i in range(0, len(batch_ids), 50_000):  # bounded commands, however many
                chunk = batch_ids[i : i + 50_000]
                self.r.zadd(self._k("batches", job), {str(b): b for b in chunk})

    def health(self, job=None, limit=60):
        jobs = [job] if job else sorted(self.r.smembers(self._k("jobs")))
        rows = []
        for j in jobs:
            rows += [json.loads(v) for v in self.r.zrevrange(self._k("health", j), 0, limit - 1)]
        rows.sort(key=lambda r: r["committed_at"], reverse=True)
        return rows[:limit]

    def reset(self) -> None:
        keys = list(self.r.scan_iter(self._k("*")))
        if keys:
            self.r.delete(*keys)

    def close(self) -> None:
        self.r.close()


POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_store(url: str | None = None, readonly: bool = False) -> Store:
    """The store at `url` (default: CLICKSTREAM_STORE, else SQLite in the state directory)."""
    from clickstream.config import check_store_url, get_settings

    if url is None:
        url = get_settings().default_store_url
    try:
        check_store_url(url)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # As in SQLAlchemy: sqlite:///relative/file.db, sqlite:////absolute/file.db
        return SQLiteStore(url[len("sqlite:///") :], readonly=readonly)
    if parsed.scheme in ("redis", "rediss"):
        return RedisStore(url)
    from clickstream.serve.postgres import PostgresStore  # the check left postgresql://

    return PostgresStore(url, readonly=readonly)
