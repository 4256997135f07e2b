"""The course's Spark session: started from the class archive `clickstream setup` records."""

from __future__ import annotations

import pytest

from tests.conftest import assert_loaded_from_archive, require_class_archive


@pytest.mark.integration
@pytest.mark.spark
def test_spark_starts_from_the_class_archive_that_setup_recorded(spark):
    from clickstream.local.java import check_java_for_spark
    from clickstream.process.spark import class_archive

    java = check_java_for_spark()
    archive = class_archive(java=java)
    require_class_archive(archive)
    runtime = spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    assert f"-XX:SharedArchiveFile={archive}" in list(runtime.getInputArguments())
    classpath = spark._jvm.java.lang.System.getProperty("java.class.path")
    assert_loaded_from_archive(
        java.executable, archive, classpath, "org.apache.spark.util.SparkClassUtils"
    )
