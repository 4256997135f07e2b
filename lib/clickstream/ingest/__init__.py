"""Ingest: talking to Kafka.

`kafka_io` holds the clients, topics, offsets and reads the course and the job share;
`security` turns a SASL/TLS configuration into client settings for kafka-python and Spark.
"""
