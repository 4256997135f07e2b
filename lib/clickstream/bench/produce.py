"""`clickstream bench produce`: our producer's events/s beside reference clients, in one run.

Four figures on the same machine and broker: (a) the simulator (in a process of its own, as
`clickstream produce` runs it) feeding our producer with kafka-python, (b) the same with
confluent-kafka, (c) Kafka's own Java `ProducerPerformance`
with records of our mean size, and (d) the simulator alone, which bounds (a) and (b). Each
client writes to a fresh 3-partition topic; message counts are checked and the topics deleted.
"""

from __future__ import annotations

import cProfile
import importlib.util
import pstats
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from clickstream.bench.machine import machine_info, machine_line
from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError

PARTITIONS = 3
# ProducerPerformance's closing line: "N records sent, X records/sec (Y MB/sec), Z ms avg ..."
_JAVA_SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), "
    r"([\d.]+) ms avg latency, ([\d.]+) ms max latency"
)


class BenchError(ClickstreamError):
    """A benchmark step failed."""


@dataclass
class Figure:
    """One measured client: events, seconds, and how many messages landed on the broker."""

    key: str
    label: str
    events: int
    seconds: float
    landed: int | None = None
    detail: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ProduceBench:
    """The result of `bench_produce`: figures, record sizes, settings and the machine."""

    count: int
    record_size: float
    key_size: float
    bootstrap: str
    broker: str
    machine: dict
    settings: dict
    figures: list[Figure]
    where_time_goes: dict = field(default_factory=dict)
    profile: list[dict] = field(default_factory=list)

    def figure(self, key: str) -> Figure | None:
        return next((f for f in self.figures if f.key == key), None)

    def ratio(self, fig: Figure) -> float | None:
        base = self.figure("kafka-python")
        return fig.rate / base.rate if base and base.rate > 0 else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["figures"] = [
            {**asdict(f), "events_per_s": round(f.rate, 1), "ratio_to_kafka_python": self.ratio(f)}
            for f in self.figures
        ]
        return data

    def text(self) -> str:
        lines = [
            f"clickstream bench produce: {self.count:,} simulated events per client "
            f"(mean value {self.record_size:.0f} B, key {self.key_size:.0f} B), "
            f"a fresh {PARTITIONS}-partition topic each, broker {self.broker}",
            "",
            f"  {'':<50}{'events/s':>12}{'vs kafka-python':>17}{'landed':>11}",
        ]
        for f in self.figures:
            ratio = self.ratio(f)
            lines.append(
                f"  {f.label:<50}{f.rate:>12,.0f}"
                f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>17}"
                f"{(f'{f.landed:,}' if f.landed is not None else '-'):>11}"
            )
        w = self.where_time_goes
        if w:
            waited = w["wall_s"] - w["main_thread_cpu_s"] - w["io_thread_cpu_s"]
            lines += [
                "",
                f"where (a)'s {w['wall_s']:.2f} s go: main thread {w['main_thread_cpu_s']:.2f} s "
                "CPU (send() and taking the events from the simulator's process, which used "
                f"~{w['generation_cpu_s']:.2f} s CPU on the other core); client I/O thread {w['io_thread_cpu_s']:.2f} s CPU (compression, CRC32C, "
                f"network, acks); both share one GIL; {max(waited, 0.0):.2f} s waiting (for a "
                "core, the broker, acks)",
            ]
        if self.profile:
            lines += ["", "cProfile of the kafka-python run, main thread, by own CPU time:"]
            for row in self.profile:
                lines.append(f"  {row['own_s']:>7.3f} s {row['calls']:>9,}  {row['function']}")
        m = self.machine
        lines += [
            "",
            f"machine: {machine_line(m)}, Kafka {m['kafka']}",
            f"clients: kafka-python {m['kafka_python']} (crc32c: {m['crc32c']}), "
            f"confluent-kafka {m['confluent_kafka']}",
            "settings:",
            *(f"  {k}: {v}" for k, v in self.settings.items()),
        ]
        return "\n".join(lines)


# --- the measurements ---------------------------------------------------------------------


def measure_generation(config) -> tuple[Figure, float, float]:
    """(d): the simulator alone, through the same generator the producer reads."""
    from clickstream.source.producer import simulated_records

    value_bytes = key_bytes = events = 0
    started, cpu = time.perf_counter(), time.thread_time()
    for key, value, _ in simulated_records(config, with_times=False):
        events += 1
        value_bytes += len(value)
        key_bytes += len(key) if key else 0
    seconds = time.perf_counter() - started
    n = max(events, 1)
    fig = Figure(
        "generation",
        "(d) generation only (simulator, no sending)",
        events,
        seconds,
        detail={"cpu_s": time.thread_time() - cpu},
    )
    return fig, value_bytes / n, key_bytes / n


