"""`clickstream`: the scriptable face of the library (a thin layer over its functions)."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import click

from clickstream.config import (
    ConfigError,
    check_bootstrap_servers,
    check_environment,
    check_spark_master,
    check_store_url,
    check_topic,
    get_settings,
)
from clickstream.errors import ClickstreamError
from clickstream.redact import redact_url


class _Command(click.Command):
    """Checks the environment's settings once the options are parsed, before any work."""

    def invoke(self, ctx):
        check_environment()
        return super().invoke(ctx)


class _Group(click.Group):
    """Print project errors as one clear message; tracebacks only with --debug. A bad setting
    in the environment exits with 2, as a bad option does."""

    command_class = _Command
    group_class = type  # subgroups are _Group too

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClickstreamError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2 if isinstance(exc, ConfigError) else 1)


# -- option types: a bad value is a usage error (exit code 2) before any work starts ----------


class _Checked(click.ParamType):
    """A value checked (and converted) by `check`, which raises ValueError saying what is wrong
    and what is expected."""

    def __init__(self, name: str, check):
        self.name = name
        self.check = check

    def convert(self, value, param, ctx):
        if not isinstance(value, str):  # already converted (a default, or a repeated option)
            return value
        try:
            return self.check(value)
        except (ValueError, ClickstreamError) as exc:
            self.fail(str(exc), param, ctx)


def _duration(minimum_s: int = 0, whole_seconds: bool = False) -> _Checked:
    """A duration as the streaming job reads it ('10 seconds', '1 minute', '90s')."""

    def check(text: str) -> str:
        from clickstream.times import duration_us

        try:
            us = duration_us(text)
        except ClickstreamError:
            raise ValueError(
                f"{text!r} is not a duration: write it like '10 seconds', '1 minute', "
                "'2 minutes' or '1 hour'."
            ) from None
        if whole_seconds and (us % 1_000_000 or us < minimum_s * 1_000_000):
            raise ValueError(
                f"{text!r}: use a whole number of seconds, at least {minimum_s} (the store keys "
                "windows by their start in seconds)."
            )
        if us < minimum_s * 1_000_000:
            raise ValueError(f"{text!r}: use at least {minimum_s} s.")
        return text

    return _Checked("duration", check)


def _event_time(text: str) -> str:
    from clickstream.events import parse_event_time

    try:
        parse_event_time(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO-8601 time with Z or an offset, such as 2026-11-28T00:00:00Z."
        ) from None
    return text


def _utc_time(text: str) -> str:
    from datetime import datetime

    from clickstream.times import iso

    try:
        return iso(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO-8601 time such as 2026-11-28T10:15:00Z."
        ) from None


def _memory(text: str) -> str:
    # Spark's size syntax (JavaUtils.byteStringAs), in megabytes and more: a worker needs them.
    if not re.fullmatch(r"[1-9][0-9]*[mgt]b?", text.strip(), re.IGNORECASE):
        raise ValueError(f"{text!r} is not a memory size: write it like 512m or 2g.")
    return text.strip()


def _interval(value: str, value_ok, expected: str) -> _Checked:
    """START:END:VALUE, offsets in seconds of event time, START before END."""

    def check(text: str) -> tuple[float, float, float]:
        try:
            start, end, x = (float(part) for part in text.split(":"))
            if start < end and value_ok(x):
                return start, end, x
        except ValueError:  # not three numbers
            pass
        example = "60:120:0.2" if value == "RATE" else "60:120:3"
        raise ValueError(
            f"{text!r}: expected START:END:{value} (seconds of event time, START before END; "
            f"{value} {expected}), such as {example}."
        )

    return _Checked(f"start:end:{value.lower()}", check)


def _name_value(what: str):
    def check(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{text!r}: expected {what}=VALUE.")
        return name.strip(), value

    return check


def _metric_name(name: str) -> str:
    from clickstream.serve.store import METRICS, tables

    if name != "health" and name not in tables():
        raise ValueError(
            f"Unknown metric {name!r}; choose one of: {', '.join(METRICS)}, health (or a "
            "rollup such as traffic_5m or traffic_30m)."
        )
    return name


PORT = click.IntRange(1, 65535)
SEED = click.IntRange(min=0)
STORE_URL = _Checked("url", check_store_url)
BOOTSTRAP_SERVERS = _Checked("host:port,...", check_bootstrap_servers)
TOPIC = _Checked("topic", check_topic)
OPTIONAL_TOPIC = _Checked("topic", lambda text: text and check_topic(text))  # '' turns it off
SPARK_MASTER = _Checked("master", check_spark_master)
EVENT_TIME = _Checked("time", _event_time)
UTC_TIME = _Checked("time", _utc_time)
MEMORY = _Checked("size", _memory)
INCIDENT = _interval("RATE", lambda x: 0 <= x <= 1, "an error rate from 0 to 1")
SURGE = _interval("MULTIPLIER", lambda x: x > 0, "above 0")
NOTEBOOK_PARAMETER = _Checked("name=value", _name_value("NAME"))
COLUMN_FILTER = _Checked("column=value", _name_value("COLUMN"))
METRIC_NAME = _Checked("name", _metric_name)


# -- options several commands take, and how commands print ----------------------------------


def _bootstrap_option(help_text: str = "Kafka bootstrap servers (default: local broker)."):
    return click.option("--bootstrap-servers", type=BOOTSTRAP_SERVERS, default=None, help=help_text)


def _kafka_options(topic_help: str = "Topic (default user_clickstream)."):
    """--topic, then --bootstrap-servers: the topic a command reads or writes, and where."""
    topic = click.option("--topic", type=TOPIC, default=None, help=topic_help)

    def add(command):
        return topic(_bootstrap_option()(command))  # the outer decorator's option comes first

    return add


def _store_option(
    help_text: str = (
        "Serving store URL (default: CLICKSTREAM_STORE, else SQLite in the state directory)."
    ),
):
    return click.option("--store", "store_url", type=STORE_URL, default=None, help=help_text)


def _seed_option(help_text: str | None = None):
    return click.option("--seed", type=SEED, default=42, show_default=True, help=help_text)


def _json_option(help_text: str | None = "Print JSON."):
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def _echo_err(message: str) -> None:
    """Progress and notes go to stderr: stdout holds only the result (a table, JSON)."""
    click.echo(message, err=True)


def _echo_json(data, **dumps) -> None:
    click.echo(json.dumps(data, indent=2, **dumps))


def _echo_report(report, as_json: bool) -> None:
    """A benchmark's report: its text, or with --json its figures."""
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.text())


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.pass_context
def main(ctx, debug):
    """Real-time clickstream analytics: Kafka, Spark Structured Streaming, a live dashboard."""
    ctx.obj = {"debug": debug}


