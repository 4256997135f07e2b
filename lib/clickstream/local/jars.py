"""Fetch and cache the jars that run Kafka and connect Spark to it and to PostgreSQL.

Every set (the broker, the Spark Kafka connector, the PostgreSQL JDBC driver) is resolved from
Maven Central with the Ivy jar that ships inside PySpark, so a learner needs nothing beyond
Python and Java. Each set is fetched once into the cache directory (`clickstream setup` fetches
the three at the same time); a warm machine needs no network. Set CLICKSTREAM_MAVEN_REPO to use a mirror.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from xml.sax.saxutils import quoteattr

from clickstream.config import SCALA_BINARY, Settings, get_settings
from clickstream.errors import JarResolutionError
from clickstream.local.java import find_java_executable
from clickstream.redact import redact_text, redact_url

COMPLETE_MARKER = ".complete"
LOG4J_VERSION = "2.25.4"
# The JDBC driver Spark writes the PostgreSQL serving store with (clickstream.serve.postgres).
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


@dataclass(frozen=True)
class JarSet:
    """Jars resolved together into one cache directory; `name` tags its progress lines."""

    name: str
    label: str
    modules: list[tuple[str, str, str]]
    target: Path
    excludes: tuple[tuple[str, str], ...] = ()
    for_spark: bool = False


class SetNotFetched(JarResolutionError):
    """Ivy could not resolve one set; `reason` holds Ivy's own lines about it."""

    def __init__(self, jar_set: JarSet, where: str, reason: str):
        self.jar_set, self.reason = jar_set, reason
        super().__init__(_not_fetched_message([self], where))


def _what(jar_set: JarSet) -> str:
    return f"{jar_set.label} ({', '.join(':'.join(m) for m in jar_set.modules)})"


def _not_fetched_message(failed: list[SetNotFetched], where: str, of: int = 1) -> str:
    if len(failed) == 1:
        head = f"Could not fetch {_what(failed[0].jar_set)} from {where}.\n{failed[0].reason}"
    else:
        head = f"Could not fetch {len(failed)} of the {of} jar sets from {where}:\n" + "\n".join(
            f"- {_what(f.jar_set)}:\n{f.reason}" for f in failed
        )
    if where != "Maven Central":
        return (
            f"{head}\nCheck that the mirror in CLICKSTREAM_MAVEN_REPO answers and holds these "
            "modules, or unset CLICKSTREAM_MAVEN_REPO to fetch from Maven Central; then run "
            "`clickstream setup` again."
        )
    return (
        f"{head}\nCheck the network connection. To fetch from a mirror or an internal "
        "repository, set CLICKSTREAM_MAVEN_REPO to its Maven 2 URL (for example "
        "CLICKSTREAM_MAVEN_REPO=https://repo.example.org/maven2) and run `clickstream setup` "
        "again."
    )


def _source(settings: Settings) -> str:
    return redact_url(settings.maven_repo) if settings.maven_repo else "Maven Central"


_OUTPUT = threading.Lock()  # whole lines from the parallel Ivy runs, never interleaved


def _say(line: str) -> None:
    with _OUTPUT:
        print(line, file=sys.stderr, flush=True)


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


def _run_ivy(jar_set: JarSet, settings: Settings, quiet=False, tag="") -> None:
    """Resolve the set with Ivy into its directory, printing one line per downloaded artifact.

    Each run has its own Ivy cache inside its staging directory, so runs at the same time share
    no lock, and a failed run leaves nothing behind.
    """
    java = find_java_executable()
    target = jar_set.target
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    work = staging / "_ivy"
    cmd = _ivy_command(java, jar_set, settings, staging, work)
    where = _source(settings)
    if not quiet:
        _say(f"Fetching {jar_set.label} from {where} into {target} (first time only)")
    try:
        code, tail = _follow_ivy(cmd, quiet, f"{tag:<9} " if tag else "")
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise JarResolutionError(
            f"Could not run Ivy with {java}: {exc}. Check that `{java} -version` works, or point "
            "JAVA_HOME at a working Java 17."
        ) from exc
    if code != 0 or not jar_files(staging):
        shutil.rmtree(staging, ignore_errors=True)
        reason = _ivy_reason(tail)
        if settings.maven_repo:  # Ivy's lines may quote the mirror's URL with its password
            reason = redact_text(reason, settings.maven_repo)
        raise SetNotFetched(jar_set, where, reason)
    _publish(jar_set, staging, work, quiet)


