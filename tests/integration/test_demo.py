"""`clickstream demo` (what `make demo` runs) ends with the dashboard live on real data.

The demo runs as a learner runs it, in its own process, against the session's real broker:
it must print the dashboard's URL, serve the dashboard there while the real streaming job fills
its store with growing results, and on Ctrl-C stop every process it started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from clickstream.config import get_settings
from clickstream.ingest.kafka_io import topic_offsets
from clickstream.local.broker import free_port
from clickstream.serve.store import open_store
from tests.conftest import CLICKSTREAM

pytestmark = [pytest.mark.integration, pytest.mark.spark]

STATUS = re.compile(r"([\d,]+) events sent \| batch (\d+) \| ([\d,]+) events in")


def _read_until(proc, pattern: re.Pattern, lines: list[str], timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        match = pattern.search(line)
        if match:
            return match
    pytest.fail(f"no line matching {pattern.pattern!r}; the demo printed:\n" + "\n".join(lines))


def _next_batch(proc, first: re.Match, lines: list[str], timeout: float) -> re.Match:
    """The first status line after `first` that reports a later batch (on a busy machine, the
    job's first batches can outlast a status interval)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _read_until(proc, STATUS, lines, max(1.0, deadline - time.monotonic()))
        if int(match.group(2)) > int(first.group(2)):
            return match
    pytest.fail(
        f"the job stayed at batch {first.group(2)} for {timeout:.0f} s; the demo printed:\n"
        + "\n".join(lines)
    )


def test_demo_serves_the_dashboard_on_live_results_and_stops_everything(bootstrap):
    port = free_port()
    proc = subprocess.Popen(
        [CLICKSTREAM, "demo", "--port", str(port), "--rate", "100", "--seconds", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        url = _read_until(proc, re.compile(r"Dashboard: (http://\S+)"), lines, 120).group(1)
        assert url == f"http://localhost:{port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.status == 200
            assert "<title>Streamlit</title>" in resp.read().decode()

        first = _read_until(proc, STATUS, lines, 180)
        later = _next_batch(proc, first, lines, 120)
        sent = [int(m.group(1).replace(",", "")) for m in (first, later)]
        batches = [int(m.group(2)) for m in (first, later)]
        assert sent[1] > sent[0] and batches[1] > batches[0], lines
        assert int(later.group(3).replace(",", "")) > 0
        # The dashboard's store holds the job's results, and they keep coming.
        store_url = f"sqlite:///{get_settings().state_dir / 'demo' / 'serving.db'}"
        with open_store(store_url, readonly=True) as store:
            assert store.read("traffic", limit=1)
            assert store.last_batch("stream") >= batches[1]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the demo's terminal
        try:
            out, _ = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("the demo did not stop within 150 s of Ctrl-C:\n" + str(exc.output))
        lines.extend(out.splitlines())
    assert proc.returncode == 0, "\n".join(lines)
    text = "\n".join(lines)
    for part in ("producer stopped", "dashboard stopped (", "streaming job stopped ("):
        assert part in text, text  # stopped when asked, not killed after a timeout
    assert "broker left running" in text  # the session's broker was running before
    # What the producer reported sending is in the demo topic, and the job's processes are gone.
    produced = int(
        re.search(r"sent ([\d,]+) records to clickstream_demo", text).group(1).replace(",", "")
    )
    offsets = topic_offsets("clickstream_demo", bootstrap)
    assert sum(end for _, end in offsets.values()) == produced
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    leftover = subprocess.run(
        ["pgrep", "-f", str(get_settings().state_dir / "demo")],
        capture_output=True,
        text=True,
    )
    assert leftover.stdout.strip() == "", "a process the demo started is still running"


@pytest.mark.parametrize("how", ["killed", "hung_up"])
def test_no_process_of_the_demo_outlives_it(how, tmp_path):
    """`kill -9` of the demo, or its terminal closing while `tee` (its output) is already gone:
    the broker, the streaming job (and Spark's JVM) and the dashboard it started all stop."""
    import psutil

    from clickstream.processes import alive, command_line, stop, wait_until

    env = {
        **os.environ,
        "CLICKSTREAM_STATE_DIR": str(tmp_path / "state"),  # its own broker, started by the demo
        "CLICKSTREAM_KAFKA_PORT": str(free_port()),
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen(
        [CLICKSTREAM, "demo", "--port", str(free_port()), "--rate", "20", "--seconds", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    lines: list[str] = []
    tree: list[psutil.Process] = []
    try:
        _read_until(proc, re.compile(r"Dashboard: "), lines, 240)
        tree = psutil.Process(proc.pid).children(recursive=True)
        # A short-lived helper may already be a zombie here: it has no command line to show.
        started = " ".join(command_line(p.pid) for p in tree)
        for part in ("kafka.Kafka", "streamlit", " stream ", "org.apache.spark"):
            assert part in started, (part, started)
        if how == "killed":
            proc.kill()
        else:
            proc.stdout.close()  # every line the demo writes from now on fails: EPIPE
            proc.send_signal(signal.SIGHUP)
            assert proc.wait(timeout=150) == 0  # it stopped everything, without a traceback

        def gone() -> bool:
            return not [p for p in tree if p.is_running() and alive(p.pid)]  # zombies are gone

        wait_until(gone, 120, "every process the demo started to stop")
    finally:  # whatever happened above, leave nothing behind
        if proc.poll() is None:
            stop(proc.pid, timeout_s=5)
        for p in tree:
            if p.is_running() and alive(p.pid):
                stop(p.pid, timeout_s=5)
