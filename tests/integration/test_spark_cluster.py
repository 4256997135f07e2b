"""A real Spark standalone cluster from the installed PySpark runs the same pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from clickstream.broker import _pid_alive, free_port
from clickstream.cluster import SparkCluster
from clickstream.config import get_settings
from clickstream.kafka_io import ensure_topic
from clickstream.producer import produce, simulated_records
from clickstream.simulator import SimConfig, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.spark]


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

    config = SimConfig(seed=11, count=3000, rate=30.0)
    ensure_topic(topic, partitions=4, bootstrap=bootstrap)
    assert produce(simulated_records(config), topic, bootstrap, progress=False).sent == 3000
    expected = Counter()
    for rec in Simulator(config).records():
        t = rec.event["event_time"]
        expected[(t[:16] + ":00", rec.event["event_type"])] += 1

    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("cluster_job.py")),
            st.master_url,
            bootstrap,
            topic,
            str(tmp_path / "ckpt"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["master"] == st.master_url and result["executors"] == 2
    got = {(w[:16] + ":00", et): n for w, et, n in result["counts"]}
    assert got == {(k[0].replace("T", "T"), k[1]): v for k, v in expected.items()}

    pids = [cluster.meta()["master_pid"], *cluster.meta()["worker_pids"]]
    assert cluster.down(echo=said.append)
    assert not any(_pid_alive(p) for p in pids)
    assert not cluster.status().running