def _thread_cpu() -> dict[int, float]:
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}


def measure_ours(
    backend: str, config, topic: str, bootstrap: str, profile: bool = False
) -> tuple[Figure, dict, list[dict]]:
    """(a)/(b): simulator + our producer with `backend`; also thread CPU times and a profile."""
    from clickstream.ingest.kafka_io import message_count
    from clickstream.source.producer import generated_in_background, make_backend, produce

    client = make_backend(backend, bootstrap)
    # CPU time, not wall time: waiting for the GIL or a core would otherwise swamp the profile.
    profiler = cProfile.Profile(time.thread_time) if profile else None
    before = _thread_cpu()
    main_before = time.thread_time()
    try:
        if profiler is not None:
            profiler.enable()
        summary = produce(
            generated_in_background(config),
            topic,
            bootstrap,
            progress=False,
            producer=client,
        )
    finally:
        if profiler is not None:
            profiler.disable()
        main_cpu = time.thread_time() - main_before
        after = _thread_cpu()
        client.close()
    if summary.failed:
        raise BenchError(
            f"{summary.failed:,} of {config.count:,} records failed with {backend} "
            f"({summary.first_error}); the figure would be meaningless."
        )
    main_id = threading.get_native_id()
    others = sum(v - before.get(k, 0.0) for k, v in after.items() if k != main_id)
    cpu = {"wall_s": summary.seconds, "main_thread_cpu_s": main_cpu, "io_thread_cpu_s": others}
    label = {"kafka-python": "(a) ours, kafka-python", "confluent": "(b) ours, confluent-kafka"}
    fig = Figure(
        backend,
        label[backend] + " (simulator + producer)",
        summary.sent,
        summary.seconds,
        landed=message_count(topic, bootstrap),
        detail=client.describe(),
    )
    return fig, cpu, _top_functions(profiler) if profiler is not None else []


def _top_functions(profiler: cProfile.Profile, limit: int = 15) -> list[dict]:
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, ncalls, own, cum, callers)}
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:limit]
    out = []
    for (path, line, name), (_, calls, own, cum, _) in rows:
        where = "/".join(path.replace("\\", "/").split("/")[-2:]) if path != "~" else "builtin"
        out.append(
            {"function": f"{name} ({where}:{line})", "calls": calls, "own_s": own, "cum_s": cum}
        )
    return out


def java_producer_props(bootstrap: str) -> dict:
    """The Java client's settings matching ours (acks, idempotence, batching, compression)."""
    from clickstream.ingest.kafka_io import producer_config

    ours = producer_config(bootstrap)
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": "true",
        "linger.ms": str(ours["linger_ms"]),
        "batch.size": str(ours["batch_size"]),
        "compression.type": ours["compression_type"] or "none",
        "client.id": "clickstream-bench-java",
    }


def measure_java(
    settings: Settings, count: int, record_size: int, topic: str, bootstrap: str
) -> Figure:
    """(c): org.apache.kafka.tools.ProducerPerformance from the cached broker jars."""
    from clickstream.ingest.kafka_io import message_count
    from clickstream.local.jars import ensure_kafka_jars, kafka_jars_dir
    from clickstream.local.java import check_java_for_kafka

    java = check_java_for_kafka().executable
    ensure_kafka_jars(settings)
    props = java_producer_props(bootstrap)
    cmd = [
        java,
        "-Xmx512m",
        "-cp",
        str(kafka_jars_dir(settings) / "*"),
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(count),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        *(f"{k}={v}" for k, v in props.items()),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"Kafka's ProducerPerformance did not finish {count:,} records within 10 minutes; "
            "try a smaller --count."
        ) from None
    matches = _JAVA_SUMMARY.findall(out.stdout)
    if out.returncode != 0 or not matches:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise BenchError(
            f"Kafka's ProducerPerformance failed (exit code {out.returncode}); its last "
            f"output:\n{tail}"
        )
    sent, per_s, mb_s, avg_ms, max_ms = matches[-1]
    sent_n, rate = int(sent), float(per_s)
    return Figure(
        "java",
        f"(c) Kafka ProducerPerformance ({record_size} B, unkeyed)",
        sent_n,
        sent_n / rate if rate > 0 else 0.0,
        landed=message_count(topic, bootstrap),
        detail={"mb_per_s": float(mb_s), "avg_latency_ms": float(avg_ms), "max_ms": float(max_ms)},
    )


@contextmanager
def local_broker_for_bench(settings: Settings, echo, starting: str) -> Iterator[None]:
    """The local broker for a benchmark: started (saying `starting`) if the settings name it
    and it is not running, and then stopped again at the end; an external cluster is left as is."""
    from clickstream.local.broker import LocalBroker

    local = LocalBroker(settings)
    if settings.is_external or local.is_running():
        yield
        return
    echo(starting)
    local.up(echo=echo)
    try:
        yield
    finally:
        local.down(echo=echo)


