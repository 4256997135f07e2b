"""Fetch and cache the jars that run Kafka and connect Spark to it and to PostgreSQL.

Every set (the broker, the Spark Kafka connector, the PostgreSQL JDBC driver) is resolved from
Maven Central with the Ivy jar that ships inside PySpark, so a learner needs nothing beyond
Python and Java. Each set is fetched once into the cache directory; a warm machine needs no
network. Set CLICKSTREAM_MAVEN_REPO to use a mirror.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from xml.sax.saxutils import quoteattr

from clickstream.config import SCALA_BINARY, Settings, get_settings
from clickstream.errors import JarResolutionError
from clickstream.local.java import find_java_executable

COMPLETE_MARKER = ".complete"
LOG4J_VERSION = "2.25.4"
# The JDBC driver Spark writes the PostgreSQL serving store with (clickstream.serving_postgres).
POSTGRES_JDBC_VERSION = "42.7.14"

# PySpark ships these; the connector must not download or bring second copies of them.
_SPARK_PROVIDED = (
    ("org.apache.spark", f"spark-core_{SCALA_BINARY}"),
    ("org.apache.spark", f"spark-sql_{SCALA_BINARY}"),
    ("org.apache.spark", f"spark-catalyst_{SCALA_BINARY}"),
    ("org.apache.spark", f"spark-tags_{SCALA_BINARY}"),
    ("org.apache.hadoop", "*"),
    ("org.scala-lang", "*"),
    ("org.scala-lang.modules", "*"),
    ("org.slf4j", "*"),
    ("org.lz4", "*"),
    ("at.yawk.lz4", "*"),
    ("org.xerial.snappy", "*"),
    ("com.github.luben", "*"),
    ("com.google.code.findbugs", "*"),
)


def pyspark_version() -> str:
    import pyspark

    return pyspark.__version__


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def ivy_jar() -> Path:
    found = sorted(pyspark_jars_dir().glob("ivy-*.jar"))
    if not found:
        raise JarResolutionError(
            f"No Ivy jar in {pyspark_jars_dir()}: the PySpark installation looks incomplete. "
            "Reinstall it with `make setup`."
        )
    return found[-1]


def kafka_modules(version: str) -> list[tuple[str, str, str]]:
    """The broker, its tools (StorageTool, producer performance) and a Log4j2 backend."""
    return [
        ("org.apache.kafka", f"kafka_{SCALA_BINARY}", version),
        ("org.apache.kafka", "kafka-tools", version),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
    ]


def connector_modules(spark_version: str) -> list[tuple[str, str, str]]:
    return [("org.apache.spark", f"spark-sql-kafka-0-10_{SCALA_BINARY}", spark_version)]


def jdbc_modules() -> list[tuple[str, str, str]]:
    return [("org.postgresql", "postgresql", POSTGRES_JDBC_VERSION)]


def kafka_jars_dir(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.cache_dir / "jars" / f"kafka-{settings.kafka_version}"


def connector_jars_dir(settings: Settings | None = None, spark_version: str | None = None) -> Path:
    settings = settings or get_settings()
    return settings.cache_dir / "jars" / f"spark-kafka-{spark_version or pyspark_version()}"


def jdbc_jars_dir(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.cache_dir / "jars" / f"postgresql-jdbc-{POSTGRES_JDBC_VERSION}"


def _ivy_module_xml(name: str, modules: list[tuple[str, str, str]], excludes=()) -> str:
    deps = "\n".join(
        f"    <dependency org={quoteattr(o)} name={quoteattr(n)} rev={quoteattr(r)} "
        'conf="default->default"/>'
        for o, n, r in modules
    )
    excl = "\n".join(
        f"    <exclude org={quoteattr(o)} module={quoteattr(m)}/>" for o, m in excludes
    )
    return (
        '<ivy-module version="2.0">\n'
        f'  <info organisation="clickstream" module={quoteattr(name)}/>\n'
        '  <configurations><conf name="default"/></configurations>\n'
        f"  <dependencies>\n{deps}\n{excl}\n  </dependencies>\n</ivy-module>\n"
    )


def _ivy_settings_xml(repo: str) -> str:
    return (
        "<ivysettings>\n"
        '  <settings defaultResolver="mirror"/>\n'
        "  <resolvers>\n"
        f'    <ibiblio name="mirror" m2compatible="true" root={quoteattr(repo)}/>\n'
        "  </resolvers>\n"
        "</ivysettings>\n"
    )


def is_complete(target: Path) -> bool:
    return (target / COMPLETE_MARKER).exists()


def jar_files(target: Path) -> list[Path]:
    return sorted(target.glob("*.jar"))


def _run_ivy(
    label: str,
    modules,
    target: Path,
    settings: Settings,
    excludes=(),
    quiet=False,
    for_spark=False,
) -> None:
    """Resolve `modules` with Ivy into `target`, printing one line per downloaded artifact."""
    java = find_java_executable()
    ivy_cache = settings.cache_dir / "ivy"
    ivy_cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    work = staging / "_ivy"
    work.mkdir()
    (work / "ivy.xml").write_text(_ivy_module_xml(target.name, modules, excludes))
    cmd = [
        java,
        f"-Divy.default.ivy.user.dir={ivy_cache}",  # never ~/.ivy2: HOME may be unusable
        f"-Divy.cache.dir={ivy_cache / 'cache'}",
        "-jar",
        str(ivy_jar()),
        "-ivy",
        str(work / "ivy.xml"),
        "-cache",
        str(ivy_cache / "cache"),
        "-confs",
        "default",
        "-retrieve",
        str(staging) + "/[artifact]-[revision](-[classifier]).[ext]",
    ]
    if settings.maven_repo:
        (work / "ivysettings.xml").write_text(_ivy_settings_xml(settings.maven_repo))
        cmd[3:3] = ["-settings", str(work / "ivysettings.xml")]
    where = settings.maven_repo or "Maven Central"
    wanted = ", ".join(f"{o}:{n}:{r}" for o, n, r in modules)
    if not quiet:
        print(f"Fetching {label} from {where} into {target} (first time only)", file=sys.stderr)
    tail: deque[str] = deque(maxlen=25)
    fetched = 0
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise JarResolutionError(f"Could not run Ivy with {java}: {exc}") from exc
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        match = re.search(r"\[SUCCESSFUL \] [^!]+!([^ ]+)", line)
        if match and not quiet:
            fetched += 1
            print(f"  [{fetched:3d}] {match.group(1)}", file=sys.stderr, flush=True)
    code = proc.wait()
    if code != 0 or not jar_files(staging):
        shutil.rmtree(staging, ignore_errors=True)
        problems = [t for t in tail if "UNRESOLVED" in t or "FAILED" in t or "unresolved" in t]
        detail = "\n".join(problems[-8:] or list(tail)[-12:])
        raise JarResolutionError(
            f"Could not fetch {label} ({wanted}) from {where}.\n{detail}\n"
            "Check the network connection. To fetch from a mirror or an internal repository, "
            "set CLICKSTREAM_MAVEN_REPO to its Maven 2 URL (for example "
            "CLICKSTREAM_MAVEN_REPO=https://repo.example.org/maven2) and run `clickstream setup` "
            "again."
        )
    shutil.rmtree(work, ignore_errors=True)
    # The retrieved copies are all we use: drop Ivy's own copies to halve the disk footprint.
    shutil.rmtree(ivy_cache / "cache", ignore_errors=True)
    if for_spark:
        _drop_duplicates_of_pyspark(staging)
    (staging / COMPLETE_MARKER).write_text(
        "\n".join(p.name for p in jar_files(staging)) + "\n", encoding="utf-8"
    )
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    if not quiet:
        size = sum(p.stat().st_size for p in jar_files(target)) / 1e6
        print(f"  {label}: {len(jar_files(target))} jars, {size:.0f} MB", file=sys.stderr)


def _drop_duplicates_of_pyspark(staging: Path) -> None:
    """Jars for Spark's classpath: keep one copy of libraries that PySpark already ships."""
    shipped = {_artifact_name(p.name) for p in pyspark_jars_dir().glob("*.jar")}
    for jar in jar_files(staging):
        if _artifact_name(jar.name) in shipped:
            jar.unlink()