def _ivy_command(java: str, jar_set: JarSet, settings: Settings, staging: Path, work: Path):
    """Ivy's command line: resolve the set's modules, retrieve the jars into `staging`."""
    ivy_cache = work / "cache"
    ivy_cache.mkdir(parents=True)
    (work / "ivy.xml").write_text(
        _ivy_module_xml(jar_set.target.name, jar_set.modules, jar_set.excludes)
    )
    cmd = [
        java,
        f"-Divy.default.ivy.user.dir={work}",  # never ~/.ivy2: HOME may be unusable
        f"-Divy.cache.dir={ivy_cache}",
        # Ivy otherwise probes for every module's -sources and -javadoc jar: a third of the
        # requests, and a quarter of the time, for files the course never uses.
        "-Divy.maven.lookup.sources=false",
        "-Divy.maven.lookup.javadoc=false",
        "-jar",
        str(ivy_jar()),
        "-ivy",
        str(work / "ivy.xml"),
        "-cache",
        str(ivy_cache),
        "-confs",
        "default",
        "-retrieve",
        str(staging) + "/[artifact]-[revision](-[classifier]).[ext]",
    ]
    if settings.maven_repo:  # an option of Ivy's, so after the jar (before it, java refuses it)
        (work / "ivysettings.xml").write_text(_ivy_settings_xml(settings.maven_repo))
        cmd += ["-settings", str(work / "ivysettings.xml")]
    return cmd


def _follow_ivy(cmd: list[str], quiet: bool, prefix: str) -> tuple[int, list[str]]:
    """Run Ivy, saying each artifact it downloads; (exit code, its last lines)."""
    tail: deque[str] = deque(maxlen=40)
    fetched = 0
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            tail.append(line.strip())
        match = re.search(r"\[SUCCESSFUL \] [^!]+!([^ ]+)", line)
        if match and not quiet:
            fetched += 1
            _say(f"  {prefix}[{fetched:3d}] {match.group(1)}")
    return proc.wait(), list(tail)


def _publish(jar_set: JarSet, staging: Path, work: Path, quiet: bool) -> None:
    """Move a complete set from `staging` into its place in the cache, in one rename."""
    # The retrieved copies are all we use: Ivy's own copies would double the disk footprint.
    shutil.rmtree(work, ignore_errors=True)
    if jar_set.for_spark:
        _drop_duplicates_of_pyspark(staging)
    (staging / COMPLETE_MARKER).write_text(
        "\n".join(p.name for p in jar_files(staging)) + "\n", encoding="utf-8"
    )
    target = jar_set.target
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    if not quiet:
        size = sum(p.stat().st_size for p in jar_files(target)) / 1e6
        _say(f"  {jar_set.label}: {len(jar_files(target))} jars, {size:.0f} MB")


def _ivy_reason(tail: list[str]) -> str:
    """Ivy's lines that say what failed: the modules not found, then the server errors."""
    missing = [t.removeprefix(":: ") for t in tail if t.startswith(":: ") and "not found" in t]
    errors = [t for t in tail if re.search(r"Server access error|FAILED|download failed", t)]
    problems = list(dict.fromkeys(missing + errors))  # in order, without repeats
    return "\n".join(f"  {t}" for t in (problems[:8] or tail[-12:]))


