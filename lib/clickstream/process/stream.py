"""The streaming job (`clickstream stream`): Kafka -> Spark Structured Streaming -> serving store.

The job is built from Spark's own operators, the functions of `clickstream.process.pipeline` that the
notebooks build step by step; every per-event step runs on the executors, all state lives in
Spark's state store (RocksDB), and the driver only receives aggregated rows:

    read_kafka -> contract_checked -> with_watermark -> unique_events -> metric_facts
               -> window_metrics        the windows query (update mode, checkpoint `spark/`):
                                        traffic, segments, products, active_users, funnel and
                                        errors per window, quarantine counts, totals
    read_kafka -> contract_checked -> with_watermark -> session_metrics
                                        the sessions query (append mode, `sessions/`): sessions
                                        and page paths, once the watermark passes a session's end
    read_kafka -> contract_checked -> quarantine_messages
                                        quarantined records to the quarantine topic (Spark's
                                        Kafka sink, `quarantine/`), when one is set

Why two stateful queries: the windowed metrics must be updated as events arrive (update mode),
and Spark supports session windows in append mode only, and one streaming aggregation per
query in update mode. Both queries apply the same contract and the same watermark rule to the
same records, so, as the tests check, they agree with one ground truth.

Exactly-once. Spark's checkpoint fixes each batch's offsets (and its watermark and clock) before
it runs, and Spark's state store versions its state per batch, so a replayed batch produces the
same rows. `foreachBatch` writes them with `Store.write_batch(job, batch_id, ...)`: one
transaction that applies each (job, batch) once, every row an absolute value. Path counts grow
as sessions close; they are added to the stored counts in that same transaction, so they are
exactly-once too. Alerts: the anomaly detector runs on the driver, fed closed windows in order
(their final counts, from the store) and its own small state is saved as JSON per batch beside
the checkpoint. Topic outputs (alerts, quarantined records) are at-least-once.

Counters: `records` (from the batch's Kafka offsets), `events` and `quarantined` (Spark state)
are exact; `late_dropped` and `duplicates_removed` are Spark's operator metrics
(`numRowsDroppedByWatermark`, `numDroppedDuplicateRows`), which Spark reports once a batch has
committed: they are added with the next batch, so a batch that ran just before a crash or a
stop may be missing from them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC
from pathlib import Path
from typing import Any

from clickstream import events
from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError, StreamJobError
from clickstream.process.anomaly import AnomalyDetector, DetectorConfig
from clickstream.process.checkpoint import (
    batch_info,
    checkpoint_offsets,
    records_through,
)
from clickstream.redact import redact_text, redact_url, without_credentials
from clickstream.serve.store import Store, StoreMissingError, open_store
from clickstream.times import duration_us, iso_us, parse_iso, to_us

JOB = "stream"  # the windows query's batches in the store
SESSIONS_JOB = "stream-sessions"  # the sessions query's batches
STATE_VERSION = 2
MISSING = "-"  # segment value when the event does not say
DEFAULT_ALERTS_TOPIC = "clickstream_alerts"
DEFAULT_QUARANTINE_TOPIC = "clickstream_quarantine"
DEFAULT_MAX_OFFSETS_PER_TRIGGER = 100_000  # a backlog is read in bounded micro-batches
COUNTERS = ("records", "quarantined", "late_dropped", "duplicates_removed", "events")

_US = 1_000_000


class CheckpointMismatchError(StreamJobError):
    """The checkpoint belongs to another topic, configuration or store, or the topic changed."""


def _paths_summed(sessions):
    """A sessions batch as the driver collects it: paths come out of `session_metrics` one row
    per transition, so they are summed per window on the executors first (one pass over the
    batch: a session's row is its own group)."""
    from pyspark.sql import functions as F

    keys = ("metric", "window_start", "window_end", "k1", "k2", "duration_us")
    return sessions.groupBy(*keys).agg(F.sum("n").alias("n"))


def _run_only(df) -> None:
    """Run a micro-batch's DataFrame and throw its rows away (Spark's noop sink)."""
    df.write.format("noop").mode("overwrite").save()


# Spark tells a query that `stop()` interrupted from one that failed by matching the error text
# of its foreachBatch function with a regular expression,
#   py4j.protocol.Py4JJavaError: An error occurred while calling((.|\r\n|\r|\n)*)(<one of these>)
# that recurses once per character: the Java stack trace a Py4J error carries (some kilobytes)
# overflows the thread's stack, and the query's thread dies with a StackOverflowError (a
# thousand lines on the console) instead of stopping, or of failing with its cause.
_INTERRUPTIONS = (
    "java.lang.InterruptedException",
    "java.io.InterruptedIOException",
    "java.nio.channels.ClosedByInterruptException",
)


_SPARK_STOP_PREFIX = "An error occurred while calling"  # where Spark's regular expression starts
_TRACE_LIMIT = 20_000  # characters of a failure's Java stack trace kept (about 200 frames)


class SparkBatchError(Exception):
    """A Spark job inside a micro-batch failed: the Java exception, then its stack trace."""


def _java_trace(exc) -> str:
    """The Java stack trace of a Py4J error (its frames and causes), or "" when the JVM cannot
    give it."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - the JVM may be going away
        return ""
    # Py4J's text: "An error occurred while calling o1.collectToPython.\n: <the trace>".
    trace = text.split("\n", 1)[1] if text.startswith(_SPARK_STOP_PREFIX) and "\n" in text else text
    return trace.lstrip(": ")[:_TRACE_LIMIT]


def _short_java_errors(callback: Callable[[Any, int], None]) -> Callable[[Any, int], None]:
    """`callback` for foreachBatch, raising a Java error in a form Spark's regular expression
    reads safely (see above): the short form Spark knows for an interruption (a stop); for a
    failure, its message and stack trace without the words the expression starts from."""
    from py4j.protocol import Py4JJavaError

    @functools.wraps(callback)
    def run(df, batch_id: int) -> None:
        try:
            callback(df, batch_id)
        except Py4JJavaError as exc:
            try:
                java = str(exc.java_exception.toString())
            except Exception:  # noqa: BLE001 - the JVM may be going away
                java = type(exc).__name__
            if java.split(":", 1)[0].strip() in _INTERRUPTIONS:
                # Stopped mid-batch: the short form of the same error, which Spark recognises.
                raise SparkBatchError(
                    f"py4j.protocol.Py4JJavaError: An error occurred while calling Spark: {java}"
                ) from None
            # A failure: its message first (the job's error says it), then the Java stack
            # trace, which `--debug` shows, without the words Spark's expression starts from.
            trace = _java_trace(exc)
            if trace.startswith(java):
                trace = trace[len(java) :].lstrip("\n")
            text = f"{java[:4000]}\n{trace}" if trace else java[:4000]
            raise SparkBatchError(
                text.replace(_SPARK_STOP_PREFIX, "An error occurred calling")
            ) from None

    return run


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """The event-time settings every metric shares, in microseconds."""

    window_us: int
    slide_us: int
    delay_us: int
    gap_us: int


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
    trigger: str = "500 milliseconds"
    # The sessions and quarantine queries: what they write changes only when a session closes
    # or a record is rejected, so they run less often and leave the CPU to the windows query.
    side_trigger: str = "10 seconds"
    available_now: bool = False
    max_offsets_per_trigger: int | None = DEFAULT_MAX_OFFSETS_PER_TRIGGER
    max_ahead: str = "1 day"  # event times further past the batch's clock are quarantined
    alerts_topic: str | None = DEFAULT_ALERTS_TOPIC
    quarantine_topic: str | None = DEFAULT_QUARANTINE_TOPIC
    master: str | None = None
    reset: bool = False
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    @classmethod
    def create(cls, settings: Settings | None = None, **options) -> StreamConfig:
        """Defaults from settings; None options keep the default. The checkpoint defaults to
        one directory per topic and store (whatever the login), so two stores never share one."""
        settings = settings or get_settings()
        options = {k: v for k, v in options.items() if v is not None}
        topic = options.pop("topic", settings.topic)
        bootstrap = options.pop("bootstrap_servers", settings.bootstrap_servers)
        store_url = options.pop("store_url", settings.default_store_url)
        checkpoint = options.pop("checkpoint", None)
        if checkpoint is None:
            digest = hashlib.sha1(without_credentials(store_url).encode()).hexdigest()[:10]
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
        duration_us(self.max_ahead, "--max-ahead")
        for every, name in ((self.trigger, "--trigger"), (self.side_trigger, "--side-trigger")):
            duration_us(every, name)
        return Spec(window_us=window, slide_us=slide, delay_us=delay, gap_us=gap)

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["store_url"] = redact_url(self.store_url)
        return f"StreamConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def identity(self) -> dict:
        """What a checkpoint is bound to: reusing it with other values would mix results. The
        store is named without its login: another password is the same store."""
        spec = self.spec()
        return {
            "topic": self.topic,
            "store_url": without_credentials(self.store_url),
            "window_us": spec.window_us,
            "slide_us": spec.slide_us,
            "watermark_us": spec.delay_us,
            "session_gap_us": spec.gap_us,
            "state_version": STATE_VERSION,
        }


# -- the detector's state, per batch -----------------------------------------------------------
class DetectorFiles:
    """The anomaly detector's state after batch N, as JSON in `detector/N.json` (atomically)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def path(self, batch_id: int) -> Path:
        return self.dir / f"{batch_id}.json"

    def exists(self, batch_id: int) -> bool:
        return batch_id < 0 or self.path(batch_id).exists()

    def load(self, batch_id: int) -> dict:
        if batch_id < 0:
            return {}
        try:
            return json.loads(self.path(batch_id).read_text())
        except FileNotFoundError:
            raise CheckpointMismatchError(
                f"The anomaly detector's state after batch {batch_id} is missing from "
                f"{self.dir}, so batch {batch_id + 1} cannot be computed exactly. Start over with "
                "`clickstream stream --reset`."
            ) from None

    def save(self, batch_id: int, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(batch_id)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one

    def prune(self, keep_from: int) -> None:
        """Delete states older than `keep_from` (the newest two are all a restart needs)."""
        for item in self.dir.glob("*.json"):
            stem = item.name[: -len(".json")]
            if stem.isdigit() and int(stem) < keep_from:
                item.unlink(missing_ok=True)


# -- the job -----------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a run did (this process only): batches of the windows query."""

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


@dataclass
class Queries:
    """The job's streaming DataFrames, as `build_queries` assembles them."""

    windows: Any
    sessions: Any
    quarantine: Any | None


def spark_interval(text: str | None) -> str | None:
    """A duration as Spark's interval syntax reads it ('90s' and '2 min' are ours, not
    Spark's)."""
    if text is None:
        return None
    us = duration_us(text)
    return f"{us // _US} seconds" if us % _US == 0 else f"{us // 1000} milliseconds"


def build_queries(
    spark, config: StreamConfig, categories: dict[str, str] | None = None, raw=None
) -> Queries:
    """The job's queries from `clickstream.process.pipeline`'s steps (what notebooks 03-06 build).

    `raw` is the source, with Kafka's columns (value, partition, offset, timestamp); by default
    the topic `config` names."""
    from clickstream.process import pipeline as P

    if categories is None:
        from clickstream.source.simulator import load_catalogue

        categories = {p.product_id: p.category for p in load_catalogue()}
    if raw is None:
        raw = P.read_kafka(
            spark,
            config.topic,
            config.bootstrap_servers,
            starting_offsets="earliest",
            max_offsets_per_trigger=config.max_offsets_per_trigger,
            options={
                # The preflight check explains a changed topic; at run time, fail rather than
                # skip.
                "failOnDataLoss": "true",
                # A task reads a fixed offset range; the consumer's default fetch wait (500 ms)
                # would hold up the batch whenever a fetch finds fewer bytes than it asked for.
                "kafka.fetch.max.wait.ms": "20",
            },
        )

    window, slide = spark_interval(config.window), spark_interval(config.slide)
    delay = spark_interval(config.watermark)
    checked = P.contract_checked(raw, max_ahead=spark_interval(config.max_ahead))
    watermarked = P.with_watermark(checked, delay)
    facts = P.metric_facts(P.unique_events(watermarked), categories, window, slide, delay)
    return Queries(
        windows=P.window_metrics(facts),
        sessions=P.session_metrics(watermarked, spark_interval(config.session_gap), window, slide),
        quarantine=(
            P.quarantine_messages(checked, config.topic) if config.quarantine_topic else None
        ),
    )


class StreamJob:
    """The streaming job. `start()` returns a handle (stop, await_termination); see also
    `run_available_now`. Pass `spark` to reuse a session (notebooks, tests), and `queries` to
    run queries assembled by hand from `clickstream.process.pipeline`'s steps instead of
    `build_queries(spark, config)` (notebook 06 does, to show they are the same job)."""

    def __init__(
        self,
        config: StreamConfig,
        spark=None,
        echo: Callable[[str], Any] | None = None,
        queries: Queries | None = None,
    ) -> None:
        if queries is not None and spark is None:
            raise StreamJobError(
                "queries built by hand need the Spark session they were built on: pass spark= too."
            )
        self.config = config
        self.given_queries = queries
        self.spec = config.spec()
        self.spark = spark
        self.echo = echo or (lambda message: None)
        self.checkpoint = Path(config.checkpoint)
        self.spark_dir = self.checkpoint / "spark"
        self.sessions_dir = self.checkpoint / "sessions"
        self.quarantine_dir = self.checkpoint / "quarantine"
        self.detector_files = DetectorFiles(self.checkpoint / "detector")
        self.store: Store | None = None
        self.sessions_store: Store | None = None
        self.summary = RunSummary()
        self.queries: list = []
        self._producer = None
        self._consumer = None
        self._last_started: float | None = None
        self._applied: int | None = None  # the store's last batch of the windows query
        self._sessions_applied: int | None = None
        self._figures_from: int = -1  # progress reports already added to the counters
        self._latest: int | None = None  # newest accepted event time (epoch us)
        self._state_size: dict = {}  # Spark's state store, per operator, as last reported
        self._began = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> StreamHandle:
        """Check the checkpoint against the topic and store, then start the Spark queries."""
        self._open_stores()
        spark = self.spark
        if spark is None:
            from clickstream.process.spark import get_spark

            self.echo("starting Spark...")
            spark = self.spark = get_spark("clickstream-stream", master=self.config.master)
        self.store.use_spark(spark)  # PostgreSQL: batches go in through Spark's JDBC writer
        self.sessions_store.use_spark(spark)
        built = self.given_queries or build_queries(spark, self.config)
        self._began = time.monotonic()
        try:
            self._start_queries(built)
        except BaseException:
            for query in self.queries:
                try:
                    query.stop()
                except Exception:  # noqa: BLE001 - the start failure is what matters
                    pass
            self.close()
            raise
        return StreamHandle(self, self.queries)

    def _open_stores(self) -> None:
        """Open the store (one connection per query), after `reset` and the preflight check."""
        self.store = open_store(self.config.store_url)
        try:
            if self.config.reset:
                self.reset()
            self.preflight()
            self.sessions_store = open_store(self.config.store_url)
        except BaseException:
            self.close()
            raise

    def _start_queries(self, built: Queries) -> None:
        """Start the windows query, then the sessions and quarantine queries (`self.queries`)."""
        cfg = self.config
        windows = (
            built.windows.writeStream.outputMode("update")
            .queryName(f"{JOB}-windows-{os.getpid()}-{id(self)}")
            .foreachBatch(_short_java_errors(self._on_windows))
            .option("checkpointLocation", str(self.spark_dir))
        )
        self.queries.append(self._triggered(windows, cfg.trigger, "--trigger").start())
        sessions = (
            built.sessions.writeStream.outputMode("append")
            .foreachBatch(_short_java_errors(self._on_sessions))
            .option("checkpointLocation", str(self.sessions_dir))
        )
        self.queries.append(self._triggered(sessions, cfg.side_trigger, "--side-trigger").start())
        if built.quarantine is not None:
            quarantine = (
                built.quarantine.writeStream.format("kafka")
                .option("kafka.bootstrap.servers", cfg.bootstrap_servers)
                .option("topic", cfg.quarantine_topic)
                .option("checkpointLocation", str(self.quarantine_dir))
            )
            self.queries.append(
                self._triggered(quarantine, cfg.side_trigger, "--side-trigger").start()
            )

    def _triggered(self, writer, every: str, name: str):
        """`writer` with the job's trigger: what is available now, else one batch per `every`."""
        if self.config.available_now:
            return writer.trigger(availableNow=True)
        trigger_ms = max(1, duration_us(every, name) // 1000)
        return writer.trigger(processingTime=f"{trigger_ms} milliseconds")

    def reset(self) -> None:
        """Delete the checkpoint and the store's contents (start over)."""
        if self.checkpoint.exists():
            ours = {"job.json", "spark", "sessions", "quarantine", "detector", "state"}
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
        self.echo(
            f"reset: deleted {self.checkpoint} and the contents of "
            f"{redact_url(self.config.store_url)}"
        )

    def close(self) -> None:
        for resource in (self._producer, self._consumer):
            if resource is not None:
                try:
                    resource.close()
                except Exception:  # noqa: BLE001 - closing must not hide the real outcome
                    pass
        self._producer = self._consumer = None
        for store in (self.store, self.sessions_store):
            if store is not None:
                store.close()
        self.store = self.sessions_store = None

    # -- checks before Spark starts ------------------------------------------------------------
    def preflight(self) -> None:
        """Refuse to run on a checkpoint that does not match the topic, settings or store."""
        from clickstream.ingest.kafka_io import ensure_topic

        cfg = self.config
        if self.store is None:
            self.store = open_store(cfg.store_url)
        identity = cfg.identity()
        meta_path = self.checkpoint / "job.json"
        if meta_path.exists():
            self._check_identity(meta_path, identity)
        offsets = self._topic_offsets(cfg.topic)
        planned, saved_offsets, committed = checkpoint_offsets(self.spark_dir)
        if not offsets:
            self._missing_topic(planned)
        if saved_offsets:
            self._check_offsets(saved_offsets, offsets)
        self._check_windows_batches(planned, committed)
        self._check_sessions_batches()
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(identity, indent=2) + "\n")
        for topic in (cfg.alerts_topic, cfg.quarantine_topic):
            if topic:
                ensure_topic(topic, partitions=1, bootstrap=cfg.bootstrap_servers)

    def _check_identity(self, meta_path: Path, identity: dict) -> None:
        """The settings saved with the checkpoint (`job.json`) must be this run's."""
        try:
            saved = json.loads(meta_path.read_text())
        except ValueError:
            saved = {}
        if isinstance(saved.get("store_url"), str):
            # Earlier versions saved the whole URL, password included.
            saved["store_url"] = without_credentials(saved["store_url"])
        diffs = [
            f"{k} {saved.get(k)!r} (now {v!r})" for k, v in identity.items() if saved.get(k) != v
        ]
        if diffs:
            raise CheckpointMismatchError(
                f"The checkpoint {self.checkpoint} was made with other settings: "
                f"{'; '.join(diffs)}. Its offsets and state would mix with this run's. Use "
                "`clickstream stream --reset` to start over (this deletes the checkpoint and "
                "the store's contents), or give this run its own --checkpoint DIR."
            )

    def _missing_topic(self, planned: int | None) -> None:
        """The topic does not exist: create it, unless the checkpoint has read it (it was
        deleted) or this run only reads what is there now."""
        from clickstream.ingest.kafka_io import ensure_topic

        cfg = self.config
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

    def _check_windows_batches(self, planned: int | None, committed: int | None) -> None:
        """The store's last batch of the windows query must lie between the checkpoint's last
        committed batch and its last planned one, and the detector's state after it must exist."""
        shown_store = redact_url(self.config.store_url)
        stored = self.store.last_batch(JOB)
        self._applied = stored
        s = -1 if stored is None else stored
        c = -1 if committed is None else committed
        p = -1 if planned is None else planned
        if not c <= s <= max(p, c):
            if s < 0:
                problem = (
                    f"the store {shown_store} holds no results, but the checkpoint says "
                    f"batches up to {c} were written to it"
                )
            elif p < 0:
                problem = (
                    f"the store {shown_store} holds results up to batch {s} of an earlier run, "
                    "but the checkpoint is new"
                )
            else:
                problem = (
                    f"the store {shown_store} holds batches up to {s}, the checkpoint "
                    f"{self.checkpoint} has committed {c}"
                )
            raise CheckpointMismatchError(
                f"The store and the checkpoint disagree: {problem}. Continuing would count "
                "events twice or not at all. Start over with `clickstream stream --reset`."
            )
        if s >= 0 and not self.detector_files.exists(s):
            raise CheckpointMismatchError(
                f"The anomaly detector's state for batch {s} is missing from "
                f"{self.detector_files.dir}. Start over with `clickstream stream --reset`."
            )

    def _check_sessions_batches(self) -> None:
        """The sessions query: its own checkpoint and its own batches in the store."""
        _, _, sessions_committed = checkpoint_offsets(self.sessions_dir)
        self._sessions_applied = self.store.last_batch(SESSIONS_JOB)
        ss = -1 if self._sessions_applied is None else self._sessions_applied
        sc = -1 if sessions_committed is None else sessions_committed
        if ss < sc or (sc < 0 and ss >= 0 and not self.sessions_dir.exists()):
            shown_store = redact_url(self.config.store_url)
            raise CheckpointMismatchError(
                f"The store and the checkpoint disagree: the store {shown_store} holds "
                f"sessions up to batch {ss}, the checkpoint {self.sessions_dir} has committed "
                f"{sc}. Continuing would count sessions twice or not at all. Start over with "
                "`clickstream stream --reset`."
            )

    def _topic_offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        from clickstream.ingest.kafka_io import topic_offsets

        return topic_offsets(topic, self.config.bootstrap_servers)

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

    # -- the windows query's micro-batches -----------------------------------------------------
    def _on_windows(self, df, batch_id: int) -> None:
        started = time.time()
        # This job is the store's only writer, so the last applied batch is known after the
        # preflight check and after each write.
        if self._applied is not None and self._applied >= batch_id:
            # A batch replayed after a restart that the store already holds: nothing to write,
            # but Spark must still run it, so that its state stores commit this batch's version.
            _run_only(df)
            self.summary.skipped += 1
            self.echo(f"batch {batch_id}: already in the store (replayed after a restart)")
            return
        from clickstream.process.pipeline import window_metric_rows

        info = batch_info(self.spark_dir, batch_id)
        watermark_us = info.get("watermark_ms", 0) * 1000
        total = records_through(self.spark_dir, batch_id, self.config.topic)
        before = records_through(self.spark_dir, batch_id - 1, self.config.topic)
        records = max(0, (total or 0) - (before or 0))
        rows, totals = window_metric_rows(df.collect())  # aggregated rows only
        store = self.store
        try:
            counters = {k: int(v) for k, v in store.counters().items()}
        except StoreMissingError:
            # A new Redis store before its first write (the sessions query may write first).
            counters = {}
        # Absolute, from the offsets: the records of every batch up to this one.
        counters["records"] = total if total is not None else counters.get("records", 0) + records
        for name in ("events", "quarantined"):
            if name in totals:
                counters[name] = totals[name]
        late, duplicates = self._spark_figures(batch_id)
        counters["late_dropped"] = counters.get("late_dropped", 0) + late
        counters["duplicates_removed"] = counters.get("duplicates_removed", 0) + duplicates
        if "latest" in totals:
            self._latest = to_us(totals["latest"].replace(tzinfo=UTC))
        changes = self._detect(batch_id, watermark_us, rows)
        # The topic gets every change in order (an alert that opens and closes within one batch
        # sends both); the store keeps each alert's latest state.
        self._publish_alerts(changes)
        latest = {alert["alert_id"]: alert for alert in changes}
        rows["alerts"] = [latest[k] for k in sorted(latest)]
        rows["counters"] = [{"name": n, "value": counters.get(n, 0)} for n in COUNTERS]
        health = self._health(batch_id, records, watermark_us, (late, duplicates), started)
        store.write_batch(JOB, batch_id, rows, health)
        self._applied = batch_id
        self.detector_files.prune(batch_id - 1)
        self._last_started = started
        self._update_summary(records, counters, health)
        self.echo(
            f"batch {batch_id}: {records:,} records ({late} late, {duplicates} duplicates in the "
            f"batch before) in {health['duration_ms'] / 1000:.2f} s; watermark "
            f"{health['watermark'] or '-'}; lag {health['lag'] if health['lag'] is not None else '-'}"
        )

    def _spark_figures(self, batch_id: int) -> tuple[int, int]:
        """Late rows and duplicates Spark's de-duplication dropped in the batches of this run
        that committed since the last call (Spark reports them after a batch commits), and
        the state store's size per stateful operator of both queries, as last reported."""
        if not self.queries:
            return 0, 0
        # A query that waits for data repeats its last report with zero figures, so take each
        # batch's largest figures, and only once.
        figures: dict[int, tuple[int, int]] = {}
        for progress in self.queries[0].recentProgress:
            done = progress["batchId"]
            if done <= self._figures_from or done >= batch_id:
                continue
            late = duplicates = 0
            for op in progress["stateOperators"]:
                if op["operatorName"].startswith("dedupe"):
                    late += op.get("numRowsDroppedByWatermark", 0)
                    duplicates += op.get("customMetrics", {}).get("numDroppedDuplicateRows", 0)
            seen = figures.get(done, (0, 0))
            figures[done] = (max(seen[0], late), max(seen[1], duplicates))
        late = sum(f[0] for f in figures.values())
        duplicates = sum(f[1] for f in figures.values())
        self._figures_from = max(self._figures_from, batch_id - 1)
        state = {}
        for query, name in zip(self.queries[:2], ("windows", "sessions"), strict=False):
            last = query.lastProgress
            for op in (last or {}).get("stateOperators", []):
                state[f"{name}.{op['operatorName']}"] = {
                    "rows": op.get("numRowsTotal", 0),
                    "memory_bytes": op.get("memoryUsedBytes", 0),
                }
        if state:
            self._state_size = state
        return late, duplicates

    def _detect(self, batch_id: int, watermark_us: int, rows: dict) -> list[dict]:
        """Feed the windows the watermark has closed, in order (empty ones too), to the anomaly
        detector with their final counts; its state after each batch is saved beside the
        checkpoint. Returns every change of an alert, in order."""
        state = self.detector_files.load(batch_id - 1)
        spec = self.spec
        size, slide = spec.window_us, spec.slide_us
        first = state.get("first_window")
        starts = [to_us(parse_iso(r["window_start"])) for r in rows["errors"]]
        if state.get("next_detect") is None and starts:
            first = min([first, *starts] if first is not None else starts)
        state["first_window"] = first
        next_detect = state.get("next_detect")
        if next_detect is None:
            next_detect = first
        changes: list[dict] = []
        if next_detect is not None and watermark_us and next_detect + size <= watermark_us:
            detector = AnomalyDetector.from_json(self.config.detector, state.get("detector"))
            closed_until = watermark_us - (watermark_us - next_detect) % slide
            counts = {
                r["window_start"]: (r["events"], r["errors"])
                for r in self.store.read(
                    "errors", since=iso_us(next_detect), until=iso_us(closed_until + slide)
                )
            }
            # This batch's rows are the newest: Spark drops late events by the previous
            # batch's watermark, so a window can take its last events in the batch that
            # closes it (and evicts it from the state).
            counts.update({r["window_start"]: (r["events"], r["errors"]) for r in rows["errors"]})
            start = next_detect
            while start + size <= watermark_us:
                n, e = counts.get(iso_us(start), (0, 0))
                changes += [alert.row() for alert in detector.update(start, start + size, n, e)]
                start += slide
            next_detect = start
            state["detector"] = detector.to_json()
        state["next_detect"] = next_detect
        self.detector_files.save(batch_id, state)
        return changes

    def _update_summary(self, records: int, counters: dict, health: dict) -> None:
        s = self.summary
        s.batches += 1
        s.records += records
        s.counters = {n: counters.get(n, 0) for n in COUNTERS}
        s.watermark = health["watermark"]
        s.max_event_time = health["max_event_time"]
        s.seconds = time.monotonic() - self._began

    def _health(
        self, batch_id: int, records: int, watermark_us: int, figures: tuple, started: float
    ) -> dict:
        late, duplicates = figures
        seconds = max(time.time() - started, 1e-6)
        since_last = started - self._last_started if self._last_started else None
        latest = self._latest
        return {
            "input_rows": records,
            "duration_ms": round(seconds * 1000, 1),
            "input_rate": records / since_last if since_last else None,
            "processing_rate": records / seconds,
            "max_event_time": iso_us(latest) if latest else None,
            "watermark": iso_us(watermark_us) if watermark_us else None,
            "lag": self._lag(batch_id),
            "late_dropped": late,
            "duplicates_removed": duplicates,
            "state_rows": sum(op["rows"] for op in self._state_size.values()),
            "state_memory_bytes": sum(op["memory_bytes"] for op in self._state_size.values()),
            "state_operators": json.dumps(self._state_size, sort_keys=True),
        }

    # -- the sessions query's micro-batches ----------------------------------------------------
    def _on_sessions(self, df, batch_id: int) -> None:
        if self._sessions_applied is not None and self._sessions_applied >= batch_id:
            _run_only(df)  # already in the store; the state stores still commit the batch
            return
        from clickstream.process.pipeline import session_metric_rows

        session_rows, path_counts = session_metric_rows(_paths_summed(df).collect())
        store = self.sessions_store
        rows = {"sessions": session_rows, "paths": []}
        if path_counts:
            # Later sessions add transitions to windows that earlier ones already counted.
            since = min(k[0] for k in path_counts)
            until = iso_us(to_us(parse_iso(max(k[0] for k in path_counts))) + _US)
            stored = {
                (r["window_start"], r["window_end"], r["from_page"], r["to_page"]): r["count"]
                for r in store.read("paths", since=since, until=until)
            }
            rows["paths"] = [
                {
                    "window_start": s,
                    "window_end": e,
                    "from_page": a,
                    "to_page": b,
                    "count": stored.get((s, e, a, b), 0) + n,
                }
                for (s, e, a, b), n in sorted(path_counts.items())
            ]
        store.write_batch(SESSIONS_JOB, batch_id, rows, {})
        self._sessions_applied = batch_id

    def _lag(self, batch_id: int) -> int | None:
        """Records in the topic beyond this batch's end offsets."""
        done = batch_info(self.spark_dir, batch_id).get("offsets", {}).get(self.config.topic)
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

            tps = [TopicPartition(self.config.topic, int(p)) for p in sorted(done)]
            latest = self._consumer.end_offsets(tps)
        except Exception:  # noqa: BLE001 - lag is informative; never fail a batch over it
            return None
        return sum(max(0, latest[tp] - int(done[str(tp.partition)])) for tp in tps)

    def _publish_alerts(self, alerts: list[dict]) -> None:
        """Alerts to the alerts topic (at-least-once: before the store write)."""
        cfg = self.config
        if not cfg.alerts_topic or not alerts:
            return
        if self._producer is None:
            from clickstream.ingest.kafka_io import make_producer

            self._producer = make_producer(cfg.bootstrap_servers)
        failures: list[BaseException] = []
        for alert in alerts:
            value = {**alert, "source_topic": cfg.topic}
            self._producer.send(
                cfg.alerts_topic,
                key=alert["alert_id"].encode(),
                value=events.to_json_bytes(value),
            ).add_errback(failures.append)
        self._producer.flush()
        if failures:
            raise StreamJobError(f"{len(failures)} alerts could not be sent: {failures[0]}")


class StreamHandle:
    """The running job's queries: `stop()`, `await_termination()`, `process_all_available()`."""

    def __init__(self, job: StreamJob, queries: list) -> None:
        self.job = job
        self.queries = list(queries)

    @property
    def query(self):
        """The windows query (progress, lag, batches of the job)."""
        return self.queries[0]

    @property
    def active(self) -> bool:
        return all(q.isActive for q in self.queries)

    @property
    def summary(self) -> RunSummary:
        return self.job.summary

    def _failure(self, exc: BaseException) -> ClickstreamError:
        return explain_failure(exc, self.job.config)

    def await_termination(self, timeout: float | None = None) -> bool:
        """Wait for every query to end (True) or the timeout (False); raise if one failed.
        When one query fails, the others are stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                for q in self.queries:
                    if not q.isActive:
                        q.awaitTermination()  # raises the query's failure, if any
                if not any(q.isActive for q in self.queries):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                # A query may end between the check above and this line: wait on the first
                # one still active, if any, and look again.
                active = next((q for q in self.queries if q.isActive), None)
                if active is not None:
                    active.awaitTermination(0.2)
        except Exception as exc:  # noqa: BLE001 - StreamingQueryException and Py4J errors
            self._stop_queries()
            self.job.close()
            raise self._failure(exc) from exc
        self.job.close()
        return True

    def process_all_available(self) -> None:
        try:
            for q in self.queries:
                q.processAllAvailable()
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc) from exc

    def _stop_queries(self) -> None:
        for q in self.queries:
            try:
                q.stop()
            except Exception:  # noqa: BLE001 - stop the others whatever happens
                pass

    def stop(self) -> None:
        """Stop the queries (each finishes its current batch first) and release connections."""
        try:
            self._stop_queries()
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
    text = redact_text(str(exc), config.store_url)
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
    first = _raised_in_batch(text) or next(
        (line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__
    )
    return StreamJobError(
        f"The streaming job stopped: {first[:500]} (run with --debug for the full trace)."
    )


# The line a Python traceback ends with: the exception's (dotted) class name and its message.
_RAISED = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception)): (.+)$", re.M)
_TRACEBACK = "Traceback (most recent call last):"


def _raised_in_batch(text: str) -> str | None:
    """What a micro-batch's function raised, from the Python traceback Spark wraps in its own
    error (whose first line only says that a foreachBatch function failed): "Class: message",
    or the Java error's own text for a `SparkBatchError`."""
    if _TRACEBACK not in text:
        return None
    found = _RAISED.search(text.split(_TRACEBACK, 1)[1])
    if found is None:
        return None
    name, message = found.groups()
    return message if name == SparkBatchError.__name__ else f"{name}: {message}"


def start(
    config: StreamConfig, spark=None, echo=None, queries: Queries | None = None
) -> StreamHandle:
    """Start the job; stop it with the returned handle's `stop()`."""
    return StreamJob(config, spark=spark, echo=echo, queries=queries).start()


def run_available_now(
    config: StreamConfig | None = None,
    spark=None,
    echo=None,
    queries: Queries | None = None,
    **options,
) -> RunSummary:
    """Process everything the topic holds now, then return (tests, notebooks, backfills).

    `options` are StreamConfig fields (topic, store_url, window, ...) used when `config` is None.
    `queries`: see `StreamJob`.
    """
    if config is None:
        config = StreamConfig.create(**options)
    config = replace(config, available_now=True)
    job = StreamJob(config, spark=spark, echo=echo, queries=queries)
    handle = job.start()
    handle.await_termination()
    job.summary.seconds = time.monotonic() - job._began
    return job.summary


# -- the job's queries run once, so that `clickstream setup` records the classes Spark loads --
def exercise_spark() -> None:
    """Start Spark and run the streaming job's queries over a few hundred simulated events read
    from a file (no broker needed), so that the JVM loads the classes the course uses."""
    import tempfile

    from pyspark.sql import functions as F

    from clickstream.process.pipeline import session_metric_rows, window_metric_rows
    from clickstream.process.spark import get_spark
    from clickstream.source.simulator import SimConfig, Simulator

    spark = get_spark("clickstream-class-archive")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "events")
        source.mkdir()
        config = SimConfig(seed=1, count=600, duplicate_count=10, malformed_count=10)
        lines = [r.value.decode("utf-8", "replace") for r in Simulator(config).records()]
        (source / "events.json").write_text("".join(v + "\n" for v in lines if "\n" not in v))
        raw = (
            spark.readStream.format("text")
            .load(str(source))
            .select(
                F.lit(None).cast("binary").alias("key"),
                F.col("value").cast("binary").alias("value"),
                F.lit("events").alias("topic"),
                F.lit(0).alias("partition"),
                F.lit(0).cast("long").alias("offset"),
                F.current_timestamp().alias("timestamp"),
                F.lit(0).alias("timestampType"),
            )
        )
        job = StreamConfig.create(
            topic="events",
            store_url=f"sqlite:///{tmp}/store.db",
            checkpoint=Path(tmp, "checkpoint"),
            window="10 seconds",
            watermark="30 seconds",
            session_gap="30 seconds",
        )
        built = build_queries(spark, job, raw=raw)
        writers = [
            built.windows.writeStream.outputMode("update").foreachBatch(
                lambda df, _: window_metric_rows(df.collect())
            ),
            built.sessions.writeStream.outputMode("append").foreachBatch(
                lambda df, _: session_metric_rows(_paths_summed(df).collect())
            ),
            built.quarantine.writeStream.format("noop"),
        ]
        queries = [
            w.trigger(availableNow=True).option("checkpointLocation", f"{tmp}/cp{i}").start()
            for i, w in enumerate(writers)
        ]
        for query in queries:
            query.awaitTermination()
        spark.createDataFrame([(1, "a")], "n int, s string").toPandas()
    spark.stop()
