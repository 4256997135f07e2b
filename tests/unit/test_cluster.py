"""`SparkCluster`'s view of the master, against a stand-in for the master's web UI."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from clickstream.config import get_settings
from clickstream.local.spark_cluster import ClusterError, SparkCluster

STATE = {
    "workers": [{"id": "worker-1", "cores": 1, "memory": 768, "state": "ALIVE"}],
    "activeapps": [{"id": "app-2", "name": "course", "cores": 2, "state": "RUNNING"}],
    "completedapps": [
        {"id": "app-1", "name": "course", "cores": 2, "state": "FINISHED"},
        {"id": "app-0", "name": "other", "cores": 1, "state": "FINISHED"},
    ],
}


@pytest.fixture
def master_ui():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps(STATE).encode() if self.path == "/json/" else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def cluster_at(tmp_path, web_port: int | None) -> SparkCluster:
    cluster = SparkCluster(get_settings(state_dir=tmp_path))
    cluster.dir.mkdir(parents=True)
    if web_port is not None:
        cluster.meta_file.write_text(json.dumps({"web_port": web_port}))
    return cluster


def test_applications_running_first_then_by_name(tmp_path, master_ui):
    cluster = cluster_at(tmp_path, master_ui)
    assert cluster.master_state() == STATE
    assert [a["id"] for a in cluster.applications()] == ["app-2", "app-1", "app-0"]
    assert [a["id"] for a in cluster.applications("course")] == ["app-2", "app-1"]
    assert cluster.applications("nobody") == []


def test_no_master_answers(tmp_path):
    assert cluster_at(tmp_path, None).master_state() is None
    with pytest.raises(ClusterError, match="waiting for the Spark master's web UI to answer"):
        cluster_at(tmp_path / "other", None).applications(wait_s=0)
