"""A Spark session with the Kafka connector that matches the installed PySpark exactly, and the
PostgreSQL JDBC driver (the warehouse store's writer).

Jars are handed to Spark as local files before its JVM starts (setting them later is silently
ignored), logs are quiet, the UI is off unless asked for, and shuffles are sized for a laptop.

Spark's JVM loads some 15,000 classes before its first query answers, which takes most of the
20 s a cold start costs on a laptop. `clickstream setup` records them once in a class-data
archive (Java's AppCDS) in the jar cache; every later Spark start maps that archive instead of
reading and verifying the classes one by one, and answers its first query in about 12 s. A
missing or unusable archive (another Java, another PySpark) is skipped silently.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError, ConnectorMismatchError
from clickstream.local.jars import (
    connector_version,
    ensure_connector_jars,
    ensure_jdbc_jars,
    pyspark_version,
)
from clickstream.local.java import (
    JavaInfo,
    check_java_for_spark,
    class_archive_options,
    class_archive_path,
    extra_java_options,
    record_class_archive,
)

LOG4J_CONFIG = Path(__file__).with_name("spark_log4j2.properties")


def check_connector(jars: list[Path], spark_version: str | None = None) -> str:
    """Raise ConnectorMismatchError unless the connector jar's version equals PySpark's."""
    spark_version = spark_version or pyspark_version()
    found = connector_version(jars)
    if found is None:
        raise ConnectorMismatchError(
            "The Spark Kafka connector jar (spark-sql-kafka-0-10) is missing, so Spark would "
            "fail with 'Failed to find data source: kafka'. Run `clickstream setup`."
        )
    if found != spark_version:
        raise ConnectorMismatchError(
            f"The Spark Kafka connector is version {found} but PySpark is {spark_version}; they "
            "must match exactly (otherwise NoClassDefFoundError). Run `clickstream setup` to "
            f"fetch spark-sql-kafka-0-10 {spark_version}."
        )
    return found


def _has_connector(spark) -> bool:
    jars = spark.sparkContext.getConf().get("spark.jars", "")
    return "spark-sql-kafka-0-10" in jars


def default_shuffle_partitions(master: str) -> int:
    """State and shuffles spread over this many partitions: one per local core (at least 2, so
    the state store is partitioned as on a cluster), else 4 (`spark.sql.shuffle.partitions`
    in `conf` overrides it; on a real cluster, a few per executor core)."""
    found = re.fullmatch(r"local\[(\d+|\*)(?:,\s*\d+)?\]", master.strip())
    if master.strip() == "local":
        return 2
    if found:
        cores = (os.cpu_count() or 2) if found.group(1) == "*" else int(found.group(1))
        return max(2, cores)
    return 4


STATE_STORE_CONF = {
    # Spark's state (windows, seen ids, sessions) in RocksDB, with changelog checkpointing: each
    # micro-batch writes only the changes, and a restart replays them onto the last snapshot.
    "spark.sql.streaming.stateStore.providerClass": (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    ),
    "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
    # Checkpoint files (offsets, commits, state changelogs) are written to a temporary file and
    # renamed. Through Hadoop's FileContext, Spark's default, each rename on a local disk starts
    # a `readlink` process; through Hadoop's FileSystem it is one rename (atomic on a local disk
    # and on HDFS). Several files per batch: about 60 ms less per micro-batch on a laptop.
    "spark.sql.streaming.checkpointFileManagerClass": (
        "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"
    ),
    # JSON objects with a repeated key: the last value wins, as in Python's json module.
    "spark.sql.variant.allowDuplicateKeys": "true",
    # The windowed aggregation keeps exact user sets and funnel steps (collect_set/list): let
    # its hash aggregation hold more keys before it falls back to sorting.
    "spark.sql.objectHashAggregate.sortBased.fallbackThreshold": "100000",
}


def get_spark(
    app_name: str = "clickstream",
    master: str | None = None,
    ui: bool = False,
    shuffle_partitions: int | None = None,
    settings: Settings | None = None,
    conf: dict[str, str] | None = None,
):
    """The course's SparkSession: local master by default (SPARK_MASTER overrides)."""
    from pyspark.sql import SparkSession

    settings = settings or get_settings()
    active = SparkSession.getActiveSession()
    if active is not None:
        if not _has_connector(active):
            raise ClickstreamError(
                "A Spark session is already running without the Kafka connector; jars can only "
                "be added before Spark starts. Stop it (`spark.stop()`) or restart the kernel, "
                "then call clickstream.process.spark.get_spark() first."
            )
        return active
    java = check_java_for_spark()
    # Python workers must run this interpreter (with clickstream installed), not any python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    jars = ensure_connector_jars(settings)
    check_connector(jars)
    jars = jars + ensure_jdbc_jars(settings)
    master = master or settings.spark_master
    if shuffle_partitions is None:
        shuffle_partitions = default_shuffle_partitions(master)
    driver_opts, executor_opts = _java_options(settings, java)
    session_conf = _session_conf(master, jars, shuffle_partitions, ui, driver_opts, executor_opts)
    builder = SparkSession.builder.appName(app_name).master(master)
    for key, value in {**session_conf, **STATE_STORE_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _java_options(settings: Settings, java: JavaInfo) -> tuple[str, str]:
    """The JVM options of the driver and of the executors: quiet logs, and for the driver the
    class-data archive."""
    java_opts = [
        f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG}",
        f"-Dlog4j.configurationFile=file:{LOG4J_CONFIG}",
        *extra_java_options(),
    ]
    executor_opts = " ".join(shlex.quote(o) for o in java_opts)
    # The driver's classes come from the archive `clickstream setup` recorded (in local mode,
    # the executors' too: they run in the driver's JVM).
    java_opts += class_archive_options(class_archive(settings, java))
    driver_opts = " ".join(shlex.quote(o) for o in java_opts)
    return driver_opts, executor_opts


