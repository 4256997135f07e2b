"""`clickstream`: the scriptable face of the library (a thin layer over its functions)."""

from __future__ import annotations

import json
import sys
import time

import click

from clickstream.config import get_settings
from clickstream.errors import ClickstreamError


class _Group(click.Group):
    """Print project errors as one clear message; tracebacks only with --debug."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClickstreamError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.pass_context
def main(ctx, debug):
    """Real-time clickstream analytics: Kafka, Spark Structured Streaming, a live dashboard."""
    ctx.obj = {"debug": debug}


@main.command()
def setup():
    """Fetch and cache the Kafka broker jars and the Spark Kafka connector (once)."""
    from clickstream import jars
    from clickstream.java import check_java_for_spark

    settings = get_settings()
    info = check_java_for_spark()
    click.echo(f"Java {info.version} ({info.executable})")
    started = time.monotonic()
    kafka = jars.ensure_kafka_jars(settings)
    conn = jars.ensure_connector_jars(settings)
    click.echo(
        f"Kafka {settings.kafka_version}: {len(kafka)} jars; Spark Kafka connector "
        f"{jars.connector_version(conn)} for PySpark {jars.pyspark_version()}: {len(conn)} jars; "
        f"cache {settings.cache_dir} ({jars.cache_size_bytes(settings) / 1e6:.0f} MB); "
        f"{time.monotonic() - started:.1f} s."
    )


@main.group()
def broker():
    """Start, stop and inspect the local Kafka broker."""


@broker.command("up")
@click.option("--port", type=int, default=None, help="Listen on this port (default 9092).")
def broker_up(port):
    """Start the local broker (idempotent) and wait until it answers."""
    from clickstream.broker import LocalBroker

    LocalBroker(get_settings(port=port)).up(echo=click.echo)


@broker.command("down")
@click.option("--purge", is_flag=True, help="Also delete the broker's data (topics, offsets).")
def broker_down(purge):
    """Stop the local broker; no process is left behind."""
    from clickstream.broker import LocalBroker

    LocalBroker(get_settings()).down(purge=purge, echo=click.echo)


@broker.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def broker_status(as_json):
    """Bootstrap address, version, process id, topics with partitions and message counts."""
    from clickstream.broker import LocalBroker

    st = LocalBroker(get_settings()).status()
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
        return
    where = "external cluster" if st.external else "local broker"
    click.echo(f"{where}: {st.bootstrap_servers}")
    click.echo(f"  running: {'yes' if st.running else 'no'}")
    if not st.external:
        click.echo(f"  Kafka version: {st.kafka_version}")
        click.echo(f"  pid: {st.pid or '-'}")
        click.echo(f"  log: {st.log_file}")
    if st.running:
        click.echo(f"  topics: {len(st.topics)}")
        for name, info in st.topics.items():
            click.echo(
                f"    {name:<32} partitions={info['partitions']:<3} messages={info['messages']:,}"
            )


@main.command()
@click.option("--rate", type=float, default=40.0, show_default=True, help="Events per second.")
@click.option("--window", default="10 seconds", show_default=True, help="Window length.")
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: Ctrl-C).")
def demo(rate, window, seconds):
    """Broker, producer and a Spark windowed count, live, until Ctrl-C."""
    from clickstream.demo import run_demo

    run_demo(get_settings(), rate=rate, window=window, run_seconds=seconds, echo=click.echo)


@main.command()
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--count", type=int, default=10_000, show_default=True)
@click.option("--rate", type=float, default=50.0, show_default=True, help="Events/s of event time.")
@click.option("--start", default="2026-11-28T00:00:00Z", show_default=True)
@click.option("--incident", "incidents", multiple=True, help="START:END:ERROR_RATE (s offsets).")
@click.option("--surge", "surges", multiple=True, help="START:END:MULTIPLIER (s offsets).")
@click.option("--late-share", type=float, default=0.0)
@click.option("--late-delay", type=float, default=0.0, help="Seconds behind, for late events.")
@click.option("--duplicates", type=int, default=0, help="Exact number of duplicate records.")
@click.option("--malformed", type=int, default=0, help="Exact number of malformed records.")
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
    from clickstream.simulator import SimConfig, simulate_to_file

    config = SimConfig(
        seed=seed,
        count=count,
        rate=rate,
        start=start,
        incidents=[_triple(i, "--incident") for i in incidents],
        surges=[_triple(s, "--surge") for s in surges],
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


def _triple(text: str, name: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(x) for x in text.split(":"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected START:END:VALUE", param_hint=name) from None
    return a, b, c


@main.command()
@click.option("--topic", default=None, help="Topic (default user_clickstream).")
@click.option("--bootstrap-servers", default=None, help="Kafka bootstrap servers.")
@click.option(
    "--rate", type=float, default=None, help="Target events/s (default: as fast as possible)."
)
@click.option("--count", type=int, default=None, help="Number of simulated events.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--replay",
    type=click.Path(dir_okay=False),
    default=None,
    help="Send the lines of FILE.jsonl[.gz] instead of simulated events.",
)
@click.option(
    "--keep-timing", is_flag=True, help="Replay with the file's original event-time gaps."
)
@click.option("--create-topic/--no-create-topic", default=True, show_default=True)
def produce(
    topic, bootstrap_servers, rate, count, duration, seed, replay, keep_timing, create_topic
):
    """Produce simulated events (at a rate, for a duration or a count) or replay a file."""
    from clickstream.kafka_io import ensure_topic
    from clickstream.producer import produce as run
    from clickstream.producer import replay_records, simulated_records
    from clickstream.simulator import SimConfig

    settings = get_settings(topic=topic, external_bootstrap=bootstrap_servers)
    bootstrap = settings.bootstrap_servers
    if create_topic:
        ensure_topic(settings.topic, bootstrap=bootstrap)
    if replay:
        items, total = replay_records(replay, with_times=keep_timing), None
    else:
        if count is None and duration is None:
            count = 10_000
        config = SimConfig(seed=seed, count=count or 10**9)
        items, total = simulated_records(config), count
    summary = run(
        items,
        settings.topic,
        bootstrap,
        rate=rate,
        duration_s=duration,
        keep_timing=keep_timing,
        total=total,
    )
    click.echo(summary.line())
    if summary.failed:
        sys.exit(2)


@main.command()
@click.option("--topic", default=None)
@click.option("--bootstrap-servers", default=None)
@click.option("--from-beginning", is_flag=True)
@click.option("--max", "max_records", type=int, default=None, help="Stop after N records.")
@click.option("--raw", is_flag=True, help="Print values exactly as stored.")
def consume(topic, bootstrap_servers, from_beginning, max_records, raw):
    """Tail a topic, pretty-printed (Ctrl-C to stop)."""
    from kafka import KafkaConsumer

    settings = get_settings(topic=topic, external_bootstrap=bootstrap_servers)
    consumer = KafkaConsumer(
        settings.topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        client_id="clickstream-consume",
    )
    seen = 0
    try:
        for msg in consumer:
            seen += 1
            if raw:
                click.echo(msg.value.decode("utf-8", "replace"))
            else:
                _pretty(msg)
            if max_records and seen >= max_records:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        click.echo(f"({seen} records)", err=True)


def _pretty(msg) -> None:
    from clickstream.events import parse_value

    event, reason = parse_value(msg.value)
    head = f"p{msg.partition}@{msg.offset} key={msg.key.decode() if msg.key else '-'}"
    if event is None:
        click.secho(f"{head} INVALID ({reason}): {msg.value[:120]!r}", fg="red")
        return
    extra = " ".join(
        f"{k}={event[k]}" for k in ("product_id", "price", "device", "country") if event.get(k)
    )
    click.echo(
        f"{head} {event['event_time']} {event['event_type']:<16} {event['user_id']:<8} "
        f"{event['page']:<22} {extra}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
