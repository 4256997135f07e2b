"""A real Spark standalone cluster from the installed PySpark runs the same streaming job."""

from __future__ import annotations

import subprocess

import pytest

from clickstream.config import get_settings
from clickstream.ingest.kafka_io import ensure_topic, send_all
from clickstream.local.broker import free_port
from clickstream.local.spark_cluster import SparkCluster
from clickstream.processes import alive
from clickstream.serve.store import open_store
from tests.stream_process import stream_command
from tests.stream_truth import Params, build_stream, diff, expected_store, store_rows, stream_config

pytestmark = [pytest.mark.integration, pytest.mark.spark]

PARAMS = Params()


@pytest.fixture
def cluster(tmp_path):
    c = SparkCluster(get_settings(state_dir=tmp_path / "state"))
    yield c
    c.down(echo=lambda m: None)


def test_cluster_lifecycle_and_pipeline_on_two_workers(cluster, bootstrap, topic, tmp_path):
    said = []
    port = free_port()
    st = cluster.up(workers=2, cores=1, memory="768m", port=port, echo=said.append)
    assert st.running and st.master_url == f"spark://127.0.0.1:{port}"
    assert [w["state"] for w in st.workers] == ["ALIVE", "ALIVE"]
    cluster.up(port=port, echo=said.append)
    assert "already running" in said[-1]

    # The streaming job, unchanged, on the cluster: its store equals the ground truth.
    records = build_stream(stream_config(count=1200))
    truth = expected_store(records, PARAMS)
    ensure_topic(topic, partitions=4, bootstrap=bootstrap)
    send_all(records, topic, bootstrap)
    store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    cmd = stream_command(
        topic,
        bootstrap,
        store_url,
        tmp_path / "ckpt",
        "--available-now",
        "--max-offsets-per-trigger",
        "300",
        "--master",
        st.master_url,
        *PARAMS.cli_args(),
    )
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open_store(store_url) as store:
        got = store_rows(store)
    assert got == truth.rows, diff(got, truth.rows)
    # It ran as an application of this master, with an executor on each worker (a core each).
    apps = cluster.applications("clickstream-stream")
    assert len(apps) == 1 and apps[0]["cores"] == 2, apps

    pids = [cluster.meta()["master_pid"], *cluster.meta()["worker_pids"]]
    assert cluster.down(echo=said.append)
    assert not any(alive(p) for p in pids)
    assert not cluster.status().running