@main.command()
def setup():
    """Fetch and cache the Kafka broker jars, the Spark Kafka connector and the PostgreSQL JDBC
    driver, and record the classes Spark and the broker load so that they start faster (once)."""
    from concurrent.futures import ThreadPoolExecutor

    from clickstream.local import jars
    from clickstream.local.java import check_java_for_spark

    settings = get_settings()
    info = check_java_for_spark()
    click.echo(f"Java {info.version} ({info.executable})")
    started = time.monotonic()
    fetched = threading.Event()
    # Spark's classes are recorded as soon as its two small jar sets are in, while the broker's
    # larger set is still downloading.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-classes") as pool:
        spark_classes = pool.submit(_record_spark_classes, settings, info, fetched)
        try:
            kafka, conn, jdbc = jars.ensure_all_jars(settings)  # the three sets at the same time
        finally:
            fetched.set()
        click.echo(
            f"Kafka {settings.kafka_version}: {len(kafka)} jars; Spark Kafka connector "
            f"{jars.connector_version(conn)} for PySpark {jars.pyspark_version()}: {len(conn)} "
            f"jars; PostgreSQL JDBC driver {jars.POSTGRES_JDBC_VERSION}: {len(jdbc)} jars; "
            f"cache {settings.cache_dir} ({jars.cache_size_bytes(settings) / 1e6:.0f} MB); "
            f"{time.monotonic() - started:.1f} s."
        )
        spark_classes.result()
    from clickstream.local.broker import build_kafka_class_archive, kafka_class_archive

    _record_classes(
        "the Kafka broker",
        kafka_class_archive(settings, info),
        30,
        settings,
        build_kafka_class_archive,
    )


def _record_spark_classes(settings, info, fetched: threading.Event) -> None:
    """Record Spark's class archive once the connector and JDBC jars are in the cache (nothing,
    if fetching them failed: `fetched` is set with them still missing)."""
    from clickstream.local import jars
    from clickstream.process.spark import build_class_archive, class_archive

    spark_sets = (jars.connector_jar_set(settings), jars.jdbc_jar_set(settings))

    def ready() -> bool:
        return all(jars.is_complete(s.target) for s in spark_sets)

    while not ready() and not fetched.wait(0.5):
        pass
    if ready():
        _record_classes("Spark", class_archive(settings, info), 60, settings, build_class_archive)


def _record_classes(what: str, path, seconds: int, settings, build) -> None:
    """Class-data archive: the JVM starts from classes already parsed and verified (once)."""
    if path.is_file():
        return
    click.echo(f"Recording the classes {what} loads, to start faster (once, ~{seconds} s)...")
    started = time.monotonic()
    archive = build(settings, echo=click.echo)
    if archive is not None:
        click.echo(
            f"Class archive for {what}: {archive.stat().st_size / 1e6:.0f} MB in "
            f"{time.monotonic() - started:.1f} s."
        )


@main.group()
def broker():
    """Start, stop and inspect the local Kafka broker."""


@broker.command("up")
@click.option("--port", type=PORT, default=None, help="Listen on this port (default 9092).")
@click.option(
    "--brokers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Nodes: 3 starts a replicated cluster (replication factor 3, min.insync.replicas 2).",
)
def broker_up(port, brokers):
    """Start the local broker (idempotent) and wait until it answers."""
    if brokers > 1:
        from clickstream.local.kafka_cluster import LocalKafkaCluster

        LocalKafkaCluster(get_settings()).up(brokers, echo=click.echo)
        return
    from clickstream.local.broker import LocalBroker

    LocalBroker(get_settings(port=port)).up(echo=click.echo)