def _artifact_name(filename: str) -> str:
    """'kafka-clients-3.9.2.jar' -> 'kafka-clients'."""
    return re.sub(r"-\d[^-]*(-[A-Za-z]+)?\.jar$", "", filename)


def ensure_kafka_jars(settings: Settings | None = None, quiet: bool = False) -> list[Path]:
    """The Kafka broker's classpath, fetched once."""
    settings = settings or get_settings()
    target = kafka_jars_dir(settings)
    if not is_complete(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _run_ivy(
            f"Apache Kafka {settings.kafka_version} broker jars",
            kafka_modules(settings.kafka_version),
            target,
            settings,
            quiet=quiet,
        )
    return jar_files(target)


def ensure_connector_jars(settings: Settings | None = None, quiet: bool = False) -> list[Path]:
    """The Spark Kafka connector for the installed PySpark, with its dependencies."""
    settings = settings or get_settings()
    version = pyspark_version()
    target = connector_jars_dir(settings, version)
    if not is_complete(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _run_ivy(
            f"Spark Kafka connector {version} jars",
            connector_modules(version),
            target,
            settings,
            excludes=_SPARK_PROVIDED,
            quiet=quiet,
            for_spark=True,
        )
    return jar_files(target)


def ensure_jdbc_jars(settings: Settings | None = None, quiet: bool = False) -> list[Path]:
    """The PostgreSQL JDBC driver Spark writes the warehouse store with."""
    settings = settings or get_settings()
    target = jdbc_jars_dir(settings)
    if not is_complete(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _run_ivy(
            f"PostgreSQL JDBC driver {POSTGRES_JDBC_VERSION}",
            jdbc_modules(),
            target,
            settings,
            quiet=quiet,
            for_spark=True,
        )
    return jar_files(target)


def connector_version(jars: list[Path]) -> str | None:
    """The version in the spark-sql-kafka jar's file name."""
    for jar in jars:
        match = re.match(rf"spark-sql-kafka-0-10_{SCALA_BINARY}-(.+)\.jar$", jar.name)
        if match:
            return match.group(1)
    return None


def cache_size_bytes(settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    root = settings.cache_dir
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
