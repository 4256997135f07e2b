"""A Spark session with the Kafka connector that matches the installed PySpark exactly, and the
PostgreSQL JDBC driver (the warehouse store's writer).

Jars are handed to Spark as local files before its JVM starts (setting them later is silently
ignored, PITFALLS #4), logs are quiet, the UI is off unless asked for, and shuffles are sized for
a laptop.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError, ConnectorMismatchError
from clickstream.jars import (
    connector_version,
    ensure_connector_jars,
    ensure_jdbc_jars,
    pyspark_version,
)
from clickstream.java import check_java_for_spark, extra_java_options

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
                "then call clickstream.spark.get_spark() first."
            )
        return active
    check_java_for_spark()
    # Python workers must run this interpreter (with clickstream installed), not any python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    jars = ensure_connector_jars(settings)
    check_connector(jars)
    jars = jars + ensure_jdbc_jars(settings)
    master = master or settings.spark_master
    if shuffle_partitions is None:
        shuffle_partitions = default_shuffle_partitions(master)
    java_opts = " ".join(
        [
            f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG}",
            f"-Dlog4j.configurationFile=file:{LOG4J_CONFIG}",
            *extra_java_options(),
        ]
    )
    builder = (
        SparkSession.builder.appName(app_name)
        .master(master)
        .config("spark.jars", ",".join(str(j) for j in jars))
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.default.parallelism", str(shuffle_partitions))
        .config("spark.ui.enabled", "true" if ui else "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", java_opts)
        .config("spark.executor.extraJavaOptions", java_opts)
        .config("spark.sql.streaming.forceDeleteTempCheckpointLocation", "true")
        .config("spark.sql.adaptive.enabled", "false")  # streaming ignores it; keep plans stable
        .config("spark.driver.memory", os.environ.get("CLICKSTREAM_DRIVER_MEMORY", "2g"))
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
    )
    if master.startswith("spark://"):
        # Executors must fit the workers of a laptop-sized cluster (Spark asks for 1g each by
        # default and waits forever when no worker has that much).
        builder = (
            builder.config(
                "spark.executor.memory", os.environ.get("CLICKSTREAM_EXECUTOR_MEMORY", "512m")
            )
            .config("spark.executor.cores", "1")
            .config("spark.pyspark.python", sys.executable)
        )
    from clickstream.pipeline import STATE_STORE_CONF

    for key, value in {**STATE_STORE_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
