"""Docker, compose and Binder files: what can be checked without a Docker engine.

No image is built here; these tests check that the files agree with the library's
configuration and that the start script and the JupyterLab proxy entry work outside Docker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from clickstream.config import DASHBOARD_PORT, KAFKA_VERSION, LAB_PORT, get_settings
from clickstream.local.broker import LocalBroker, free_port
from clickstream.processes import alive

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def pyproject_pins() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["fast"]
    return dict(d.split("==") for d in deps)


def test_compose_wires_the_course_to_the_official_kafka_image():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    kafka, course = compose["services"]["kafka"], compose["services"]["course"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"  # same Kafka as the local broker
    env = kafka["environment"]
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    # The course container's bootstrap address is one the broker advertises to containers ...
    bootstrap = course["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    inside = [name for name, addr in advertised.items() if addr == bootstrap]
    assert inside and listeners[inside[0]].endswith(":" + bootstrap.split(":")[1])
    # ... and the host reaches the advertised localhost listener through a published port.
    host_listener = next(n for n, a in advertised.items() if a.startswith("localhost:"))
    host_port = advertised[host_listener].split(":")[1]
    assert f"127.0.0.1:{host_port}:{host_port}" in kafka["ports"]
    assert set(protocols) >= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert "healthcheck" in kafka and "healthcheck" in course
    assert course["depends_on"]["kafka"]["condition"] == "service_healthy"
    # The ports the library uses are the ones published.
    assert f"127.0.0.1:{LAB_PORT}:{LAB_PORT}" in course["ports"]
    assert f"127.0.0.1:{DASHBOARD_PORT}:{DASHBOARD_PORT}" in course["ports"]
    assert course["environment"]["CLICKSTREAM_DASHBOARD_PORT"] == str(DASHBOARD_PORT)
    assert (
        ROOT / course["build"]["context"].replace("..", ".") / course["build"]["dockerfile"]
    ).exists()


def test_dockerfile_runs_the_ci_setup_as_a_non_root_user():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)  # multi-arch base image
    assert re.search(r"^RUN make setup$", text, re.M)  # the same set-up CI runs
    assert re.search(r"^USER \$\{NB_USER\}$", text, re.M)
    assert f"EXPOSE {LAB_PORT} {DASHBOARD_PORT}" in text
    assert '"docker/start"' in text and "openjdk-17" in text
    assert not (ROOT / "Dockerfile").exists()  # would make repo2docker ignore binder/


def test_environment_yml_pins_equal_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert dict(p.split("==") for p in pip) == pyproject_pins()
    assert "openjdk=17" in env["dependencies"]
    assert (ROOT / "binder" / "environment.yml").resolve() == (ROOT / "environment.yml")


def test_binder_scripts_follow_repo2docker_rules():
    post = (ROOT / "binder" / "postBuild").read_text().splitlines()
    assert post[1].startswith("set -e") or "set -euo pipefail" in post
    assert "make setup VENV=" in post
    start = (ROOT / "binder" / "start").read_text().strip().splitlines()
    assert start[-1] == 'exec "$@"'
    for script in ("postBuild", "start"):
        assert os.access(ROOT / "binder" / script, os.X_OK)


def test_makefile_can_install_into_the_current_environment():
    out = subprocess.run(["make", "-n", "setup", "VENV="], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "-m venv" not in out.stdout
    assert f"{Path(sys.executable).resolve().parent}" in out.stdout or "pip install" in out.stdout


@pytest.mark.integration
def test_start_script_brings_the_broker_up_and_down_around_the_command(tmp_path):
    env = dict(os.environ)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("CLICKSTREAM_DASHBOARD_PORT", None)
    env.update(
        CLICKSTREAM_STATE_DIR=str(tmp_path / "state"), CLICKSTREAM_KAFKA_PORT=str(free_port())
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    out = subprocess.run(
        [str(DOCKER / "start"), "clickstream", "broker", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    status = json.loads(out.stdout[out.stdout.index("{") : out.stdout.rindex("}") + 1])
    assert status["running"] and status["pid"]
    assert "Kafka broker stopped" in out.stdout
    assert not alive(status["pid"])
    # The command's exit code is the script's.
    failing = subprocess.run(
        [str(DOCKER / "start"), "false"], env=env, capture_output=True, timeout=180
    )
    assert failing.returncode == 1


@pytest.mark.integration
def test_start_script_leaves_a_running_broker_alone(broker_settings, broker):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("CLICKSTREAM_DASHBOARD_PORT", None)
    pid = LocalBroker(get_settings()).pid()
    out = subprocess.run(
        [str(DOCKER / "start"), "true"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "already running" in out.stdout and "stopped" not in out.stdout
    assert LocalBroker(get_settings()).pid() == pid


@pytest.mark.integration
def test_jupyterlab_proxies_the_dashboard(tmp_path):
    """Start JupyterLab with the proxy on a free port and fetch the proxied dashboard page."""
    port = free_port()
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
        CLICKSTREAM_STORE=f"sqlite:///{tmp_path / 'empty.db'}",
    )
    lab = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("jupyter")),
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            "--allow-root",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            f"--ServerApp.root_dir={tmp_path}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        page = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/dashboard/", timeout=60) as resp:
                    page = resp.read().decode("utf-8", "replace")
                    if resp.status == 200 and "streamlit" in page.lower():
                        break
            except OSError:
                time.sleep(1)
        assert "<title>streamlit</title>" in page.lower() or "streamlit" in page.lower(), page[:500]
        with urllib.request.urlopen(f"{base}/dashboard/_stcore/health", timeout=30) as resp:
            assert resp.read().decode().strip() == "ok"
        with urllib.request.urlopen(f"{base}/lab/api/settings", timeout=30):
            pass
    finally:
        os.killpg(lab.pid, 15)
        lab.wait(timeout=30)