@broker.command("down")
@click.option("--purge", is_flag=True, help="Also delete the broker's data (topics, offsets).")
def broker_down(purge):
    """Stop the local broker (or cluster); no process is left behind."""
    from clickstream.local.broker import LocalBroker
    from clickstream.local.kafka_cluster import LocalKafkaCluster

    settings = get_settings()
    cluster = LocalKafkaCluster(settings)
    if cluster.meta():
        cluster.down(purge=purge, echo=click.echo)
    LocalBroker(settings).down(purge=purge, echo=click.echo)


def _cluster_with_node(node: int):
    """The local multi-node cluster, if it has node `node` (else a usage error)."""
    from clickstream.local.kafka_cluster import LocalKafkaCluster

    cluster = LocalKafkaCluster(get_settings())
    ids = [n["node_id"] for n in cluster.nodes()]
    if node not in ids:
        raise click.BadParameter(
            f"the local cluster has nodes {', '.join(map(str, ids))}, not {node}."
            if ids
            else "there is no local multi-node cluster: start one with "
            "`clickstream broker up --brokers 3`.",
            param_hint="'NODE'",
        )
    return cluster


@broker.command("stop-node")
@click.argument("node", type=click.IntRange(min=1))
@click.option("--kill", is_flag=True, help="SIGKILL instead of a clean shutdown.")
def broker_stop_node(node, kill):
    """Stop one node of the local multi-node cluster."""
    _cluster_with_node(node).stop_node(node, hard=kill, echo=click.echo)


@broker.command("start-node")
@click.argument("node", type=click.IntRange(min=1))
def broker_start_node(node):
    """Start a stopped node of the local multi-node cluster again."""
    _cluster_with_node(node).start_node(node, echo=click.echo)


@broker.command("status")
@_json_option()
def broker_status(as_json):
    """Bootstrap address, version, process id, topics with partitions and message counts."""
    from clickstream.local.broker import LocalBroker
    from clickstream.local.kafka_cluster import LocalKafkaCluster

    cluster = LocalKafkaCluster(get_settings())
    st = cluster.status() if cluster.meta() else LocalBroker(get_settings()).status()
    if as_json:
        _echo_json(st.to_dict())
        return
    where = "external cluster" if st.external else "local broker"
    click.echo(f"{where}: {st.bootstrap_servers}")
    click.echo(f"  running: {'yes' if st.running else 'no'}")
    if not st.external:
        click.echo(f"  Kafka version: {st.kafka_version}")
        click.echo(f"  pid: {st.pid or '-'}")
        click.echo(f"  log: {st.log_file}")
        for node in getattr(st, "nodes", []):
            state = f"pid {node['pid']}" if node["pid"] else "stopped"
            click.echo(f"  node {node['node_id']}: 127.0.0.1:{node['port']} ({state})")
    if st.running:
        click.echo(f"  topics: {len(st.topics)}")
        for name, info in st.topics.items():
            click.echo(
                f"    {name:<32} partitions={info['partitions']:<3} messages={info['messages']:,}"
            )


@main.command("lag")
@_bootstrap_option()
@click.option("--group", "groups", multiple=True, help="Only this consumer group (repeatable).")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Only this Spark checkpoint (repeatable).",
)
@_json_option("Print a JSON array of partitions.")
def lag_command(bootstrap_servers, groups, checkpoints, as_json):
    """Consumer lag per partition: consumer groups and streaming-job checkpoints.

    Without --group or --checkpoint: every consumer group with committed offsets, and every
    checkpoint of `clickstream stream` (and of the demo) in the state directory.
    """
    from clickstream.process import lag

    settings = get_settings(external_bootstrap=bootstrap_servers)
    bootstrap = settings.bootstrap_servers
    everything = not groups and not checkpoints
    rows = []
    if everything or groups:
        rows += lag.group_lag(bootstrap, list(groups) or None)
    for checkpoint in checkpoints or (lag.job_checkpoints(settings) if everything else []):
        if not checkpoints or lag.committed_offsets(checkpoint):
            rows += lag.checkpoint_lag(checkpoint, bootstrap)
        else:
            raise ClickstreamError(
                f"{checkpoint} has no committed micro-batch (is it a Spark checkpoint, and has "
                "the query finished a batch?)"
            )
    if as_json:
        _echo_json([r.to_dict() for r in rows])
        return
    for line in lag.format_table(rows):
        click.echo(line)


@main.command()
@click.option(
    "--rate",
    type=click.FloatRange(min=1, max=2000),
    default=50.0,
    show_default=True,
    help="Simulated events per second.",
)
@click.option("--port", type=PORT, default=8501, show_default=True, help="Dashboard port.")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this long (default: Ctrl-C).",
)
def demo(rate, port, seconds):
    """The whole pipeline live: broker, producer, streaming job and dashboard, until Ctrl-C.

    Prints the dashboard's URL. Every run starts from an empty demo topic and store.
    """
    from clickstream.demo import run_demo

    run_demo(get_settings(), rate=rate, port=port, run_seconds=seconds, echo=click.echo)


