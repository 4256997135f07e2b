"""Java detection and settings: the errors learners see before anything starts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from clickstream.config import Settings, get_settings
from clickstream.errors import ConnectorMismatchError, JavaError
from clickstream.local import java
from clickstream.process.spark import check_connector


def fake_java_home(tmp_path: Path, version_line: str) -> Path:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    exe = home / "bin" / "java"
    exe.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return home


def test_no_java_names_the_cause_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaError) as err:
        java.check_java_for_spark()
    assert "No Java found" in str(err.value)
    assert "openjdk-17" in str(err.value)


def test_java_home_pointing_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "missing"))
    with pytest.raises(JavaError, match="does not exist"):
        java.java_info()


def test_old_java_is_refused_with_the_version_found(monkeypatch, tmp_path):
    monkeypatch.setenv(
        "JAVA_HOME", str(fake_java_home(tmp_path, 'openjdk version "11.0.22" 2024-01-16'))
    )
    with pytest.raises(JavaError) as err:
        java.check_java_for_spark()
    assert "Java 11.0.22" in str(err.value) and "17 or 21" in str(err.value)
    with pytest.raises(JavaError, match="17 or newer"):
        java.check_java_for_kafka()


def test_too_new_java_mentions_the_security_manager_failure(monkeypatch, tmp_path):
    real = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
    home = (
        real
        if (real / "bin" / "java").exists()
        else fake_java_home(tmp_path, 'openjdk version "25" 2025-09-16')
    )
    monkeypatch.setenv("JAVA_HOME", str(home))
    with pytest.raises(JavaError) as err:
        java.check_java_for_spark()
    assert "Java 25" in str(err.value) and "security manager" in str(err.value)
    assert java.check_java_for_kafka().major == 25  # the broker itself runs on 17+


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_412"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "25-ea" 2025-09-16', 25),
    ],
)
def test_parse_java_version(text, major):
    assert java.parse_java_version(text)[0] == major


def test_supported_java_here():
    info = java.check_java_for_spark()
    assert info.major in (17, 21)


def test_connector_version_must_equal_pyspark():
    jars = [Path("spark-sql-kafka-0-10_2.13-4.1.0.jar"), Path("kafka-clients-3.9.0.jar")]
    with pytest.raises(ConnectorMismatchError, match="4.1.0 but PySpark is 4.2.0"):
        check_connector(jars, "4.2.0")
    with pytest.raises(ConnectorMismatchError, match="Failed to find data source"):
        check_connector([Path("kafka-clients-3.9.0.jar")], "4.2.0")
    assert check_connector([Path("spark-sql-kafka-0-10_2.13-4.2.0.jar")], "4.2.0") == "4.2.0"


def test_cache_dir_is_absolute_without_home(monkeypatch):
    """Ivy fails with 'basedir must be absolute: ?/.ivy2' when HOME is unusable (README)."""
    for var in (
        "CLICKSTREAM_CACHE_DIR",
        "CLICKSTREAM_STATE_DIR",
        "XDG_CACHE_HOME",
        "XDG_STATE_HOME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", "?")
    s = Settings()
    assert s.cache_dir.is_absolute() and s.state_dir.is_absolute()
    monkeypatch.delenv("HOME")
    assert Settings().cache_dir.is_absolute()


def test_external_bootstrap_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9093")
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", str(tmp_path))
    s = get_settings()
    assert s.is_external and s.bootstrap_servers == "kafka.example:9093"


def test_local_port_follows_the_running_broker(monkeypatch, tmp_path):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("CLICKSTREAM_KAFKA_PORT", raising=False)
    s = get_settings(state_dir=tmp_path)
    assert s.bootstrap_servers == "127.0.0.1:9092"
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / "meta.json").write_text('{"port": 9192}')
    assert s.bootstrap_servers == "127.0.0.1:9192"
    assert get_settings(state_dir=tmp_path, port=9300).bootstrap_servers == "127.0.0.1:9300"
    assert os.environ.get("KAFKA_BOOTSTRAP_SERVERS") is None


def test_free_ports_are_distinct_unbound_and_avoid_the_ones_given():
    import socket

    from clickstream.local.broker import free_ports

    first = free_ports(1)[0]
    ports = free_ports(40, avoid=(first,))
    assert len(set(ports)) == 40 and first not in ports
    for port in ports[:5]:  # nobody holds them any more: each can be bound
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_spark_class_archive_is_kept_per_java_and_pyspark(tmp_path):
    """The class archive only fits the JVM and the jars it was recorded with: another Java (or
    another PySpark) looks for an archive of its own instead of reusing this one."""
    from dataclasses import replace

    from clickstream.local.jars import pyspark_version
    from clickstream.local.java import JavaInfo
    from clickstream.process.spark import class_archive

    settings = replace(get_settings(), cache_dir=tmp_path)
    java17 = JavaInfo("/opt/jdk17/bin/java", 17, "17.0.15")
    path = class_archive(settings, java17)
    assert path.parent == tmp_path / "spark-classes" and path.suffix == ".jsa"
    assert f"pyspark-{pyspark_version()}-java-17-" in path.name
    assert path == class_archive(settings, java17)
    assert path != class_archive(settings, JavaInfo("/opt/jdk17/bin/java", 17, "17.0.16"))
    assert path != class_archive(settings, JavaInfo("/opt/other/bin/java", 17, "17.0.15"))


def test_a_class_archive_is_recorded_again_for_reinstalled_jars(tmp_path):
    """The JVM refuses an archive, silently, once a jar on its class path has another size or
    modification time (a virtual environment made again at the same path): such jars get an
    archive of their own."""
    import os

    from clickstream.local.java import JavaInfo, class_archive_path

    java17 = JavaInfo("/opt/jdk17/bin/java", 17, "17.0.15")
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    for jar in jars:
        jar.write_bytes(b"PK")
    first = class_archive_path(tmp_path, "spark", java17, jars)
    assert first == class_archive_path(tmp_path, "spark", java17, list(reversed(jars)))
    os.utime(jars[1], ns=(1_000_000_000, 1_000_000_000))
    touched = class_archive_path(tmp_path, "spark", java17, jars)
    assert touched != first
    jars[1].write_bytes(b"PK.")
    os.utime(jars[1], ns=(1_000_000_000, 1_000_000_000))
    assert class_archive_path(tmp_path, "spark", java17, jars) != touched


def test_kafka_class_archive_is_kept_per_java_and_kafka_version(tmp_path):
    from dataclasses import replace

    from clickstream.local.broker import kafka_class_archive
    from clickstream.local.java import JavaInfo

    settings = replace(get_settings(), cache_dir=tmp_path)
    java17 = JavaInfo("/opt/jdk17/bin/java", 17, "17.0.15")
    path = kafka_class_archive(settings, java17)
    assert path.parent == tmp_path / "kafka-classes"
    assert path.name.startswith(f"kafka-{settings.kafka_version}-java-17-")
    assert path != kafka_class_archive(settings, JavaInfo("/opt/jdk21/bin/java", 21, "21.0.5"))
    other = replace(settings, kafka_version="3.9.1")
    assert kafka_class_archive(other, java17).name.startswith("kafka-3.9.1-java-17-")
