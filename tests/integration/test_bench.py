"""`clickstream bench produce`: structure, positive figures and landed counts (never timings)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from clickstream.bench.produce import Figure, ProduceBench
from clickstream.config import Settings
from clickstream.ingest.kafka_io import describe_topics
from clickstream.local.broker import LocalBroker, free_port
from tests.conftest import CLICKSTREAM

pytestmark = pytest.mark.integration

COUNT = 3000
CLIENTS = ("kafka-python", "confluent", "java")


def bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLICKSTREAM, "bench", "produce", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env or os.environ,
    )


@pytest.fixture(scope="module")
def report(bootstrap) -> dict:
    out = bench("--count", str(COUNT), "--json", "--bootstrap-servers", bootstrap)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_client_is_measured_with_a_positive_figure(report):
    figures = {f["key"]: f for f in report["figures"]}
    assert set(figures) == {*CLIENTS, "generation"}
    for fig in figures.values():
        assert fig["events"] == COUNT
        assert fig["seconds"] > 0 and fig["events_per_s"] > 0
        assert fig["ratio_to_kafka_python"] > 0
    assert figures["kafka-python"]["ratio_to_kafka_python"] == pytest.approx(1.0)
    assert figures["generation"]["landed"] is None  # nothing is sent


def test_every_message_landed_and_the_topics_are_gone(report, bootstrap):
    for fig in report["figures"]:
        if fig["key"] in CLIENTS:
            assert fig["landed"] == COUNT, fig
    assert not [t for t in describe_topics(bootstrap) if t.startswith("clickstream-bench-")]


def test_report_names_the_machine_the_settings_and_the_record_size(report):
    machine = report["machine"]
    for key in ("cpu", "cores", "ram_gib", "python", "java", "kafka", "kafka_python", "crc32c"):
        assert machine[key], key
    assert machine["cores"] >= 1 and machine["ram_gib"] > 0
    assert 100 < report["record_size"] < 1000  # JSON events of a few hundred bytes
    assert "acks=all" in report["settings"]["ours, kafka-python"]
    assert "acks=all" in report["settings"]["ProducerPerformance"]
    where = report["where_time_goes"]
    assert where["wall_s"] > 0 and where["main_thread_cpu_s"] > 0


def test_text_report_lists_each_figure_with_its_ratio(report):
    data = dict(report)
    figures = [
        Figure(f["key"], f["label"], f["events"], f["seconds"], f["landed"], f["detail"])
        for f in data.pop("figures")
    ]
    text = ProduceBench(**data, figures=figures).text()
    for label in ("(a) ours, kafka-python", "(b) ours, confluent-kafka", "(c) Kafka", "(d) gen"):
        assert label in text
    assert "1.00x" in text and "machine:" in text and "events/s" in text


def test_bench_starts_the_local_broker_when_needed_and_stops_it(tmp_path):
    """With no broker running, the bench says it starts one, measures, and stops it again."""
    port = free_port()
    env = {
        **os.environ,
        "CLICKSTREAM_STATE_DIR": str(tmp_path),
        "CLICKSTREAM_KAFKA_PORT": str(port),
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    broker = LocalBroker(Settings(state_dir=tmp_path, port=port, external_bootstrap=None))
    try:
        out = bench("--count", "200", env=env)
        assert out.returncode == 0, out.stderr
        assert "starting it for the benchmark" in out.stderr
        assert "(a) ours, kafka-python" in out.stdout and "machine:" in out.stdout
        assert not broker.is_running()
    finally:
        broker.down(echo=lambda m: None)  # only if the assertion above failed


@pytest.mark.spark
def test_bench_stream_reports_the_job_beside_a_bare_read(spark, broker_settings):
    """`clickstream bench stream`'s figures, on this session's Spark and broker: every key, the
    events the job counted, a latency per live event (never a timing threshold)."""
    from clickstream.bench.stream import bench_stream

    report = bench_stream(
        broker_settings, count=2000, max_offsets_per_trigger=1000, live_rate=100, live_seconds=3
    )
    figures = report.to_dict()
    for key in (
        "read_parse_events_per_s",
        "checked_events_per_s",
        "deduplicated_events_per_s",
        "job_events_per_s",
        "job_first_run_events_per_s",
        "events",
        "batches",
        "state_rows",
    ):
        assert figures[key] > 0, key
    assert figures["events"] == 2000 and figures["batches"] >= 2
    assert figures["live_events"] == 300
    assert 0 <= figures["latency_p50_s"] <= figures["latency_p95_s"] <= figures["latency_p99_s"]
    assert figures["machine"]["cores"] >= 1
    assert "events/s" in report.text() and "p99" in report.text()
    assert "first run" in report.text()
    assert "+ the contract check" in report.text() and "de-duplication" in report.text()
