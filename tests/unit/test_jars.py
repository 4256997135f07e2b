"""Fetching the jar sets at the same time: what a learner sees when one of them cannot be fetched.

The unit tests run the real fetch code with a stand-in for Java that plays Ivy (it writes the
jars it is asked for, or fails the way Ivy does); the integration test runs the real Ivy against
a local Maven mirror that holds only one of the sets.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from clickstream.config import get_settings
from clickstream.errors import JarResolutionError, JavaError
from clickstream.local import jars

# Plays `java -jar ivy.jar -ivy ivy.xml ... -retrieve PATTERN`. It first waits until
# FAKE_IVY_TOGETHER runs have started (so sets fetched one after the other never get past
# here), then fails for the module named in FAKE_IVY_FAIL, after leaving a partial download.
FAKE_IVY = r"""
import os, re, sys, time
from pathlib import Path

args = sys.argv[1:]
ivy_xml = Path(args[args.index("-ivy") + 1]).read_text()
staging = Path(args[args.index("-retrieve") + 1]).parent
module = re.search(r'module="([^"]+)"', ivy_xml).group(1)
rendezvous = Path(os.environ["FAKE_IVY_DIR"])
(rendezvous / f"started-{module}").touch()
together = int(os.environ["FAKE_IVY_TOGETHER"])
for _ in range(600):
    if len(list(rendezvous.glob("started-*"))) >= together:
        break
    time.sleep(0.1)
else:
    print(f"{module} ran alone: the sets were not fetched at the same time")
    sys.exit(3)
deps = re.findall(r'<dependency org="([^"]+)" name="([^"]+)" rev="([^"]+)"', ivy_xml)
fail = os.environ.get("FAKE_IVY_FAIL")
if fail is not None and fail in module:
    (staging / "half-downloaded.jar").write_bytes(b"PK")
    print("\t\t:: UNRESOLVED DEPENDENCIES ::")
    for org, name, rev in deps:
        print(f"\t\t:: {org}#{name};{rev}: not found")
    sys.exit(1)
for org, name, rev in deps:
    (staging / f"{name}-{rev}.jar").write_bytes(b"PK")
    print(f"\t[SUCCESSFUL ] {org}#{name};{rev}!{name}.jar (3ms)")