@main.command()
@_seed_option()
@click.option("--count", type=click.IntRange(min=0), default=10_000, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Events/s of event time.",
)
@click.option("--start", type=EVENT_TIME, default="2026-11-28T00:00:00Z", show_default=True)
@click.option(
    "--incident",
    "incidents",
    type=INCIDENT,
    multiple=True,
    help="START:END:ERROR_RATE (s offsets).",
)
@click.option(
    "--surge", "surges", type=SURGE, multiple=True, help="START:END:MULTIPLIER (s offsets)."
)
@click.option("--late-share", type=click.FloatRange(0, 1), default=0.0)
@click.option(
    "--late-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds behind, for late events.",
)
@click.option(
    "--duplicates",
    type=click.IntRange(min=0),
    default=0,
    help="Exact number of duplicate records.",
)
@click.option(
    "--malformed",
    type=click.IntRange(min=0),
    default=0,
    help="Exact number of malformed records.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True)
def simulate(
    seed,
    count,
    rate,
    start,
    incidents,
    surges,
    late_share,
    late_delay,
    duplicates,
    malformed,
    output,
):
    """Write simulated events to FILE.jsonl[.gz] and their ground truth beside it."""
    from clickstream.source.simulator import SimConfig, simulate_to_file

    config = SimConfig(
        seed=seed,
        count=count,
        rate=rate,
        start=start,
        incidents=list(incidents),
        surges=list(surges),
        late_share=late_share,
        late_delay_s=late_delay,
        duplicate_count=duplicates,
        malformed_count=malformed,
    )
    started = time.monotonic()
    truth = simulate_to_file(config, output)
    took = time.monotonic() - started
    click.echo(f"wrote {count:,} records to {output} in {took:.1f} s; ground truth beside it")
    click.echo(json.dumps(truth.to_dict().get("counts", {})))


@main.command()
@_kafka_options()
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Target events/s (default: as fast as possible).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many events (simulated default 10,000 unless --duration).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds.",
)
@_seed_option("Simulator seed.")
@click.option(
    "--start",
    type=EVENT_TIME,
    default=None,
    help="Event time of the first simulated event (default: now).",
)
@click.option(
    "--replay",
    type=click.Path(dir_okay=False),
    default=None,
    help="Send the lines of FILE.jsonl[.gz] instead of simulated events.",
)
@click.option(
    "--keep-timing",
    is_flag=True,
    help="Pace by the events' own event-time gaps (default: --rate, or as fast as possible).",
)
@click.option(
    "--backend",
    type=click.Choice(["kafka-python", "confluent"]),
    default="kafka-python",
    show_default=True,
    help="Kafka client (confluent needs the optional confluent-kafka).",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Partitions of the topic, if it has to be created.",
)
@click.option("--create-topic/--no-create-topic", default=True, show_default=True)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr."
)
def produce(
    topic,
    bootstrap_servers,
    rate,
    count,
    duration,
    seed,
    start,
    replay,
    keep_timing,
    backend,
    partitions,
    create_topic,
    progress,
):
    """Produce simulated events (at a rate, for a duration or a count) or replay a file.

    Prints a summary (sent, failed, events/s); exits with 2 if any record failed.
    """
    from clickstream.ingest.kafka_io import ensure_topic
    from clickstream.source.producer import replay_records

    if rate and keep_timing:
        raise click.UsageError("--rate and --keep-timing both set the pace: choose one.")
    if replay and start:
        raise click.UsageError("--start applies to simulated events, not to --replay.")
    settings = get_settings(topic=topic, external_bootstrap=bootstrap_servers)
    bootstrap = settings.bootstrap_servers
    if replay:
        # Opened before the topic is touched, so a missing file fails without side effects.
        items = replay_records(replay, with_times=keep_timing)
    else:
        if count is None and duration is None:
            count = 10_000
        items = _simulated_items(seed, count, start, rate, keep_timing)
    if create_topic and ensure_topic(settings.topic, partitions=partitions, bootstrap=bootstrap):
        click.echo(f"created topic {settings.topic} ({partitions} partitions)", err=True)
    summary = _send(
        items,
        settings.topic,
        bootstrap,
        rate=rate,
        duration_s=duration,
        keep_timing=keep_timing,
        total=count,
        backend=backend,
        max_records=count,
        progress=progress,
    )
    click.echo(summary.line())
    if summary.failed:
        sys.exit(2)
    if summary.interrupted:
        sys.exit(130)


def _simulated_items(seed, count, start, rate, keep_timing):
    """The simulator's records for `produce`, from `start` (default: now); endless when `count`
    is None (--duration ends it)."""
    from datetime import UTC, datetime

    from clickstream.source.producer import generated_in_background, simulated_records
    from clickstream.source.simulator import SimConfig
    from clickstream.times import iso

    config = SimConfig(
        seed=seed,
        count=count or 10**12,
        start=start or iso(datetime.now(UTC)),
        # With a fixed rate, event time advances like the wall clock (no daily rhythm).
        rate=rate or 50.0,
        daily_amplitude=0.0 if rate else 0.5,
    )
    if keep_timing or (rate and rate < 1000):
        return simulated_records(config, with_times=keep_timing)
    return generated_in_background(config)  # flat out: the simulator gets a core of its own


def _send(items, topic: str, bootstrap: str, **options):
    """The library's `produce`; if it fails part-way, what it sent is printed before the error."""
    from clickstream.source.producer import produce as run

    try:
        return run(items, topic, bootstrap, **options)
    except ClickstreamError as exc:
        partial = getattr(exc, "summary", None)
        if partial is not None:
            click.echo(partial.line())
        raise


