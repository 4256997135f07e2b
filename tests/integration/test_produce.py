"""Producing through the real broker: replay fidelity, keys, order, the CLI, both backends."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict

import pytest
from kafka.partitioner.default import murmur2

from clickstream.ingest.kafka_io import ensure_topic, message_count, read_all
from clickstream.source.producer import ReplayFileError, produce, replay_file, simulated_records
from clickstream.source.simulator import SAMPLE_PATH, SimConfig, Simulator
from tests.conftest import CLICKSTREAM

pytestmark = pytest.mark.integration

SUMMARY = re.compile(
    r"sent ([\d,]+) records to (\S+) in [\d.]+ s \(([\d,]+) events/s\), failed ([\d,]+)"
)


def file_lines(path) -> list[bytes]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [x for x in data.split(b"\n") if x]


def is_json(value: bytes) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def expected_key(value: bytes) -> bytes | None:
    try:
        obj = json.loads(value)
    except ValueError:
        return None
    user = obj.get("user_id") if isinstance(obj, dict) else None
    return user.encode() if isinstance(user, str) else None


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for keyed records (the Java client's, and ours)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLICKSTREAM, *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def test_replayed_sample_arrives_byte_identical_keyed_and_in_per_key_order(bootstrap, topic):
    lines = file_lines(SAMPLE_PATH)
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    summary = replay_file(SAMPLE_PATH, topic, bootstrap, progress=False)
    assert (summary.sent, summary.failed) == (len(lines), 0)
    assert summary.not_json == sum(not is_json(v) for v in lines) > 0

    records = list(read_all(topic, bootstrap))
    # Byte-identical: the multiset of values equals the file's lines.
    assert Counter(r.value for r in records) == Counter(lines)

    # Keyed by user_id for every JSON object that has one; no key for non-JSON lines.
    for r in records:
        assert r.key == expected_key(r.value)
        if r.key is not None:
            assert r.partition == partition_for(r.key, 3)

    # Per-key order: on its partition, each key's values come in file order.
    in_file = defaultdict(list)
    for value in lines:
        key = expected_key(value)
        if key is not None:
            in_file[key].append(value)
    on_topic = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.key is not None:
            on_topic[r.key].append(r.value)
    assert on_topic == in_file


def test_truncated_replay_sends_the_lines_before_the_break(bootstrap, topic, tmp_path):
    lines = file_lines(SAMPLE_PATH)[:4000]
    packed = gzip.compress(b"".join(x + b"\n" for x in lines))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    with pytest.raises(ReplayFileError) as err:
        replay_file(path, topic, bootstrap, progress=False)
    sent = err.value.summary.sent
    assert 0 < sent < len(lines) and f"after line {sent:,}" in str(err.value)
    assert Counter(r.value for r in read_all(topic, bootstrap)) == Counter(lines[:sent])


def test_delivery_failures_are_counted_not_swallowed(bootstrap, topic):
    ensure_topic(topic, partitions=1, bootstrap=bootstrap, configs={"max.message.bytes": "4096"})
    items = [(b"u_1", b'{"n":%d}' % i, None) for i in range(5)]
    items.append((b"u_1", os.urandom(20_000), None))  # too big for this topic
    for backend in ("kafka-python", "confluent"):
        summary = produce(items, topic, bootstrap, progress=False, backend=backend)
        assert summary.failed >= 1 and summary.sent + summary.failed == len(items)
        assert re.search(r"too ?large", summary.first_error, re.IGNORECASE)
        assert f"failed {summary.failed}" in summary.line()
    assert message_count(topic, bootstrap) == sum(1 for _ in read_all(topic, bootstrap))


def test_confluent_backend_delivers_the_same_records_to_the_same_partitions(bootstrap, topic):
    n = 3000
    config = SimConfig(seed=11, count=n)
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    summary = produce(
        simulated_records(config), topic, bootstrap, backend="confluent", progress=False
    )
    assert (summary.sent, summary.failed, summary.backend) == (n, 0, "confluent")
    records = list(read_all(topic, bootstrap))
    expected = [(r.key, r.value) for r in Simulator(config).records()]
    assert Counter((r.key, r.value) for r in records) == Counter(expected)
    for r in records:
        assert r.partition == partition_for(r.key, 3)  # where kafka-python puts it too


def test_cli_produce_count_at_a_rate(bootstrap, topic):
    out = cli(
        "produce", "--topic", topic, "--bootstrap-servers", bootstrap,
        "--count", "300", "--rate", "1000", "--no-progress",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    match = SUMMARY.search(out.stdout)
    assert match, out.stdout
    assert match.group(1) == "300" and match.group(2) == topic and match.group(4) == "0"
    assert int(match.group(3).replace(",", "")) > 0
    assert message_count(topic, bootstrap) == 300
    for record in read_all(topic, bootstrap):
        event = json.loads(record.value)
        assert record.key == event["user_id"].encode()


def test_cli_produce_with_the_confluent_backend(bootstrap, topic):
    out = cli(
        "produce", "--topic", topic, "--bootstrap-servers", bootstrap,
        "--count", "500", "--backend", "confluent", "--no-progress",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert SUMMARY.search(out.stdout).group(1) == "500"
    assert message_count(topic, bootstrap) == 500


def test_cli_replay_reports_lines_that_are_not_json(bootstrap, topic, tmp_path):
    event = {"event_id": "e", "event_time": "2026-11-28T00:00:00Z", "user_id": "u_1"}
    good = json.dumps(event).encode()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([good, good, b"GET / HTTP/1.1", good, b"{oops"]) + b"\n")
    out = cli("produce", "--topic", topic, "--bootstrap-servers", bootstrap, "--replay", str(path))
    assert out.returncode == 0, out.stderr
    assert "sent 5 records" in out.stdout and "not JSON: 2 (first at line 3)" in out.stdout
    assert message_count(topic, bootstrap) == 5


def test_cli_replay_of_a_truncated_gzip_says_where_it_broke(bootstrap, topic, tmp_path):
    lines = file_lines(SAMPLE_PATH)[:3000]
    packed = gzip.compress(b"".join(x + b"\n" for x in lines))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    out = cli("produce", "--topic", topic, "--bootstrap-servers", bootstrap, "--replay", str(path))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    sent = int(SUMMARY.search(out.stdout).group(1).replace(",", ""))
    assert f"error: Replay file {path} broke after line {sent:,}" in out.stderr
    assert message_count(topic, bootstrap) == sent


def test_cli_produce_to_an_unreachable_broker_is_one_clear_line(topic):
    out = cli("produce", "--topic", topic, "--bootstrap-servers", "127.0.0.1:1", "--count", "5")
    assert out.returncode == 1
    assert "No Kafka broker answered at 127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_consume_from_beginning_with_max_shows_bad_values(bootstrap, topic):
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    config = SimConfig(seed=5, count=8)
    items = list(simulated_records(config, with_times=False))
    items += [(None, b"GET / HTTP/1.1", None), (b"\xff\xfe", b"\xff not utf-8", None)]
    assert produce(items, topic, bootstrap, progress=False).sent == 10

    out = cli(
        "consume", "--topic", topic, "--bootstrap-servers", bootstrap,
        "--from-beginning", "--max", "10", "--timeout", "30",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = out.stdout.splitlines()
    assert len(shown) == 10
    assert sum("INVALID (not_json)" in x for x in shown) == 1
    assert sum("INVALID (not_utf8)" in x for x in shown) == 1
    assert "(10 records)" in out.stderr
    for key, _, _ in items[:8]:
        assert any(f"key={key.decode()}" in x for x in shown)

    raw = cli(
        "consume", "--topic", topic, "--bootstrap-servers", bootstrap,
        "--from-beginning", "--max", "4", "--raw",
    )  # fmt: skip
    assert raw.returncode == 0 and len(raw.stdout.splitlines()) == 4


def test_cli_consume_of_a_missing_topic_says_so(bootstrap):
    out = cli("consume", "--topic", "no_such_topic_here", "--bootstrap-servers", bootstrap)
    assert out.returncode == 1
    assert "Topic no_such_topic_here does not exist" in out.stderr


def interrupt_when_ready(args: list[str], ready) -> subprocess.CompletedProcess:
    """Run the CLI, press Ctrl-C (SIGINT) once `ready(proc)` returns, and collect its output."""
    proc = subprocess.Popen(
        [CLICKSTREAM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        ready(proc)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_stops_produce_with_a_summary_of_what_was_delivered(bootstrap, topic):
    def some_landed(proc):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if message_count(topic, bootstrap) > 0:
                return
            time.sleep(0.5)
        pytest.fail("produce never delivered a record")

    args = ["produce", "--topic", topic, "--bootstrap-servers", bootstrap, "--rate", "50"]
    out = interrupt_when_ready([*args, "--duration", "300", "--no-progress"], some_landed)
    assert out.returncode == 130, out.stderr
    assert "Traceback" not in out.stderr
    match = SUMMARY.search(out.stdout)
    assert match and "interrupted" in out.stdout, out.stdout
    sent = int(match.group(1).replace(",", ""))
    assert sent > 0 and message_count(topic, bootstrap) == sent


def test_ctrl_c_stops_consume_cleanly(bootstrap, topic):
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    produce([(b"u_1", b'{"n":1}', None)], topic, bootstrap, progress=False)

    def first_line_shown(proc):
        assert proc.stdout.readline()  # the consumer is up and printing

    args = ["consume", "--topic", topic, "--bootstrap-servers", bootstrap, "--from-beginning"]
    out = interrupt_when_ready(args, first_line_shown)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "(1 record)" in out.stderr