def _drop_duplicates_of_pyspark(staging: Path) -> None:
    """Jars for Spark's classpath: keep one copy of libraries that PySpark already ships."""
    shipped = {_artifact_name(p.name) for p in pyspark_jars_dir().glob("*.jar")}
    for jar in jar_files(staging):
        if _artifact_name(jar.name) in shipped:
            jar.unlink()


def _artifact_name(filename: str) -> str:
    """'kafka-clients-3.9.2.jar' -> 'kafka-clients'."""
    return re.sub(r"-\d[^-]*(-[A-Za-z]+)?\.jar$", "", filename)


def kafka_jar_set(settings: Settings) -> JarSet:
    return JarSet(
        "broker",
        f"Apache Kafka {settings.kafka_version} broker jars",
        kafka_modules(settings.kafka_version),
        kafka_jars_dir(settings),
    )


def connector_jar_set(settings: Settings) -> JarSet:
    version = pyspark_version()
    return JarSet(
        "connector",
        f"Spark Kafka connector {version} jars",
        connector_modules(version),
        connector_jars_dir(settings, version),
        excludes=_SPARK_PROVIDED,
        for_spark=True,
    )


def jdbc_jar_set(settings: Settings) -> JarSet:
    return JarSet(
        "jdbc",
        f"PostgreSQL JDBC driver {POSTGRES_JDBC_VERSION}",
        jdbc_modules(),
        jdbc_jars_dir(settings),
        for_spark=True,
    )


def _ensure(jar_set: JarSet, settings: Settings, quiet: bool) -> list[Path]:
    if not is_complete(jar_set.target):
        jar_set.target.parent.mkdir(parents=True, exist_ok=True)
        _run_ivy(jar_set, settings, quiet=quiet)
    return jar_files(jar_set.target)


def ensure_kafka_jars(settings: Settings | None = None, quiet: bool = False) -> list[Path]:
    """The Kafka broker's classpath, fetched once."""
    settings = settings or get_settings()
    return _ensure(kafka_jar_set(settings), settings, quiet)


def ensure_connector_jars(settings: Settings | None = None, quiet: bool = False) -> list[Path]:
    """The Spark Kafka connector for the installed PySpark, with its dependencies."""
    settings = settings or get_settings()
    return _ensure(connector_jar_set(settings), settings, quiet)


def ensure_jdbc_jars(settings: Settings | None = None, quiet: bool = False) -> list[Path]:
    """The PostgreSQL JDBC driver Spark writes the warehouse store with."""
    settings = settings or get_settings()
    return _ensure(jdbc_jar_set(settings), settings, quiet)


class AllJars(NamedTuple):
    broker: list[Path]
    connector: list[Path]
    jdbc: list[Path]


def ensure_all_jars(settings: Settings | None = None, quiet: bool = False) -> AllJars:
    """Every jar set, the missing ones fetched at the same time (one Ivy run each)."""
    settings = settings or get_settings()
    sets = [kafka_jar_set(settings), connector_jar_set(settings), jdbc_jar_set(settings)]
    missing = [s for s in sets if not is_complete(s.target)]
    if missing:
        find_java_executable()  # no Java: say so once, not once per set
        ivy_jar()
        for jar_set in missing:
            jar_set.target.parent.mkdir(parents=True, exist_ok=True)
        tag = len(missing) > 1
        with ThreadPoolExecutor(max_workers=len(missing), thread_name_prefix="ivy") as pool:
            runs = [
                pool.submit(_run_ivy, s, settings, quiet, s.name if tag else "") for s in missing
            ]
        errors = [run.exception() for run in runs if run.exception() is not None]
        not_fetched = [e for e in errors if isinstance(e, SetNotFetched)]
        if len(not_fetched) < len(errors):  # Java or Ivy itself failed: the same for every set
            raise next(e for e in errors if not isinstance(e, SetNotFetched))
        if not_fetched:
            raise JarResolutionError(
                _not_fetched_message(not_fetched, _source(settings), len(sets))
            )
    return AllJars(*(jar_files(s.target) for s in sets))


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