@main.command()
@_kafka_options()
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record, not the newest.")
@click.option(
    "--max", "max_records", type=click.IntRange(min=1), default=None, help="Stop after N records."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds without a new record (default: wait for Ctrl-C).",
)
@click.option("--raw", is_flag=True, help="Print values exactly as stored.")
def consume(topic, bootstrap_servers, from_beginning, max_records, timeout, raw):
    """Tail a topic, pretty-printed (Ctrl-C to stop). Invalid values are shown, marked red."""
    from clickstream.ingest.kafka_io import open_consumer, topic_exists

    settings = get_settings(topic=topic, external_bootstrap=bootstrap_servers)
    bootstrap = settings.bootstrap_servers
    if not topic_exists(settings.topic, bootstrap):
        raise ClickstreamError(
            f"Topic {settings.topic} does not exist at {bootstrap}. Produce to it first "
            f"(`clickstream produce --topic {settings.topic}`), or check the name with "
            "`clickstream broker status`."
        )
    consumer = open_consumer(
        settings.topic,
        bootstrap,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        client_id="clickstream-consume",
        consumer_timeout_ms=int(timeout * 1000) if timeout else float("inf"),
    )
    seen = 0
    try:
        for msg in consumer:
            seen += 1
            if raw:
                value = msg.value
                click.echo(value.decode("utf-8", "replace") if value is not None else "(null)")
            else:
                _echo_record(msg)
            if max_records and seen >= max_records:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        click.echo(f"({seen:,} record{'' if seen == 1 else 's'})", err=True)


def _echo_record(msg) -> None:
    """One record, pretty-printed; values that break the contract are shown red with why."""
    from clickstream.events import parse_value

    key = msg.key.decode("utf-8", "replace") if msg.key is not None else "-"
    head = f"p{msg.partition}@{msg.offset} key={key}"
    event, reason = parse_value(msg.value)
    if event is None:
        shown = repr(msg.value[:120]) if msg.value is not None else "null"
        click.secho(f"{head} INVALID ({reason}): {shown}", fg="red")
        return
    extra = " ".join(
        f"{k}={event[k]}" for k in ("product_id", "price", "device", "country") if event.get(k)
    )
    click.echo(
        f"{head} {event['event_time']} {event['event_type']:<16} {event['user_id']:<8} "
        f"{event['page']:<22} {extra}"
    )


# --- benchmarks ---
# `clickstream bench produce` and `bench stream`; `bench dashboard` and `bench anomalies` are
# in the sections of the dashboard and of the streaming job.


@main.group()
def bench():
    """Benchmarks anyone can rerun: figures with the machine they ran on."""


@bench.command("produce")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=200_000,
    show_default=True,
    help="Events per client.",
)
@_bootstrap_option("Measure against this cluster (default: the local broker, started if needed).")
@_seed_option("Simulator seed.")
@click.option(
    "--profile",
    is_flag=True,
    help="Also profile the kafka-python run with cProfile (an extra run, not timed).",
)
@_json_option()
def bench_produce(count, bootstrap_servers, seed, profile, as_json):
    """Events/s of simulator + producer (kafka-python, confluent-kafka) beside Kafka's own tool."""
    from clickstream.bench.produce import bench_produce as run

    report = run(
        get_settings(),
        count=count,
        bootstrap=bootstrap_servers,
        seed=seed,
        profile=profile,
        echo=_echo_err,
    )
    _echo_report(report, as_json)


@bench.command("stream")
@click.option(
    "--count",
    type=click.IntRange(min=1000),
    default=1_000_000,
    show_default=True,
    help="Events to pre-load into a fresh topic.",
)
@click.option(
    "--master",
    type=SPARK_MASTER,
    default=None,
    help="Spark master URL (default: SPARK_MASTER or local[2]), e.g. spark://127.0.0.1:7077.",
)
@click.option(
    "--max-offsets-per-trigger",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Records per micro-batch.",
)
@click.option(
    "--live-seconds",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Length of the live run at --live-rate (0: none).",
)
@click.option(
    "--live-rate",
    type=click.FloatRange(min=1),
    default=1000.0,
    show_default=True,
    help="Events/s of the live run.",
)
@_json_option()
def bench_stream(count, master, max_offsets_per_trigger, live_seconds, live_rate, as_json):
    """Events/s of the streaming job beside a bare Spark read + parse of the same topic, and
    its produce-to-store latency live."""
    from clickstream.bench.stream import bench_stream as run

    try:
        report = run(
            get_settings(),
            count=count,
            master=master,
            max_offsets_per_trigger=max_offsets_per_trigger,
            live_rate=live_rate,
            live_seconds=live_seconds,
            echo=_echo_err,
        )
    finally:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            _quietly(active.stop)  # state stores close before the JVM exits
    _echo_report(report, as_json)


# --- dashboard ---
# `clickstream dashboard` (the Streamlit app in clickstream/dashboard/app.py; it reads only the
# serving store) and `clickstream bench dashboard` (what one refresh of it costs).


