"""Errors out of the job's foreachBatch functions stay short enough for Spark to read."""

import re

import pytest
from py4j.protocol import Py4JJavaError

from clickstream.process.stream import SparkBatchError, _short_java_errors

# What Spark 4.2 (StreamExecution.isInterruptionException) matches in a foreachBatch
# function's error text to tell a query stopped by stop() from one that failed.
SPARK_STOP_PATTERN = re.compile(
    r"py4j.protocol.Py4JJavaError: An error occurred while calling((.|\r\n|\r|\n)*)"
    r"(java.lang.InterruptedException|java.io.InterruptedIOException|"
    r"java.nio.channels.ClosedByInterruptException)"
)


class FakeJavaException:
    """Stands in for the Py4J proxy of a Java exception (no JVM in unit tests)."""

    _target_id = "o2"

    def __init__(self, text: str):
        self.text = text

    def toString(self) -> str:  # noqa: N802 - the Java method's name
        return self.text


def _failing(java_text: str):
    def callback(df, batch_id):
        raise Py4JJavaError(
            "An error occurred while calling o1.collectToPython.\n", FakeJavaException(java_text)
        )

    return _short_java_errors(callback)


def test_a_batch_interrupted_by_stop_fails_in_a_short_form_spark_reads_as_a_stop():
    with pytest.raises(SparkBatchError) as raised:
        _failing("java.lang.InterruptedException")(None, 3)
    text = str(raised.value)
    assert SPARK_STOP_PATTERN.search(text)
    assert len(text) < 200
    assert raised.value.__suppress_context__  # the 8-KB Java stack trace is not chained


def test_another_java_failure_keeps_its_cause_when_py4j_gives_no_stack_trace():
    cause = "org.apache.spark.SparkException: [KAFKA_DATA_LOSS] Some data may have been lost"
    with pytest.raises(SparkBatchError) as raised:
        _failing(cause)(None, 3)
    assert str(raised.value) == cause
    assert not SPARK_STOP_PATTERN.search(str(raised.value))
    assert raised.value.__suppress_context__


def test_a_batch_that_succeeds_or_fails_in_python_is_left_alone():
    seen = []
    _short_java_errors(lambda df, batch_id: seen.append(batch_id))(None, 7)
    assert seen == [7]
    with pytest.raises(ValueError, match="store"):
        _short_java_errors(lambda df, batch_id: (_ for _ in ()).throw(ValueError("store")))(None, 1)


class TracedJavaError(Py4JJavaError):
    """A Py4J error whose text is Py4J's: the call, then the Java stack trace."""

    def __str__(self):
        return self.errmsg + self.trace


def test_a_java_failure_keeps_its_stack_trace_where_spark_does_not_look_for_a_stop():
    cause = "org.apache.spark.SparkException: Job aborted due to stage failure"
    frames = "".join(f"\n\tat org.apache.spark.Frame{i}.run(Frame.scala:{i})" for i in range(300))
    nested = "\nCaused by: py4j.protocol.Py4JJavaError: An error occurred while calling o9.x.\n"
    error = TracedJavaError(
        "An error occurred while calling o1.collectToPython.\n", FakeJavaException(cause)
    )
    error.trace = ": " + cause + frames + nested + "java.lang.InterruptedException: late"

    def callback(df, batch_id):
        raise error

    with pytest.raises(SparkBatchError) as raised:
        _short_java_errors(callback)(None, 3)
    text = str(raised.value)
    assert text.splitlines()[0] == cause  # what the job's error message shows
    assert "\tat org.apache.spark.Frame0.run(Frame.scala:0)" in text.splitlines()[1]
    assert text.count(cause) == 1
    assert not SPARK_STOP_PATTERN.search(text)  # not a stop, and nothing to recurse over
    assert len(text) <= 4000 + 1 + 20_000
