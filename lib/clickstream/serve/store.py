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
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse

from clickstream.serve import rollups
from clickstream.serve.postgres import PostgresStore
from clickstream.serve.schema import (
    HEALTH_COLUMNS,
    KEEP_BATCHES,
    METRICS,
    SCHEMA_VERSION,
    Store,
    StoreError,
    StoreMissingError,
    StoreVersionError,
    differences,
    ledger_row,
    metric,
    normalise,
    select_sql,
    tables,
)
from clickstream.times import epoch_seconds, iso

# What callers import from here: the stores, and the schema every store shares.
__all__ = [
    "HEALTH_COLUMNS",
    "KEEP_BATCHES",
    "METRICS",
    "POSTGRES_SCHEMES",
    "SCHEMA_VERSION",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreMissingError",
    "StoreVersionError",
    "differences",
    "iso",
    "ledger_row",
    "metric",
    "normalise",
    "open_store",
    "select_sql",
    "tables",
]


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
            for name, items in rollups.rollup_rows(self.read, rows).items():
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
                    rolled = rollups.rollup_rows(self.read, rows)
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
    return PostgresStore(url, readonly=readonly)