@main.command("dashboard")
@_store_option()
@click.option("--port", type=PORT, default=8501, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all)."
)
@click.option("--base-url-path", default="", help="Serve under this URL path (behind a proxy).")
def dashboard_command(store_url, port, host, base_url_path):
    """The live dashboard on http://127.0.0.1:8501, reading only the serving store."""
    from clickstream.dashboard.app import serve

    serve(store_url, port=port, host=host, base_url_path=base_url_path, echo=click.echo)


def _holds_data(store_url: str) -> bool:
    """Whether the store has traffic windows (one that cannot be opened has none)."""
    from clickstream.serve.store import StoreError, open_store

    try:
        with open_store(store_url, readonly=True) as store:
            return bool(store.read("traffic", limit=1))
    except StoreError:
        return False


@bench.command("dashboard")
@_store_option("Fill and time this store (default: a temporary SQLite file). It is emptied first.")
@click.option("--replace", is_flag=True, help="Allow emptying a --store that already holds data.")
@click.option(
    "--minutes",
    type=click.IntRange(min=60),
    default=7 * 1440,
    show_default=True,
    help="Per-minute windows of history to fill (default: 7 days).",
)
@click.option(
    "--ledger-batches",
    type=click.IntRange(min=0),
    default=7 * 24 * 3600,
    show_default=True,
    help="Earlier batches in the ledger (default: a week at one per second).",
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=20, show_default=True, help="Refreshes timed."
)
@_json_option()
def bench_dashboard(store_url, replace, minutes, ledger_batches, repeats, as_json):
    """Milliseconds one dashboard refresh costs at each time range, with days of per-minute
    windows in the store, beside the same refresh without rollups (measured in the same run)."""
    from clickstream.bench.dashboard import bench_refresh
    from clickstream.dashboard.app import build_figures

    if store_url and not replace and _holds_data(store_url):
        raise ClickstreamError(
            f"{redact_url(store_url)} holds data and the benchmark would empty it: point "
            "--store at a scratch store, or add --replace."
        )

    def figures(snap):
        return [fig.to_json() for fig in build_figures(snap).values()]

    _echo_err(
        f"filling {redact_url(store_url) if store_url else 'a temporary SQLite store'} with "
        f"{minutes:,} per-minute windows "
        f"of every metric and a ledger of {ledger_batches:,} batches, then timing refreshes..."
    )
    result = bench_refresh(
        store_url,
        minutes=minutes,
        repeats=repeats,
        figures=figures,
        ledger_batches=ledger_batches,
        progress=_echo_err,
    )
    if as_json:
        _echo_json(result.as_json())
    else:
        for line in result.lines():
            click.echo(line)


# --- streaming job ---
# `clickstream stream` (the job in clickstream/process/stream.py), `clickstream metrics NAME`
# (any metric from the serving store, as a table or JSON) and `clickstream bench anomalies`
# (recall and false alerts of the anomaly detector over a long simulated stream).


@main.command("stream")
@_kafka_options("Raw events topic (default user_clickstream).")
@_store_option(
    "sqlite:///path.db (default: CLICKSTREAM_STORE, else SQLite in the state directory), "
    "redis://host:port/db or postgresql://user@host:port/db."
)
@click.option(
    "--checkpoint",
    type=click.Path(file_okay=False),
    default=None,
    help="Checkpoint directory (default: one per topic and store under the state directory).",
)
@click.option(
    "--window",
    type=_duration(1, whole_seconds=True),
    default="1 minute",
    show_default=True,
    help="Window length.",
)
@click.option(
    "--slide",
    type=_duration(1, whole_seconds=True),
    default=None,
    help="Slide, for sliding windows (default: tumbling).",
)
@click.option(
    "--watermark",
    type=_duration(),
    default="2 minutes",
    show_default=True,
    help="How late an event may be.",
)
@click.option(
    "--session-gap",
    type=_duration(1),
    default="30 minutes",
    show_default=True,
    help="Inactivity ending a session.",
)
@click.option(
    "--trigger",
    type=_duration(),
    default="500 milliseconds",
    show_default=True,
    help="Micro-batch interval (continuous).",
)
@click.option(
    "--side-trigger",
    type=_duration(),
    default="10 seconds",
    show_default=True,
    help="Micro-batch interval of the sessions and quarantine queries (continuous): they "
    "write only when a session closes or a record is rejected. They read at most "
    "--max-offsets-per-trigger records per batch too: shorten it for streams faster than "
    "that many records per interval.",
)
@click.option(
    "--available-now", is_flag=True, help="Process what the topic holds, then exit (backfills)."
)
@click.option(
    "--max-offsets-per-trigger",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many records per micro-batch (default 100,000): a backlog is read in "
    "bounded batches.",
)
@click.option(
    "--max-ahead",
    type=_duration(),
    default=None,
    help="Quarantine events dated more than this past the batch's clock (default '1 day').",
)
@click.option(
    "--alerts-topic",
    type=OPTIONAL_TOPIC,
    default="clickstream_alerts",
    show_default=True,
    help="Topic for anomaly alerts ('' for none).",
)
@click.option(
    "--quarantine-topic",
    type=OPTIONAL_TOPIC,
    default="clickstream_quarantine",
    show_default=True,
    help="Topic for records that break the contract, with their reason ('' for none).",
)
@click.option(
    "--reset", is_flag=True, help="Delete the checkpoint and the store's contents, start over."
)
@click.option(
    "--master",
    type=SPARK_MASTER,
    default=None,
    help="Spark master URL (default: SPARK_MASTER or local).",
)
@click.option("--quiet", is_flag=True, help="No line per micro-batch.")
def stream_command(topic, bootstrap_servers, quiet, **job_options):
    """The streaming job: every metric by event time into the serving store, exactly once.

    Runs until Ctrl-C (or SIGTERM) with a micro-batch every --trigger; --available-now drains
    the topic and exits. Restarted, it continues from its checkpoint.
    """
    from clickstream.process.stream import StreamConfig, StreamJob

    settings = get_settings(topic=topic, external_bootstrap=bootstrap_servers)
    for name in ("alerts_topic", "quarantine_topic"):
        job_options[name] = job_options[name] or ""
    # The other options are StreamConfig.create's arguments, by the same names.
    config = StreamConfig.create(settings, **job_options)
    click.echo(_stream_banner(config), err=True)
    job = StreamJob(config, echo=(lambda message: None) if quiet else _echo_err)
    _run_until_stopped(job, job_options["available_now"])
    click.echo(job.summary.line())