def _session_conf(
    master: str,
    jars: list[Path],
    shuffle_partitions: int,
    ui: bool,
    driver_opts: str,
    executor_opts: str,
) -> dict[str, str]:
    """The session's settings before `STATE_STORE_CONF` and the caller's `conf`."""
    session_conf = {
        "spark.jars": ",".join(str(j) for j in jars),
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.default.parallelism": str(shuffle_partitions),
        "spark.ui.enabled": "true" if ui else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": driver_opts,
        "spark.executor.extraJavaOptions": executor_opts,
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        "spark.sql.adaptive.enabled": "false",  # streaming ignores it; keep plans stable
        # The job's plans have many columns: print them whole instead of warning on every start.
        "spark.sql.debug.maxToStringFields": "1000",
        "spark.driver.memory": os.environ.get("CLICKSTREAM_DRIVER_MEMORY", "2g"),
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.host": "127.0.0.1",
    }
    if master.startswith("spark://"):
        # Executors must fit the workers of a laptop-sized cluster (Spark asks for 1g each by
        # default and waits forever when no worker has that much).
        session_conf["spark.executor.memory"] = os.environ.get(
            "CLICKSTREAM_EXECUTOR_MEMORY", "512m"
        )
        session_conf["spark.executor.cores"] = "1"
        session_conf["spark.pyspark.python"] = sys.executable
    return session_conf


def class_archive(settings: Settings | None = None, java: JavaInfo | None = None) -> Path:
    """Where the class-data archive for this PySpark and this Java lives (it may not exist)."""
    settings = settings or get_settings()
    import pyspark

    jars = (Path(pyspark.__file__).parent / "jars").glob("*.jar")
    return class_archive_path(
        settings.cache_dir / "spark-classes",
        f"pyspark-{pyspark_version()}",
        java or check_java_for_spark(),
        jars,
    )


def build_class_archive(
    settings: Settings | None = None, echo: Callable[[str], None] = print
) -> Path | None:
    """Record the classes Spark loads for the job's queries into `class_archive()` (once):
    `exercise_spark` runs in a fresh Python, whose JVM writes the archive when it exits."""
    settings = settings or get_settings()
    return record_class_archive(
        class_archive(settings),
        "from clickstream.process.stream import exercise_spark; exercise_spark()",
        "Spark",
        echo,
        env={"CLICKSTREAM_CACHE_DIR": str(settings.cache_dir)},
    )
