"""`clickstream dashboard` and `clickstream bench dashboard`: options, errors, output."""

from __future__ import annotations

import json
import socket

from click.testing import CliRunner

from clickstream.cli import main
from clickstream.dashboard import app as db
from clickstream.serve.store import open_store
from tests.dashboard import known_data


def test_streamlit_command_is_headless_and_reads_the_given_store():
    cmd = db.streamlit_command("sqlite:////data/serving.db", port=8600, host="0.0.0.0")
    text = " ".join(cmd)
    assert cmd[1:4] == ["-m", "streamlit", "run"]
    assert cmd[4].endswith("clickstream/dashboard/app.py")
    for pair in (
        "--server.port 8600",
        "--server.address 0.0.0.0",
        "--server.headless true",
        "--browser.gatherUsageStats false",
    ):
        assert pair in text
    assert cmd[-3:] == ["--", "--store", "sqlite:////data/serving.db"]
    assert db.store_url(["--store", "redis://h:1/0"]) == "redis://h:1/0"


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = CliRunner().invoke(
            main, ["dashboard", "--port", str(port), "--store", "sqlite:///x.db"]
        )
    assert result.exit_code == 1
    assert f"Cannot serve the dashboard on 127.0.0.1:{port}" in result.output
    assert f"--port {port + 1}" in result.output


def test_an_unsupported_store_url_is_a_clear_error():
    result = CliRunner().invoke(main, ["dashboard", "--store", "mysql://db/x"])
    assert result.exit_code == 2
    assert "Unsupported store URL 'mysql://db/x'" in result.output
    assert "Traceback" not in result.output


def test_bench_dashboard_prints_the_cost_of_a_refresh(tmp_path):
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    args = ["bench", "dashboard", "--store", url, "--minutes", "60", "--repeats", "2"]
    result = CliRunner().invoke(main, [*args, "--ledger-batches", "500", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["minutes"] == 60 and report["ledger_batches"] == 500
    assert report["queries_per_refresh"] == 14
    assert set(report["median_ms"]) == {
        "new batch, range 30 minutes: data",
        "new batch, range 30 minutes: data + charts",
        "no new batch (any range)",
    }  # the longer ranges need more history than an hour
    assert set(report["before_median_ms"]) == {"30 minutes"}
    assert report["grain_minutes"] == {"30 minutes": None}
    assert "cores" in report["machine"]


def test_bench_dashboard_does_not_empty_a_store_holding_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    with open_store(url) as store:
        known_data.fill(store)
    result = CliRunner().invoke(main, ["bench", "dashboard", "--store", url, "--minutes", "60"])
    assert result.exit_code == 1
    assert "holds data and the benchmark would empty it" in result.output
    with open_store(url, readonly=True) as store:
        assert store.read("traffic", limit=1)
