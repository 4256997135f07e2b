"""Running `clickstream stream` as a learner does, in its own process group, from tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clickstream.process.stream import JOB
from clickstream.serve.store import StoreError, open_store
from tests.conftest import CLICKSTREAM


def stream_command(topic: str, bootstrap: str, store_url: str, checkpoint, *extra: str) -> list:
    """`clickstream stream` with the tests' settings: no alerts/quarantine topics, and a 1 s
    trigger for the side queries too, so that with `--max-offsets-per-trigger` they keep up
    with the windows query instead of reading one capped batch every 10 s."""
    return [
        CLICKSTREAM,
        "stream",
        "--topic",
        topic,
        "--bootstrap-servers",
        bootstrap,
        "--store",
        store_url,
        "--checkpoint",
        str(checkpoint),
        "--trigger",
        "1 second",
        "--side-trigger",
        "1 second",
        "--alerts-topic",
        "",
        "--quarantine-topic",
        "",
        *extra,
    ]


def start(cmd: list, log: Path) -> subprocess.Popen:
    """Its own process group, so a kill takes the driver and Spark's JVM down together."""
    with open(log, "w") as out:  # the child has its own copy of the file descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def store_state(url: str) -> tuple[int | None, int]:
    """(last batch, records read) as the store says; (None, 0) before the first write."""
    try:
        with open_store(url) as store:
            return store.last_batch(JOB), int(store.counters().get("records", 0))
    except StoreError:
        return None, 0


def wait_for(condition, timeout_s: float, what: str, proc, log) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the job exited ({proc.returncode}) while waiting for {what}:\n{log()}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}:\n{log()}")


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


SPARK_FIGURES = ("late_dropped", "duplicates_removed")  # reported by Spark after each batch


def without_spark_figures(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The rows with the two counters that come from Spark's progress reports left out: a
    killed job can miss the figures of its last batch (see the README's exact counters)."""
    out = dict(rows)
    out["counters"] = [r for r in rows.get("counters", []) if r["name"] not in SPARK_FIGURES]
    return out


def settled(url: str, truth) -> bool:
    """True once the store holds the ground truth (Spark's figures aside): every record read
    and the final watermark's windows, sessions and alerts written."""
    from tests.stream_truth import store_rows

    try:
        with open_store(url) as store:
            got = store_rows(store)
    except StoreError:
        return False
    return without_spark_figures(got) == without_spark_figures(truth.rows)