@dataclass
class _Topics:
    """The run's fresh topics, one per client, deleted together at the end."""

    bootstrap: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    names: list[str] = field(default_factory=list)

    def fresh(self, client: str) -> str:
        from clickstream.ingest.kafka_io import ensure_topic

        name = f"clickstream-bench-{self.run_id}-{client}"
        self.names.append(name)
        ensure_topic(name, partitions=PARTITIONS, bootstrap=self.bootstrap)
        return name

    def delete(self, echo) -> None:
        from clickstream.ingest.kafka_io import delete_topic

        for name in self.names:
            try:
                delete_topic(name, self.bootstrap)
            except ClickstreamError:
                echo(f"could not delete benchmark topic {name}; delete it by hand")


@dataclass
class _Measured:
    """What the measurements of one run gathered, in the order they ran."""

    figures: list[Figure] = field(default_factory=list)
    value_size: float = 0.0
    key_size: float = 0.0
    where: dict = field(default_factory=dict)
    profile: list[dict] = field(default_factory=list)


def _measure_all(settings: Settings, config, topics: _Topics, profile: bool, echo) -> _Measured:
    """(d), then (a) and (b) for each installed client, then (c); (d) is listed last."""
    from clickstream.source.producer import BACKENDS

    run = _Measured()
    gen, run.value_size, run.key_size = measure_generation(config)
    echo(f"{gen.label}: {gen.rate:,.0f} events/s")
    for backend in BACKENDS:
        if backend == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            echo("confluent-kafka is not installed (pip install -e '.[fast]'): skipping (b)")
            continue
        fig, cpu, _ = measure_ours(backend, config, topics.fresh(backend), topics.bootstrap)
        run.figures.append(fig)
        echo(f"{fig.label}: {fig.rate:,.0f} events/s, {fig.landed:,} landed")
        if backend == "kafka-python":
            run.where = {**cpu, "generation_cpu_s": gen.detail["cpu_s"]}
    record_size = max(1, round(run.value_size))
    java = measure_java(settings, config.count, record_size, topics.fresh("java"), topics.bootstrap)
    run.figures.append(java)
    echo(f"{java.label}: {java.rate:,.0f} events/s, {java.landed:,} landed")
    run.figures.append(gen)
    if profile:
        echo("profiling the kafka-python run (a separate, slower run; not a figure)...")
        _, _, run.profile = measure_ours(
            "kafka-python", config, topics.fresh("profile"), topics.bootstrap, profile=True
        )
    return run


def _client_settings(figures: list[Figure], bootstrap: str) -> dict:
    """Each client's settings as measured, for the report."""
    return {
        "ours, kafka-python": _fmt(figures, "kafka-python"),
        "ours, confluent-kafka": _fmt(figures, "confluent"),
        "ProducerPerformance": " ".join(
            f"{k}={v}"
            for k, v in java_producer_props(bootstrap).items()
            if k not in ("bootstrap.servers", "client.id")
        ),
    }


def bench_produce(
    settings: Settings | None = None,
    count: int = 200_000,
    bootstrap: str | None = None,
    seed: int = 42,
    profile: bool = False,
    echo=print,
) -> ProduceBench:
    """Run (d), (a), (b), (c) against one broker; start the local one if needed (then stop it)."""
    from clickstream.source.simulator import SimConfig

    if count < 1:
        raise BenchError(f"--count {count}: give at least 1 event.")
    settings = (settings or get_settings()).with_(external_bootstrap=bootstrap)
    bootstrap = settings.bootstrap_servers
    if settings.is_external:
        broker = f"{bootstrap} (external cluster)"
    else:
        broker = f"local Kafka {settings.kafka_version} at {bootstrap}"
    starting = (
        "The local broker is not running: starting it for the benchmark (it is stopped "
        "again at the end)."
    )
    topics = _Topics(bootstrap)
    with local_broker_for_bench(settings, echo, starting):
        machine = machine_info(settings, "external cluster" if settings.is_external else None)
        try:
            run = _measure_all(settings, SimConfig(seed=seed, count=count), topics, profile, echo)
        finally:
            topics.delete(echo)
    return ProduceBench(
        count=count,
        record_size=run.value_size,
        key_size=run.key_size,
        bootstrap=bootstrap,
        broker=broker,
        machine=machine,
        settings=_client_settings(run.figures, bootstrap),
        figures=run.figures,
        where_time_goes=run.where,
        profile=run.profile,
    )


def _fmt(figures: list[Figure], key: str) -> str:
    fig = next((f for f in figures if f.key == key), None)
    if fig is None:
        return "not run"
    return " ".join(f"{k}={v}" for k, v in fig.detail.items())
