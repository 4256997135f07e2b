"""Source: where the events come from.

`simulator` generates seeded e-commerce traffic with its ground truth; `producer` sends it (or a
recorded file) to Kafka at a rate, idempotently.
"""
