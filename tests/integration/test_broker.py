"""The local KRaft broker: lifecycle, idempotence, persistence and the errors learners meet."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from clickstream.config import get_settings
from clickstream.errors import (
    BrokerError,
    BrokerNotReachable,
    JarResolutionError,
    PortInUseError,
)
from clickstream.ingest.kafka_io import ensure_topic, message_count, read_all, send_all
from clickstream.local.broker import LocalBroker, free_port
from clickstream.processes import alive
from tests.conftest import CLICKSTREAM, require_tool

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(tmp_path, monkeypatch):
    """A second broker with its own state, for lifecycle tests; always stopped afterwards."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    b = LocalBroker(get_settings(state_dir=tmp_path / "state", port=free_port()))
    yield b
    b.down(echo=lambda m: None)


def java_processes_for(state_dir) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "kafka.Kafka" in line and str(state_dir) in line]


def test_up_twice_down_and_up_again_keeps_data(own_broker):
    said = []
    own_broker.up(echo=said.append)
    pid = own_broker.pid()
    assert pid and alive(pid)
    own_broker.up(echo=said.append)  # harmless: same process, says so
    assert own_broker.pid() == pid
    assert "already running" in said[-1]

    bootstrap = own_broker.bootstrap_servers
    assert ensure_topic("keep_me", partitions=2, bootstrap=bootstrap)
    send_all([(b"k%d" % i, b"v%d" % i) for i in range(500)], "keep_me", bootstrap)
    assert message_count("keep_me", bootstrap) == 500
    status = own_broker.status()
    assert status.running and status.pid == pid and status.kafka_version.startswith("4.")
    assert status.topics["keep_me"] == {"partitions": 2, "messages": 500}

    assert own_broker.down(echo=said.append)
    assert not alive(pid)
    assert java_processes_for(own_broker.dir) == []
    assert not own_broker.status().running

    own_broker.up(echo=said.append)
    assert message_count("keep_me", bootstrap) == 500  # topic data survives down/up
    assert sorted(m.value for m in read_all("keep_me", bootstrap)) == sorted(
        b"v%d" % i for i in range(500)
    )
    own_broker.down(purge=True, echo=said.append)
    assert not (own_broker.dir / "data").exists()


def test_port_taken_by_a_stranger_is_reported_with_a_way_out(own_broker):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", own_broker.port))
        sock.listen(1)
        with pytest.raises(PortInUseError) as err:
            own_broker.up(echo=lambda m: None)
    message = str(err.value)
    assert f"Port {own_broker.port}" in message and "--port" in message
    assert not (own_broker.dir / "data" / "meta.properties").exists()  # nothing formatted


def test_broker_that_fails_to_start_points_to_its_log(own_broker, monkeypatch):
    monkeypatch.setenv("CLICKSTREAM_BROKER_HEAP", "0k")  # the JVM refuses this heap size
    with pytest.raises(BrokerError) as err:
        own_broker.up(echo=lambda m: None)
    message = str(err.value)
    assert str(own_broker.log_file) in message
    assert "heap" in message.lower()  # the log's last lines are in the message
    assert own_broker.pid() is None


def test_a_broker_advertising_an_unreachable_address_is_named_as_such(tmp_path, monkeypatch):
    """A client that reaches the bootstrap port but not the address the broker advertises (a
    container's name, say) is told that, not that no broker answered."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    port, external = free_port(), free_port()
    b = LocalBroker(
        get_settings(state_dir=tmp_path / "state", port=port),
        listeners={"EXTERNAL": (external, "PLAINTEXT")},
        properties={
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},EXTERNAL://kafka-container:9092"
        },
    )
    try:
        b.up(echo=lambda m: None)  # its own listener answers
        with pytest.raises(BrokerNotReachable) as err:
            ensure_topic("advertised", bootstrap=f"127.0.0.1:{external}")
        message = str(err.value)
        assert f"Something accepts connections at 127.0.0.1:{external}" in message
        assert "advertised.listeners" in message and "No Kafka broker answered" not in message
        with pytest.raises(BrokerNotReachable) as err:  # nothing listens: the other message
            ensure_topic("advertised", bootstrap=f"127.0.0.1:{free_port()}")
        assert "No Kafka broker answered" in str(err.value)
    finally:
        b.down(echo=lambda m: None)


def test_external_cluster_starts_nothing(bootstrap, tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    b = LocalBroker(get_settings(state_dir=tmp_path))
    said = []
    status = b.up(echo=said.append)
    assert "nothing started" in said[0] and status.external
    assert not (tmp_path / "broker").exists()
    assert not b.down(echo=said.append)


def test_jar_resolution_failure_names_the_artifact_and_the_mirror_setting(tmp_path, monkeypatch):
    from clickstream.local.jars import ensure_connector_jars

    with socket.socket() as sock:  # a port where nothing answers
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("CLICKSTREAM_MAVEN_REPO", f"http://127.0.0.1:{dead}/maven2")
    settings = get_settings(cache_dir=tmp_path / "cache")
    with pytest.raises(JarResolutionError) as err:
        ensure_connector_jars(settings, quiet=True)
    message = str(err.value)
    assert "spark-sql-kafka-0-10" in message and "CLICKSTREAM_MAVEN_REPO" in message
    assert not list((tmp_path / "cache" / "jars").glob("*/.complete"))


def test_kcat_lists_metadata_and_reads_events(bootstrap, topic):
    kcat = require_tool("kcat")
    values = [b'{"n":%d}' % i for i in range(200)]
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    send_all([(b"user%d" % (i % 7), v) for i, v in enumerate(values)], topic, bootstrap)
    meta = subprocess.run([kcat, "-b", bootstrap, "-L"], capture_output=True, text=True, timeout=60)
    assert meta.returncode == 0, meta.stderr
    assert f'topic "{topic}" with 3 partitions' in meta.stdout
    read = subprocess.run(
        [kcat, "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%s\n"],
        capture_output=True,
        timeout=60,
    )
    assert read.returncode == 0, read.stderr
    assert sorted(read.stdout.split()) == sorted(values)


def test_cli_broker_status_shows_topics(bootstrap, topic, broker_settings):
    ensure_topic(topic, partitions=2, bootstrap=bootstrap)
    send_all([(None, b"x")] * 3, topic, bootstrap)
    env = dict(os.environ, CLICKSTREAM_STATE_DIR=str(broker_settings.state_dir))
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    out = subprocess.run(
        [CLICKSTREAM, "broker", "status"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"local broker: {bootstrap}" in out.stdout
    assert "running: yes" in out.stdout
    line = next(line for line in out.stdout.splitlines() if topic in line)
    assert "partitions=2" in line and "messages=3" in line


def test_the_broker_starts_from_the_class_archive_that_setup_recorded(broker):
    import psutil

    from clickstream.local.broker import kafka_class_archive
    from clickstream.local.jars import kafka_jars_dir
    from clickstream.local.java import check_java_for_kafka
    from tests.conftest import assert_loaded_from_archive, require_class_archive

    if broker.settings.is_external:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS names an external cluster")
    java = check_java_for_kafka()
    archive = kafka_class_archive(broker.settings, java)
    require_class_archive(archive)
    assert f"-XX:SharedArchiveFile={archive}" in psutil.Process(broker.pid()).cmdline()
    classpath = str(kafka_jars_dir(broker.settings) / "*")
    assert_loaded_from_archive(java.executable, archive, classpath, "kafka.Kafka")
