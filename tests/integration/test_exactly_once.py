"""Exactly-once under failure: `clickstream stream` killed with SIGKILL while data flows.

The job runs as a subprocess (its own process group: the Python driver and Spark's JVM), is
killed three times at random moments, each time after it has committed at least one new batch,
and restarted from its checkpoint. The final store must equal the ground truth exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import pytest

from clickstream.kafka_io import ensure_topic
from clickstream.producer import produce
from clickstream.serving import StoreError, open_store
from clickstream.stream import JOB
from tests.conftest import CLICKSTREAM
from tests.stream_truth import (
    Params,
    build_stream,
    diff,
    expected_store,
    store_rows,
    stream_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.spark]

PARAMS = Params()
KILLS = 3
RATE = 50.0  # records/s sent: the ~2,400 records take about 50 s, so kills land mid-stream


def _store_state(url: str) -> tuple[int | None, int]:
    """(last batch, records read) as the store says; (None, 0) before the first write."""
    try:
        with open_store(url) as store:
            return store.last_batch(JOB), int(store.counters().get("records", 0))
    except StoreError:
        return None, 0


def _wait_for(condition, timeout_s: float, what: str, proc, log) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"the job exited ({proc.returncode}) while waiting for {what}:\n{log()}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}:\n{log()}")


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# Each run restarts Spark four times (about 90 s on an idle 2-core laptop, several minutes on
# a busy one), so the Redis run is opt-in: CLICKSTREAM_TEST_ALL_STORES=1 adds it.
BACKENDS = ["sqlite"] + (["redis"] if os.environ.get("CLICKSTREAM_TEST_ALL_STORES") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_three_times_the_store_still_equals_the_ground_truth(
    backend, bootstrap, topic, tmp_path, request
):
    if backend == "sqlite":
        store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    else:
        import redis

        store_url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(store_url).flushdb()
    records = build_stream(stream_config(count=2400))  # ~190 s: late events, an incident
    truth = expected_store(records, PARAMS)
    expected_counters = {r["name"]: r["value"] for r in truth.rows["counters"]}
    assert truth.rows["alerts"] and expected_counters["late_dropped"] > 0
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    stop = threading.Event()
    sent: list = []
    # The stream arrives in KILLS + 1 consecutive chunks, the next one only after a kill, so
    # every kill lands while data is still to come, however fast or slow this machine is.
    bounds = [len(records) * i // (KILLS + 1) for i in range(KILLS + 2)]
    chunks = [records[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    producers: list[threading.Thread] = []

    def send_next_chunk() -> None:
        if producers:
            producers[-1].join()  # keep the original order of the records
        chunk = chunks[len(producers)]

        def send() -> None:
            items = ((key, value, None) for key, value in chunk)
            sent.append(produce(items, topic, bootstrap, rate=RATE, progress=False, stop=stop))

        producers.append(threading.Thread(target=send, daemon=True))
        producers[-1].start()

    cmd = [
        CLICKSTREAM,
        "stream",
        "--topic",
        topic,
        "--bootstrap-servers",
        bootstrap,
        "--store",
        store_url,
        "--checkpoint",
        str(tmp_path / "checkpoint"),
        "--trigger",
        "1 second",
        "--max-offsets-per-trigger",
        "300",
        "--alerts-topic",
        "",
        "--quarantine-topic",
        "",
        *PARAMS.cli_args(),
    ]
    rng = random.Random(f"kill:{backend}")
    logs = []
    proc = None

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"run{len(logs)}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        # Its own process group, so a kill takes the driver and Spark's JVM down together.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_text() -> str:
        return "\n".join((tmp_path / f"run{i}.log").read_text()[-3000:] for i in range(len(logs)))

    send_next_chunk()
    kill_points = []
    try:
        for _ in range(KILLS):
            before, _ = _store_state(store_url)
            proc = start()
            _wait_for(
                lambda before=before: (_store_state(store_url)[0] or -1) > (before or -1),
                240,
                "a new batch",
                proc,
                log_text,
            )
            time.sleep(rng.uniform(0.0, 2.5))  # somewhere inside a later batch, or between
            kill_points.append(_store_state(store_url))
            _kill_group(proc, signal.SIGKILL)
            send_next_chunk()
        assert kill_points[-1][1] < len(records)  # the last kill, too, came mid-stream
        proc = start()
        producers[-1].join(timeout=300)
        assert sum(s.sent for s in sent) == len(records) and sum(s.failed for s in sent) == 0
        _wait_for(
            lambda: _store_state(store_url)[1] == len(records),
            300,
            "every record",
            proc,
            log_text,
        )
        # A graceful stop (SIGTERM to the driver, as `docker stop` or systemd would send).
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log_text()
        _kill_group(proc, signal.SIGKILL)  # nothing should be left; make sure
        proc = None
    finally:
        stop.set()
        if proc is not None:
            _kill_group(proc, signal.SIGKILL)
        for log in logs:
            log.close()
    with open_store(store_url) as store:
        got = store_rows(store)
    assert got == truth.rows, f"kills after {kill_points}\n{diff(got, truth.rows)}"
    # Four runs, each resumed from the checkpoint, none failed with an error.
    text = "".join((tmp_path / f"run{i}.log").read_text() for i in range(len(logs)))
    assert text.count("starting Spark") == KILLS + 1
    assert "Traceback" not in text