def _stream_banner(config) -> str:
    """What the job reads, where it writes, its event-time settings and its checkpoint."""
    slide = f", slide {config.slide}" if config.slide else ""
    return (
        f"streaming {config.topic} at {config.bootstrap_servers} into "
        f"{redact_url(config.store_url)} (window {config.window}{slide}, "
        f"watermark {config.watermark}, session gap {config.session_gap}); checkpoint "
        f"{config.checkpoint}"
    )


def _run_until_stopped(job, available_now: bool) -> None:
    """Start the job and wait until its queries end, or until Ctrl-C or SIGTERM; then stop the
    queries and Spark cleanly. A query that failed raises its error here."""
    import signal
    import threading

    # Ctrl-C and SIGTERM only set a flag: raising inside a call into Spark's JVM would break
    # that call; the loop below notices the flag within a second and stops the query cleanly.
    # (Installed once Spark runs: PySpark replaces the SIGINT handler when it starts.)
    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C forces

    handlers = {}
    handle = None
    try:
        handle = job.start()
        handlers = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        if not available_now:
            click.echo("running; Ctrl-C stops the job (it resumes from its checkpoint)", err=True)
        while handle.active and not stop.is_set():
            stop.wait(1.0)
        if not stop.is_set():
            handle.await_termination()  # it ended by itself: raises if it failed
    except KeyboardInterrupt:  # during start-up, or a second Ctrl-C
        stop.set()
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        if stop.is_set():
            click.echo("stopping the streaming job...", err=True)
            if handle is not None:
                _quietly(handle.stop)
        job.close()
        if job.spark is not None:
            _quietly(job.spark.stop)


def _quietly(stop) -> None:
    """Shutdown steps: if Spark's JVM is already gone (it got the signal too), say nothing."""
    try:
        stop()
    except Exception:  # noqa: BLE001 - py4j errors once the JVM has exited
        pass


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else "nan"
    return str(value)


@main.command("metrics")
@click.argument("name", type=METRIC_NAME)
@_store_option()
@_json_option("Print a JSON array of rows.")
@click.option(
    "--since", type=UTC_TIME, default=None, help="Windows starting at or after this ISO-8601 time."
)
@click.option(
    "--until", type=UTC_TIME, default=None, help="Windows starting before this ISO-8601 time."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="The newest N windows (N rows for metrics without windows).",
)
@click.option(
    "--where", "where", type=COLUMN_FILTER, multiple=True, help="COLUMN=VALUE filter (repeatable)."
)
def metrics_command(name, store_url, as_json, since, until, limit, where):
    """Print metric NAME from the serving store (NAME: traffic, segments, products,
    active_users, funnel, sessions, paths, errors, alerts, quarantine, counters, or health; a
    windowed metric's rollups too, such as traffic_5m or segments_30m)."""
    from clickstream.serve.store import HEALTH_COLUMNS, METRICS, metric, open_store
    from clickstream.times import iso

    columns = list(metric(name).all_columns if name != "health" else HEALTH_COLUMNS)
    filters = {}
    for column, value in where:
        if column not in columns:
            raise click.BadParameter(
                f"{column!r} is not a column of {name}: use one of {', '.join(columns)}.",
                param_hint="'--where'",
            )
        filters[column] = value
    with open_store(store_url, readonly=True) as store:
        store.check_version()
        if name == "health":
            rows = store.health(limit=limit or 60)
        else:
            rows = store.read(
                name,
                since=since,
                until=until,
                limit=limit,
                where=filters or None,
            )
    if as_json:
        _echo_json(rows, default=str)
        return
    if not rows:
        click.echo(f"(no {name} rows{' in that range' if since or until else ''})")
        return
    if name == "health":  # epoch seconds -> readable UTC times, in the table only
        rows = [{**r, "committed_at": iso(r.get("committed_at"))} for r in rows]
    table = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    what = METRICS[name].description if name in METRICS else "batches, newest first"
    click.echo(f"({len(rows)} rows: {what})", err=True)


