"""The course's Spark session: started from the class archive `clickstream setup` records."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import IN_CI


@pytest.mark.integration
@pytest.mark.spark
def test_spark_starts_from_the_class_archive_that_setup_recorded(spark):
    from clickstream.java import check_java_for_spark
    from clickstream.spark import class_archive

    java = check_java_for_spark()
    archive = class_archive(java=java)
    if not archive.is_file():
        if IN_CI:
            pytest.fail(f"`clickstream setup` (run by `make test`) recorded no {archive}")
        pytest.skip("no class archive yet: run `clickstream setup`")
    runtime = spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    assert f"-XX:SharedArchiveFile={archive}" in list(runtime.getInputArguments())
    # The archive fits this Java and Spark's class path: with -Xshare:on, a JVM that cannot map
    # it refuses to start instead of going on without it; asked to log class loading, it says
    # where one of Spark's classes came from.
    classpath = spark._jvm.java.lang.System.getProperty("java.class.path")
    out = subprocess.run(
        [
            java.executable,
            "-Xshare:on",
            f"-XX:SharedArchiveFile={archive}",
            "-Xlog:class+load=info",
            "-cp",
            classpath,
            "org.apache.spark.util.SparkClassUtils",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    name = "org.apache.spark.util.SparkClassUtils "
    loaded = [line for line in out.stdout.splitlines() if name in line]
    assert loaded and "shared objects file (top)" in loaded[0], out.stdout[-2000:] + out.stderr
