"""Local infrastructure: everything the course runs on a laptop without Docker.

`java` finds or fetches a JDK, `jars` fetches the Kafka, connector and JDBC jars, `broker` runs
a single KRaft broker, `kafka_cluster` three of them, and `spark_cluster` a standalone Spark
master with workers.
"""
