"""Benchmarks anyone can rerun: each prints its figures, a reference measured in the same run,
and the machine.

`produce` (events per second per Kafka client, beside Kafka's own tool), `stream` (the job
against a bare Spark read, and live latency), `dashboard` (refresh times over a week of data)
and `anomalies` (the detector's recall and false alerts over a long simulated stream).
"""