"""


@pytest.fixture
def fake_ivy(tmp_path, monkeypatch):
    """Java that plays Ivy; returns the directory where each run leaves `started-<set dir>`."""
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!{sys.executable}\n{FAKE_IVY}")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    rendezvous = tmp_path / "runs"
    rendezvous.mkdir()
    monkeypatch.setenv("JAVA_HOME", str(home))
    monkeypatch.setenv("FAKE_IVY_DIR", str(rendezvous))
    monkeypatch.setenv("FAKE_IVY_TOGETHER", "3")
    monkeypatch.delenv("CLICKSTREAM_MAVEN_REPO", raising=False)
    return rendezvous


def cached_sets(cache: Path) -> list[str]:
    """Every directory under jars/, complete or not (staging directories included)."""
    return sorted(p.name for p in (cache / "jars").iterdir())


def test_one_failed_set_is_named_and_the_others_are_cached(fake_ivy, tmp_path, capsys, monkeypatch):
    settings = get_settings(cache_dir=tmp_path / "cache")
    monkeypatch.setenv("FAKE_IVY_FAIL", "spark-kafka")
    with pytest.raises(JarResolutionError) as err:
        jars.ensure_all_jars(settings)
    message = str(err.value)
    connector = f"Spark Kafka connector {jars.pyspark_version()} jars"
    assert message.startswith(f"Could not fetch {connector} (org.apache.spark:spark-sql-kafka")
    assert "spark-sql-kafka-0-10_2.13;" in message and "not found" in message
    assert "Apache Kafka" not in message and "PostgreSQL" not in message
    assert "CLICKSTREAM_MAVEN_REPO" in message  # the fix
    # The two sets that came are complete; of the failed one nothing is left, not even staging.
    broker, jdbc = jars.kafka_jars_dir(settings), jars.jdbc_jars_dir(settings)
    assert cached_sets(settings.cache_dir) == sorted([broker.name, jdbc.name])
    assert jars.is_complete(broker) and jars.is_complete(jdbc)
    assert [p.name for p in jars.jar_files(jdbc)] == ["postgresql-42.7.14.jar"]
    # Progress lines say which set each download belongs to.
    lines = capsys.readouterr().err.splitlines()
    assert "  broker    [  1] kafka_2.13.jar" in lines
    assert "  jdbc      [  1] postgresql.jar" in lines
    assert f"  {jars.jdbc_jar_set(settings).label}: 1 jars, 0 MB" in lines

    # Run again once the network is back: only the missing set is fetched.
    monkeypatch.delenv("FAKE_IVY_FAIL")
    monkeypatch.setenv("FAKE_IVY_TOGETHER", "1")
    for started in fake_ivy.iterdir():
        started.unlink()
    found = jars.ensure_all_jars(settings, quiet=True)
    assert [p.name for p in fake_ivy.iterdir()] == [
        f"started-{jars.connector_jars_dir(settings).name}"
    ]
    assert [p.name for p in found.connector] == [
        f"spark-sql-kafka-0-10_2.13-{jars.pyspark_version()}.jar"
    ]
    assert len(found.broker) == len(jars.kafka_modules(settings.kafka_version))
    assert jars.connector_version(found.connector) == jars.pyspark_version()
    assert capsys.readouterr().err == ""  # quiet


def test_every_failed_set_is_named_with_the_fix_said_once(fake_ivy, tmp_path, monkeypatch):
    settings = get_settings(cache_dir=tmp_path / "cache")
    monkeypatch.setenv("FAKE_IVY_FAIL", "")  # every module name contains ""
    with pytest.raises(JarResolutionError) as err:
        jars.ensure_all_jars(settings, quiet=True)
    message = str(err.value)
    assert message.startswith("Could not fetch 3 of the 3 jar sets from Maven Central:")
    for jar_set in (
        jars.kafka_jar_set(settings),
        jars.connector_jar_set(settings),
        jars.jdbc_jar_set(settings),
    ):
        assert f"- {jar_set.label} (" in message
    assert "org.postgresql#postgresql;42.7.14: not found" in message
    assert message.count("CLICKSTREAM_MAVEN_REPO=") == 1
    assert cached_sets(settings.cache_dir) == []


def test_a_single_set_is_still_fetched_alone(fake_ivy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_IVY_TOGETHER", "1")
    settings = get_settings(cache_dir=tmp_path / "cache")
    found = jars.ensure_jdbc_jars(settings)
    assert [p.name for p in found] == ["postgresql-42.7.14.jar"]
    assert "  [  1] postgresql.jar" in capsys.readouterr().err.splitlines()
    assert cached_sets(settings.cache_dir) == [jars.jdbc_jars_dir(settings).name]


def test_no_java_is_said_once_not_once_per_set(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "missing"))
    with pytest.raises(JavaError, match="does not exist") as err:
        jars.ensure_all_jars(get_settings(cache_dir=tmp_path / "cache"), quiet=True)
    assert str(err.value).count("does not exist") == 1


@pytest.mark.integration
def test_real_ivy_fetches_the_sets_a_mirror_has_and_names_the_others(tmp_path, monkeypatch):
    """Ivy itself, three runs at once, against a local mirror that holds only the JDBC driver."""
    version = jars.POSTGRES_JDBC_VERSION
    module = tmp_path / "m2" / "org" / "postgresql" / "postgresql" / version
    module.mkdir(parents=True)
    (module / f"postgresql-{version}.pom").write_text(
        "<project><modelVersion>4.0.0</modelVersion>"
        f"<groupId>org.postgresql</groupId><artifactId>postgresql</artifactId>"
        f"<version>{version}</version></project>"
    )
    (module / f"postgresql-{version}.jar").write_bytes(b"PK\x05\x06" + bytes(18))
    monkeypatch.setenv("CLICKSTREAM_MAVEN_REPO", (tmp_path / "m2").as_uri() + "/")
    settings = get_settings(cache_dir=tmp_path / "cache")
    with pytest.raises(JarResolutionError) as err:
        jars.ensure_all_jars(settings, quiet=True)
    message = str(err.value)
    assert message.startswith("Could not fetch 2 of the 3 jar sets from file:")
    assert f"- Apache Kafka {settings.kafka_version} broker jars (" in message
    assert "- Spark Kafka connector" in message and "PostgreSQL" not in message
    broker_part = message.split("- Spark Kafka connector")[0]
    assert f"org.apache.kafka#kafka-tools;{settings.kafka_version}: not found" in broker_part
    assert "unset CLICKSTREAM_MAVEN_REPO" in message
    jdbc = jars.jdbc_jars_dir(settings)
    assert cached_sets(settings.cache_dir) == [jdbc.name]
    assert [p.name for p in jars.jar_files(jdbc)] == [f"postgresql-{version}.jar"]
    assert jars.ensure_jdbc_jars(settings, quiet=True) == jars.jar_files(jdbc)  # from the cache
