"""Process: the Spark Structured Streaming job.

`spark` builds the session with the matching Kafka connector; `pipeline` holds the operators the
notebooks build step by step (parse, contract checks, watermark, de-duplication, windows,
sessions); `stream` assembles them into the job and writes each micro-batch exactly once;
`anomaly` scores closed windows on the driver; `lag` reads the job's progress from its checkpoint.
"""