@bench.command("anomalies")
@click.option(
    "--hours",
    type=click.FloatRange(min=0, min_open=True),
    default=12.0,
    show_default=True,
    help="Event time simulated.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Mean events/s.",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Window length (s).",
)
@click.option(
    "--incidents",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Error incidents.",
)
@click.option(
    "--surges", type=click.IntRange(min=0), default=6, show_default=True, help="Traffic surges."
)
@_seed_option()
@_json_option()
def bench_anomalies(hours, rate, window, incidents, surges, seed, as_json):
    """Recall and false alerts of the anomaly detector over a long simulated stream."""
    from clickstream.bench.anomalies import bench as run

    result = run(
        hours=hours,
        rate=rate,
        window_s=window,
        incidents=incidents,
        surges=surges,
        seed=seed,
        progress=_echo_err,
    )
    _echo_report(result, as_json)


# --- spark cluster ---


@main.group("spark-cluster")
def spark_cluster():
    """A local Spark standalone cluster (master + workers) from the installed PySpark."""


@spark_cluster.command("up")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--cores", type=click.IntRange(min=1), default=1, show_default=True, help="Cores per worker."
)
@click.option("--memory", type=MEMORY, default="1g", show_default=True, help="Memory per worker.")
@click.option("--port", type=PORT, default=None, help="Master port (default 7077).")
def spark_cluster_up(workers, cores, memory, port):
    """Start a master and N workers on 127.0.0.1 (idempotent); wait until all are alive."""
    from clickstream.local.spark_cluster import SparkCluster

    SparkCluster(get_settings()).up(workers, cores, memory, port, echo=click.echo)


@spark_cluster.command("down")
def spark_cluster_down():
    """Stop the workers and the master."""
    from clickstream.local.spark_cluster import SparkCluster

    SparkCluster(get_settings()).down(echo=click.echo)


@spark_cluster.command("status")
@_json_option(None)
def spark_cluster_status(as_json):
    """Master URL, web UI and the workers with their cores and memory."""
    from clickstream.local.spark_cluster import SparkCluster

    st = SparkCluster(get_settings()).status()
    if as_json:
        _echo_json(st.to_dict())
        return
    if not st.running:
        click.echo("No Spark cluster running (start one with `clickstream spark-cluster up`).")
        return
    click.echo(f"master: {st.master_url} (pid {st.master_pid}, web UI {st.web_ui})")
    for w in st.workers:
        click.echo(f"  worker {w['id']}: {w['cores']} cores, {w['memory_mb']} MB, {w['state']}")


# --- course ---


@main.group()
def data():
    """Regenerate the data shipped in data/ (the catalogue and the recorded sample)."""


@data.command("catalogue")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Where to write it (default: data/catalogue.csv).",
)
def data_catalogue(output):
    """Write the product catalogue the simulator draws from."""
    from clickstream.source import simulator

    click.echo(f"wrote {simulator.write_catalogue(Path(output or simulator.CATALOGUE_PATH))}")


@data.command("sample")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Where to write it (default: data/sample_clickstream.jsonl.gz, truth beside it).",
)
def data_sample(output):
    """Write the recorded sample stream and its ground truth."""
    from clickstream.source import simulator

    path = Path(output or simulator.SAMPLE_PATH)
    truth = simulator.simulate_to_file(simulator.sample_config(), path)
    click.echo(f"wrote {path} ({truth.total:,} records) and {simulator.truth_path_for(path)}")


@main.group()
def course():
    """Run the course's notebooks headless (papermill)."""


def _notebook_value(raw: str) -> object:
    try:
        return json.loads(raw)  # numbers, true/false, null, quoted strings
    except ValueError:
        return raw


@course.command("execute")
@click.option(
    "--output-dir",
    default="build/executed",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the executed copies, logs and summary.json go.",
)
@click.option(
    "--fast/--full", default=True, show_default=True, help="FAST=True: smaller, quicker runs."
)
@click.option(
    "--only",
    multiple=True,
    help="Only notebooks whose name starts with this (repeatable): --only 01 --only 03.",
)
@click.option("--solutions/--no-solutions", default=True, show_default=True)
@_bootstrap_option("Run against this Kafka cluster, not the local one.")
@click.option(
    "--parameter",
    "-p",
    "parameters",
    type=NOTEBOOK_PARAMETER,
    multiple=True,
    help="NAME=VALUE for every notebook's parameters cell, e.g. -p EVENT_RATE=100.",
)
@click.option(
    "--cell-timeout",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    help="Seconds per cell.",
)
def course_execute(output_dir, fast, only, solutions, bootstrap_servers, parameters, cell_timeout):
    """Execute every notebook in order, then the solutions; print a summary table."""
    from clickstream.course.runner import execute_course

    params = {name: _notebook_value(raw) for name, raw in parameters}
    if bootstrap_servers:
        params["BOOTSTRAP_SERVERS"] = bootstrap_servers
    result = execute_course(
        output_dir=output_dir,
        fast=fast,
        only=only or None,
        include_solutions=solutions,
        parameters=params,
        cell_timeout=cell_timeout,
        echo=click.echo,
    )
    if not bootstrap_servers:
        click.echo("The course's broker keeps running; stop it with `clickstream broker down`.")
    if not result.ok:
        click.secho(
            f"{len(result.failed)} notebook(s) failed: see their executed copies and logs in "
            f"{output_dir}/.",
            fg="red",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
