"""`clickstream stream` into PostgreSQL from the command line, read back by the CLI and the
dashboard's data functions, against the ground truth.

(The in-process job on every store, with every metric, alerts and health, is
test_stream_job.py::test_every_metric_equals_the_ground_truth[postgres].)
"""

from __future__ import annotations

import json
import subprocess

import pytest

from clickstream.dashboard import data as dd
from clickstream.ingest.kafka_io import ensure_topic, send_all
from clickstream.serve.store import open_store
from tests.conftest import CLICKSTREAM
from tests.stream_truth import Params, build_stream, diff, expected_store, store_rows, stream_config

PARAMS = Params()


@pytest.mark.integration
@pytest.mark.spark
def test_stream_cli_into_postgres_then_metrics_and_dashboard(
    bootstrap, topic, postgres_store_url, tmp_path
):
    records = build_stream(stream_config(count=900))
    truth = expected_store(records, PARAMS)
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    send_all(records, topic, bootstrap)
    job = subprocess.run(
        [CLICKSTREAM, "stream", "--available-now", "--bootstrap-servers", bootstrap]
        + ["--topic", topic, "--store", postgres_store_url]
        + ["--checkpoint", str(tmp_path / "ckpt"), "--max-offsets-per-trigger", "300"]
        + ["--alerts-topic", "", "--quarantine-topic", "", *PARAMS.cli_args()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stdout + job.stderr
    with open_store(postgres_store_url, readonly=True) as store:
        got = store_rows(store)
        snap = dd.load_snapshot(store, minutes=5)
        last = store.health(limit=1)[0]
    assert got == truth.rows, diff(got, truth.rows)
    assert snap.status.ok and snap.health.batch_id == last["batch_id"] >= 2

    # `clickstream metrics` prints what the job wrote.
    as_json = subprocess.run(
        [CLICKSTREAM, "metrics", "traffic", "--store", postgres_store_url, "--json"]
        + ["--limit", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 0, as_json.stderr
    newest = sorted({r["window_start"] for r in truth.rows["traffic"]})[-2:]
    assert json.loads(as_json.stdout) == [
        r for r in truth.rows["traffic"] if r["window_start"] in newest
    ]
    table = subprocess.run(
        [CLICKSTREAM, "metrics", "counters", "--store", postgres_store_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ["records", str(len(records))] in [line.split() for line in table.stdout.splitlines()]

    # The dashboard's numbers equal those of a SQLite store holding the same rows.
    lite_url = f"sqlite:///{tmp_path / 'same.db'}"
    with open_store(lite_url) as lite:
        lite.write_batch("stream", last["batch_id"], truth.rows, last)
        want = dd.load_snapshot(lite, minutes=5)
    assert snap.headline == want.headline and snap.range == want.range
    for frame in ("traffic", "products", "funnel", "active_users", "errors", "paths", "alerts"):
        assert getattr(snap, frame).equals(getattr(want, frame)), frame
    assert snap.quality == want.quality and snap.sessions.count == want.sessions.count > 0
