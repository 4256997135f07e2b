"""The PostgreSQL serving store: the warehouse path (the role Redshift plays in production).

`postgresql://user:password@host:5432/database` (or `postgres://`; libpq's query parameters such
as `sslmode` pass through; `?schema=NAME` picks the PostgreSQL schema, `clickstream` by default).
The dashboard and `clickstream metrics` read it with psycopg exactly as they read SQLite.

How a batch is written, idempotently:

1. Spark's JDBC writer appends the batch's rows, every metric in one wide `staging` table keyed
   by (job, batch_id, seq), with the streaming job's session (`DataFrame.write.jdbc`; the job
   hands it over with `use_spark`, other writers use the running session if there is one).
   Without a Spark session (a test writing directly, the dashboard benchmark) the same rows go
   in with COPY through psycopg instead.
2. One transaction through psycopg: record (job, batch_id) in `batches` (a batch already there
   ends the transaction: it was applied before), check that every staged row arrived, upsert
   each metric from staging into its table (`INSERT ... ON CONFLICT (key) DO UPDATE`, the last
   row of a key winning, as SQLite's `INSERT OR REPLACE` does), write health, clear staging,
   commit.

A crash before the commit leaves nothing visible: staged rows are not read by anyone, and the
retried batch clears and re-stages them. Staging is UNLOGGED (fast, not replicated); should the
server crash and empty it between the two steps, the row count check fails the batch rather
than committing it empty, and the job's retry stages it again.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from clickstream.redact import redact_text, redact_url
from clickstream.serve.rollups import rollup_rows
from clickstream.serve.schema import (
    HEALTH_COLUMNS,
    KEEP_BATCHES,
    METRICS,
    SCHEMA_VERSION,
    Store,
    StoreError,
    StoreVersionError,
    ledger_row,
    metric,
    normalise,
    select_sql,
    tables,
)
from clickstream.times import iso

DEFAULT_SCHEMA = "clickstream"
TIME, FLOAT, INT, TEXT = "timestamptz", "double precision", "bigint", "text"

# The PostgreSQL type of every column the metrics and the health rows use.
COLUMN_TYPES: dict[str, str] = {
    **dict.fromkeys(("window_start", "window_end", "opened_at", "closed_at"), TIME),
    **dict.fromkeys(("max_event_time", "watermark", "windows_from", "windows_to"), TIME),
    **dict.fromkeys(("revenue", "error_rate", "duration_s", "peak", "baseline"), FLOAT),
    **dict.fromkeys(("committed_at", "duration_ms", "input_rate", "processing_rate"), FLOAT),
    **dict.fromkeys(
        ("count", "views", "carts", "purchases", "users", "viewed", "carted", "purchased"), INT
    ),
    **dict.fromkeys(("events", "errors", "value", "batch_id", "input_rows", "lag"), INT),
    **dict.fromkeys(("sessions", "duration_bin"), INT),
    **dict.fromkeys(
        ("late_dropped", "duplicates_removed", "state_rows", "state_memory_bytes"), INT
    ),
    **dict.fromkeys(
        (
            "event_type",
            "country",
            "device",
            "category",
            "product_id",
            "user_id",
            "session_id",
            "from_page",
            "to_page",
            "alert_id",
            "kind",
            "status",
            "detail",
            "reason",
            "name",
            "job",
            "state_operators",
        ),
        TEXT,
    ),
}

# Staging holds every metric's columns; times as ISO text, cast when upserted.
STAGING_KEY = ("job", "batch_id", "metric", "seq")
STAGING_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(c for m in METRICS.values() for c in m.all_columns)
)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def column_type(column: str) -> str:
    try:
        return COLUMN_TYPES[column]
    except KeyError:
        raise StoreError(
            f"The PostgreSQL store has no type for column {column!r}: add it to "
            "clickstream.serve.postgres.COLUMN_TYPES."
        ) from None


def split_url(url: str) -> tuple[str, str]:
    """'postgresql://...?schema=s&sslmode=x' -> (libpq URL without `schema`, schema)."""
    parts = urlsplit(url)
    schema, rest = DEFAULT_SCHEMA, []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not _SCHEMA_NAME.match(schema):
        raise StoreError(
            f"Invalid schema {schema!r} in the store URL: use lower-case letters, digits and "
            "underscores (for example ?schema=clickstream)."
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def active_spark():
    """The Spark session running in this process, if any (never starts one)."""
    if "pyspark.sql" not in sys.modules:
        return None
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is None:
        return None
    return SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()


class _AlreadyApplied(Exception):
    pass


class PostgresStore(Store):
    """Metrics in PostgreSQL tables, written through Spark's JDBC writer and a staging table."""

    def __init__(self, url: str, readonly: bool = False):
        try:
            import psycopg
        except ImportError:  # pragma: no cover - psycopg is a dependency
            raise StoreError(
                "The PostgreSQL store needs psycopg: `pip install 'psycopg[binary]'` (or "
                "`make setup`)."
            ) from None
        self._psycopg = psycopg
        self.url = redact_url(url)
        self.readonly = readonly
        self._conninfo, self.schema = split_url(url)
        self.spark = None
        self.conn = self._connect()
        if not readonly:
            self._create()

    # -- connection ----------------------------------------------------------------------------
    def _connect(self):
        psycopg = self._psycopg
        try:
            params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        except psycopg.ProgrammingError as exc:
            # libpq quotes the part it cannot parse, which may be the password.
            reason = redact_text(str(exc), self._conninfo)
            raise StoreError(f"Invalid PostgreSQL URL {self.url}: {reason}") from None
        params.setdefault("connect_timeout", "10")
        params.setdefault("application_name", "clickstream")
        try:
            return psycopg.connect(**params, autocommit=True)
        except psycopg.OperationalError as exc:
            text = redact_text(str(exc).strip(), self._conninfo)
            reason = text.splitlines()[-1] if text else type(exc).__name__
            raise StoreError(
                f"Cannot connect to PostgreSQL at {self.url}: {reason}. Is the server running, "
                "and does the URL name its host, port, database and user (the database must "
                "exist: `createdb NAME`)? Or use the default SQLite store (no --store)."
            ) from None

    def _t(self, table: str) -> str:
        return f"{_q(self.schema)}.{_q(table)}"

    def _query(self, sql: str, params=(), what: str = "Reading") -> list[tuple]:
        """Run a read; reconnect once if the server closed the connection (a restart)."""
        psycopg = self._psycopg
        for attempt in (1, 2):
            try:
                with self.conn.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall()
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
                self.check_version()  # raises StoreMissingError when nothing was written yet
                raise StoreError(f"{what} {self.url} failed: {exc}") from None
            except psycopg.OperationalError as exc:
                if attempt == 1 and self.conn.closed:
                    self.conn = self._connect()
                    continue
                raise StoreError(f"{what} {self.url} failed: {exc}") from None
            except psycopg.Error as exc:
                raise StoreError(f"{what} {self.url} failed: {exc}") from None
        raise AssertionError("unreachable")

    # -- schema --------------------------------------------------------------------------------
    def _create(self) -> None:
        conn = self.conn
        with conn.transaction(), conn.cursor() as cur:
            # One creator at a time (two jobs starting together would race on IF NOT EXISTS).
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"clickstream:{self.schema}",)
            )
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(self.schema)}")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self._t('meta')} (key text PRIMARY KEY, value text)"
            )
            cur.execute(f"SELECT value FROM {self._t('meta')} WHERE key = 'schema_version'")
            row = cur.fetchone()
            if row is not None and int(row[0]) != SCHEMA_VERSION:
                raise StoreVersionError(
                    f"{self.url} has store schema version {row[0]}, this library writes "
                    f"{SCHEMA_VERSION}: start over with `clickstream stream --reset`."
                )
            self._create_metric_tables(cur)
            self._create_ledger(cur)
            self._create_staging(cur)
            cur.execute(
                f"INSERT INTO {self._t('meta')} VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )

    def _create_metric_tables(self, cur) -> None:
        """A table per metric and rollup, keyed as the metric is; windowed ones indexed by start."""
        for m in tables().values():
            cols = ", ".join(
                f"{_q(c)} {column_type(c)}" + (" NOT NULL" if c in m.key else "")
                for c in m.all_columns
            )
            key = ", ".join(_q(c) for c in m.key)
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self._t(m.name)} ({cols}, PRIMARY KEY ({key}))"
            )
            if m.windowed:
                cur.execute(
                    f"CREATE INDEX IF NOT EXISTS {_q(m.name + '_window')} "
                    f"ON {self._t(m.name)} (window_start)"
                )

    def _create_ledger(self, cur) -> None:
        """`batches`: a row per applied batch with its health."""
        health = ", ".join(f"{_q(c)} {column_type(c)}" for c in HEALTH_COLUMNS)
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._t('batches')} "
            f"({health}, PRIMARY KEY (job, batch_id))"
        )
        # The dashboard asks for the newest batches on every refresh: by index.
        cur.execute(
            f"CREATE INDEX IF NOT EXISTS batches_committed ON {self._t('batches')} (committed_at)"
        )
        cur.execute(
            f"CREATE INDEX IF NOT EXISTS batches_job ON {self._t('batches')} (job, committed_at)"
        )

    def _create_staging(self, cur) -> None:
        """`staging`: every metric's columns, times as text, keyed by (job, batch_id, seq)."""
        staged = ", ".join(
            f"{_q(c)} {TEXT if column_type(c) == TIME else column_type(c)}" for c in STAGING_COLUMNS
        )
        cur.execute(
            f"CREATE UNLOGGED TABLE IF NOT EXISTS {self._t('staging')} "
            f"(job text NOT NULL, batch_id bigint NOT NULL, metric text NOT NULL, "
            f"seq bigint NOT NULL, {staged})"
        )
        cur.execute(
            f"CREATE INDEX IF NOT EXISTS staging_batch ON {self._t('staging')} (job, batch_id)"
        )

    def schema_version(self) -> int | None:
        psycopg = self._psycopg
        try:
            with self.conn.cursor() as cur:
                cur.execute(f"SELECT value FROM {self._t('meta')} WHERE key = 'schema_version'")
                row = cur.fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return None
        except psycopg.Error as exc:
            raise StoreError(f"Reading {self.url} failed: {exc}") from None
        return int(row[0]) if row else None

    # -- writing -------------------------------------------------------------------------------
    def use_spark(self, spark) -> None:
        self.spark = spark

    def write_batch(self, job, batch_id, rows, health=None) -> bool:
        if self._is_applied(job, batch_id):
            return False
        staged = self.staging_rows(job, batch_id, rows)
        self._clear_staging(job, batch_id)  # what a crashed attempt left
        if staged:
            spark = self.spark or active_spark()
            if spark is not None:
                self._stage_with_spark(spark, staged)
            else:
                self._stage_with_sql(staged)
        return self._commit(job, batch_id, rows, len(staged), health)

    def staging_rows(self, job: str, batch_id: int, rows) -> list[tuple]:
        """The batch as staging rows: (job, batch_id, metric, seq, *STAGING_COLUMNS)."""
        out: list[tuple] = []
        index = {c: i for i, c in enumerate(STAGING_COLUMNS)}
        for name, items in rows.items():
            m = metric(name)
            for row in items:
                values: list = [None] * len(STAGING_COLUMNS)
                for col, value in normalise(m, row).items():
                    values[index[col]] = _staged_value(m.name, col, value)
                out.append((job, int(batch_id), m.name, len(out), *values))
        return out

    def _is_applied(self, job: str, batch_id: int) -> bool:
        """In the ledger, or older than the oldest batch id it still keeps."""
        t = self._t("batches")
        ((found, oldest),) = self._query(
            f"SELECT EXISTS (SELECT 1 FROM {t} WHERE job = %s AND batch_id = %s), "
            f"(SELECT min(batch_id) FROM {t} WHERE job = %s)",
            (job, batch_id, job),
            what="Writing to",
        )
        return bool(found) or (oldest is not None and batch_id < oldest)

    def _clear_staging(self, job: str, batch_id: int) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                f"DELETE FROM {self._t('staging')} WHERE job = %s AND batch_id = %s",
                (job, batch_id),
            )

    def _stage_with_spark(self, spark, staged: list[tuple]) -> None:
        """Append the staging rows with Spark's JDBC writer (the streaming job's path)."""
        from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

        spark_type = {TIME: StringType(), TEXT: StringType(), FLOAT: DoubleType(), INT: LongType()}
        schema = StructType(
            [
                StructField("job", StringType(), False),
                StructField("batch_id", LongType(), False),
                StructField("metric", StringType(), False),
                StructField("seq", LongType(), False),
                *(StructField(c, spark_type[column_type(c)]) for c in STAGING_COLUMNS),
            ]
        )
        url, properties = self.jdbc()
        try:
            frame = spark.createDataFrame(staged, schema).coalesce(1)
            frame.write.jdbc(url, f"{self.schema}.staging", mode="append", properties=properties)
        except Exception as exc:  # noqa: BLE001 - py4j wraps every JVM error alike
            text = str(exc)
            if "org.postgresql.Driver" in text or "No suitable driver" in text:
                raise StoreError(
                    "Spark has no PostgreSQL JDBC driver: create the session with "
                    "clickstream.process.spark.get_spark() before any other (jars cannot be added to a "
                    "running JVM), after `clickstream setup`."
                ) from None
            first = next((line for line in text.splitlines() if line.strip()), text)
            raise StoreError(
                f"Spark's JDBC write to {self.url} failed: {first[:500]}. Is the server "
                "reachable from Spark's executors under the URL's host name?"
            ) from None

    def _stage_with_sql(self, staged: list[tuple]) -> None:
        """Without Spark (direct writes): COPY the staging rows through psycopg."""
        self._copy("staging", (*STAGING_KEY, *STAGING_COLUMNS), staged)

    def _copy(self, table: str, columns: tuple[str, ...], rows: Iterable[tuple]) -> None:
        """Append `rows` (values in the order of `columns`) to `table` with COPY, in one
        transaction."""
        cols = ", ".join(_q(c) for c in columns)
        with (
            self.conn.transaction(),
            self.conn.cursor() as cur,
            cur.copy(f"COPY {self._t(table)} ({cols}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def add_ledger_rows(self, rows) -> None:
        self._copy(
            "batches", HEALTH_COLUMNS, (tuple(r.get(c) for c in HEALTH_COLUMNS) for r in rows)
        )

    def _commit(self, job, batch_id, rows, expected: int, health) -> bool:
        """Apply the staged batch in one transaction; False if it had been applied before."""
        psycopg = self._psycopg
        rows = {name: list(items) for name, items in rows.items()}
        h = ledger_row(job, batch_id, rows, health)
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                if self._is_applied(job, batch_id):  # e.g. pruned from the ledger long ago
                    raise _AlreadyApplied
                cur.execute(
                    f"INSERT INTO {self._t('batches')} ({', '.join(HEALTH_COLUMNS)}) "
                    f"VALUES ({', '.join('%s' for _ in HEALTH_COLUMNS)}) "
                    "ON CONFLICT (job, batch_id) DO NOTHING",
                    tuple(h.get(col) for col in HEALTH_COLUMNS),
                )
                if cur.rowcount == 0:
                    raise _AlreadyApplied
                cur.execute(
                    f"SELECT count(DISTINCT seq) FROM {self._t('staging')} "
                    "WHERE job = %s AND batch_id = %s",
                    (job, batch_id),
                )
                found = cur.fetchone()[0]
                if found != expected:
                    raise StoreError(
                        f"Batch {batch_id} of {job}: {found} of its {expected} rows reached the "
                        f"staging table of {self.url}; nothing was applied. Run the job again: "
                        "it retries the batch."
                    )
                for name, items in rows.items():
                    if items:
                        self._upsert(cur, name, job, batch_id)
                # The rollups of the buckets the batch touched, read and written in the same
                # transaction (the reads go through this connection, so they see the batch).
                for name, items in rollup_rows(self.read, rows).items():
                    self._upsert_rows(cur, name, items)
                cur.execute(
                    f"DELETE FROM {self._t('staging')} WHERE job = %s AND batch_id <= %s",
                    (job, batch_id),
                )
                cur.execute(
                    f"DELETE FROM {self._t('batches')} WHERE job = %s AND batch_id <= %s",
                    (job, batch_id - KEEP_BATCHES),
                )
        except _AlreadyApplied:
            self._clear_staging(job, batch_id)
            return False
        except psycopg.Error as exc:
            raise StoreError(f"Writing batch {batch_id} to {self.url} failed: {exc}") from None
        return True

    def _upsert(self, cur, name: str, job: str, batch_id: int) -> None:
        m = metric(name)
        cols = m.all_columns
        key = ", ".join(_q(c) for c in m.key)
        select = ", ".join(
            f"{_q(c)}::{TIME} AS {_q(c)}" if column_type(c) == TIME else _q(c) for c in cols
        )
        updates = ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in cols if c not in m.key)
        cur.execute(
            f"INSERT INTO {self._t(m.name)} ({', '.join(_q(c) for c in cols)}) "
            f"SELECT DISTINCT ON ({key}) {select} FROM {self._t('staging')} "
            "WHERE job = %s AND batch_id = %s AND metric = %s "
            f"ORDER BY {key}, seq DESC "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}",
            (job, batch_id, m.name),
        )

    def _upsert_rows(self, cur, name: str, items: list[dict]) -> None:
        """Upsert rows given in Python (the rollups) by their key."""
        m = metric(name)
        cols = m.all_columns
        key = ", ".join(_q(c) for c in m.key)
        values = ", ".join(f"%s::{TIME}" if column_type(c) == TIME else "%s" for c in cols)
        updates = ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in cols if c not in m.key)
        cur.executemany(
            f"INSERT INTO {self._t(m.name)} ({', '.join(_q(c) for c in cols)}) "
            f"VALUES ({values}) ON CONFLICT ({key}) DO UPDATE SET {updates}",
            [tuple(normalise(m, r)[c] for c in cols) for r in items],
        )

    def jdbc(self) -> tuple[str, dict[str, str]]:
        """The JDBC URL and properties of this store's database, for Spark's writer."""
        info = self.conn.info
        host = info.host if info.host and not info.host.startswith("/") else "localhost"
        if ":" in host:
            host = f"[{host}]"
        url = f"jdbc:postgresql://{host}:{info.port}/{quote(info.dbname, safe='')}"
        props = {"driver": "org.postgresql.Driver", "user": info.user}
        if info.password:
            props["password"] = info.password
        for key, value in info.get_parameters().items():
            if key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
                props[key] = value
        props["ApplicationName"] = "clickstream-spark"
        props["reWriteBatchedInserts"] = "true"
        return url, props

    # -- reading -------------------------------------------------------------------------------
    def read(self, name, since=None, until=None, limit=None, where=None) -> list[dict]:
        m = metric(name)
        cols = m.all_columns
        sql, params = select_sql(
            m, self._t(m.name), ", ".join(_q(c) for c in cols), "%s", since, until, limit, where
        )
        times = [i for i, c in enumerate(cols) if column_type(c) == TIME]
        out = []
        for values in self._query(sql, params):
            row = dict(zip(cols, values, strict=True))
            for i in times:
                row[cols[i]] = iso(values[i])
            out.append(row)
        return out

    def last_batch(self, job):
        rows = self._query(f"SELECT max(batch_id) FROM {self._t('batches')} WHERE job = %s", (job,))
        return rows[0][0] if rows else None

    def health(self, job=None, limit=60):
        sql = f"SELECT {', '.join(HEALTH_COLUMNS)} FROM {self._t('batches')}"
        params: list = []
        if job:
            sql += " WHERE job = %s"
            params.append(job)
        sql += f" ORDER BY committed_at DESC LIMIT {int(limit)}"
        out = []
        for values in self._query(sql, params):
            row = dict(zip(HEALTH_COLUMNS, values, strict=True))
            for col in ("max_event_time", "watermark", "windows_from", "windows_to"):
                row[col] = iso(row[col])
            out.append(row)
        return out

    def reset(self) -> None:
        names = ", ".join(self._t(t) for t in (*tables(), "batches", "staging"))
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(f"TRUNCATE {names}")

    def close(self) -> None:
        self.conn.close()


def _staged_value(name: str, col: str, value):
    """A row's value in its staging column's type (whole numbers for counts, floats, text)."""
    if value is None:
        return None
    kind = column_type(col)
    if kind == INT:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return int(value)
        raise StoreError(f"{name}.{col} must be a whole number, not {value!r}")
    if kind == FLOAT:
        return float(value)
    return value if isinstance(value, str) else str(value)
