"""Run the windowed count on a given Spark master and print the result as JSON (a subprocess,
because one Python process holds one SparkContext)."""

import json
import sys

from clickstream.pipeline import parse_events, read_kafka, valid_events, windowed_counts
from clickstream.spark import get_spark

master, bootstrap, topic, checkpoint = sys.argv[1:5]
spark = get_spark("clickstream-cluster-test", master=master)
counts = windowed_counts(
    valid_events(parse_events(read_kafka(spark, topic, bootstrap))),
    window="1 minute",
    watermark=None,
)
query = (
    counts.writeStream.outputMode("complete")
    .format("memory")
    .queryName("cluster_counts")
    .option("checkpointLocation", checkpoint)
    .trigger(availableNow=True)
    .start()
)
query.awaitTermination()
rows = spark.sql("select * from cluster_counts").collect()
# The executors on the workers (the driver is listed too).
executors = len(spark.sparkContext.statusTracker().getExecutorInfos()) - 1
print(
    json.dumps(
        {
            "executors": executors,
            "master": spark.sparkContext.master,
            "counts": [[r.window_start.isoformat(), r.event_type, r["count"]] for r in rows],
        }
    )
)
spark.stop()
