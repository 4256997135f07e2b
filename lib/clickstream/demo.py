"""The whole pipeline, live, in one command: simulated shop -> Kafka -> Spark -> store -> dashboard.

`clickstream demo` (and `make demo`) runs this. It starts what a learner would otherwise start
in four terminals:

    clickstream broker up
    clickstream produce --topic clickstream_demo --rate 50 ...      (here: a thread)
    clickstream stream --topic clickstream_demo --store sqlite:///.../demo/serving.db ...
    clickstream dashboard --store sqlite:///.../demo/serving.db

then prints the dashboard's URL and a status line every few seconds until Ctrl-C, which stops
everything it started (the broker only if it was not running before). Each run starts from an
empty demo topic, store and checkpoint; the course's own topics and store are not touched.

The simulated traffic carries a scripted story so every panel has something to show: an error
incident (minutes 2 to 3) and a traffic surge (minutes 5 to 6) that the anomaly detector turns
into alerts, a few late events, duplicates and malformed records.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError
from clickstream.processes import WaitTimeout, die_with_parent, wait_until
from clickstream.redact import redact_url
from clickstream.times import iso

DEMO_TOPIC = "clickstream_demo"
WINDOW = "10 seconds"  # short windows: the charts move within seconds, alerts within a minute
WATERMARK = "10 seconds"
INCIDENT = (120.0, 180.0, 0.15)  # seconds after the start: error rate 15 %
SURGE = (300.0, 360.0, 3.0)  # seconds after the start: three times the traffic


class DemoError(ClickstreamError):
    """A part of the demo did not start or stopped by itself."""


@dataclass
class DemoPaths:
    root: Path

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.root / 'serving.db'}"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def stream_log(self) -> Path:
        return self.root / "stream.log"

    @property
    def dashboard_log(self) -> Path:
        return self.root / "dashboard.log"


def _cli() -> list[str]:
    """The `clickstream` command of this interpreter (works without activating the venv)."""
    return [sys.executable, "-m", "clickstream.cli"]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Child:
    """A child process in its own session: Ctrl-C reaches the demo only, which stops it in
    order. Should the demo die without stopping it (SIGKILL), it gets SIGTERM all the same."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None):
        self.name, self.log = name, log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise DemoError(
                f"the {self.name} stopped by itself (exit code {code}); its log, {self.log}, "
                f"ends with:\n{_tail(self.log)}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> str:
        """Ask it to stop; after `timeout` s kill its whole process group (Spark's JVM too)."""
        started = time.monotonic()
        how = "stopped"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                how = f"did not stop within {timeout:.0f} s: killed"
        self._log.close()
        return f"{how} ({time.monotonic() - started:.1f} s)"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# Ctrl-C, `kill` and a closing terminal (SIGHUP) all stop the demo the same way.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Echo:
    """`echo` that survives a closed output: `clickstream demo | tee log` loses `tee` first on
    Ctrl-C, and the cleanup must still run to the end. Once a write fails, output goes to
    /dev/null (so nothing fails at exit either) and the demo carries on silently."""

    def __init__(self, echo):
        self.echo, self.closed = echo, False

    def __call__(self, text: str = "") -> None:
        if self.closed:
            return
        try:
            self.echo(text)
        except (BrokenPipeError, ValueError, OSError):
            self.closed = True
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.dup2(devnull, sys.stderr.fileno())


def _already_stopping(signum, frame) -> None:
    """A second Ctrl-C (or a hang-up) while stopping: the cleanup goes on to the end."""


def _wait_healthy(url: str, child: _Child, timeout: float = 90.0) -> None:
    def healthy() -> bool:
        child.check()  # a dashboard that stopped by itself is reported at once
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
            return resp.status == 200

    try:
        wait_until(healthy, timeout, f"the dashboard to answer on {url}", retry_on=(OSError,))
    except WaitTimeout as exc:
        raise DemoError(f"{exc} Its log, {child.log}, ends with:\n{_tail(child.log)}") from None


def _status(store_url: str) -> dict:
    """The newest figures in the store, for the status line (empty before the first batch)."""
    from clickstream.process.stream import JOB
    from clickstream.serve.store import StoreError, open_store

    try:
        with open_store(store_url, readonly=True) as store:
            health = store.health(JOB, limit=1)
            traffic = store.read("traffic", limit=2)
            alerts = store.read("alerts")
    except StoreError:
        return {}
    if not health:
        return {}
    windows = sorted({r["window_start"] for r in traffic})
    previous = windows[0] if len(windows) > 1 else None  # the newest may still be filling
    return {
        "batch": health[0].get("batch_id"),
        "window": previous,
        "events": sum(r["count"] for r in traffic if r["window_start"] == previous),
        "open_alerts": sum(1 for a in alerts if a.get("status") == "open"),
        "alerts": len(alerts),
    }


def _status_line(sent: int, status: dict, window: str) -> str:
    if not status:
        return f"  {sent:>7,} events sent; waiting for the streaming job's first results..."
    when = str(status["window"] or "")[11:19] or "-"
    return (
        f"  {sent:>7,} events sent | batch {status['batch']} | {status['events']:,} events in "
        f"the {window} window at {when} | alerts: {status['open_alerts']} open, "
        f"{status['alerts']} in all"
    )


def run_demo(
    settings: Settings | None = None,
    rate: float = 50.0,
    port: int = 8501,
    run_seconds: float | None = None,
    status_every: float = 10.0,
    echo=print,
) -> dict:
    """Start what is missing, run until Ctrl-C (or `run_seconds`), then stop it all.

    Returns the last status read from the store (used by the tests).
    """
    from clickstream.course import reset_topics
    from clickstream.dashboard.app import check_port, streamlit_command
    from clickstream.local.broker import LocalBroker
    from clickstream.source.producer import produce, simulated_records
    from clickstream.source.simulator import SimConfig

    settings = settings or get_settings()
    echo = _Echo(echo)
    check_port("127.0.0.1", port)  # before starting anything: names the fix (--port)
    paths = DemoPaths(settings.state_dir / "demo")
    shutil.rmtree(paths.root, ignore_errors=True)
    paths.root.mkdir(parents=True)

    broker = LocalBroker(settings)
    started_broker = not settings.is_external and not broker.is_running()
    broker.up(echo=echo, die_with_parent=True)  # a broker it starts goes when the demo goes
    bootstrap = settings.bootstrap_servers
    alerts_topic, quarantine_topic = f"{DEMO_TOPIC}_alerts", f"{DEMO_TOPIC}_quarantine"
    reset_topics(DEMO_TOPIC, alerts_topic, quarantine_topic, bootstrap=bootstrap)
    echo(f"Fresh topics {DEMO_TOPIC}, {alerts_topic}, {quarantine_topic} at {bootstrap}.")

    # Ctrl-C, SIGTERM (`kill`) and SIGHUP (a closing terminal) all stop the demo cleanly, even
    # when the shell that started it ignores SIGINT (background jobs inherit an ignored SIGINT).
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    children: list[_Child] = []
    stop = threading.Event()
    box: dict = {}
    producer = None
    status: dict = {}
    try:
        echo(f"Starting the streaming job (Spark; log: {paths.stream_log})...")
        children.append(
            _Child(
                "streaming job",
                [
                    *_cli(),
                    "stream",
                    "--topic",
                    DEMO_TOPIC,
                    "--bootstrap-servers",
                    bootstrap,
                    "--store",
                    paths.store_url,
                    "--checkpoint",
                    str(paths.checkpoint),
                    "--window",
                    WINDOW,
                    "--watermark",
                    WATERMARK,
                    "--session-gap",
                    "1 minute",
                    "--alerts-topic",
                    alerts_topic,
                    "--quarantine-topic",
                    quarantine_topic,
                ],
                paths.stream_log,
            )
        )
        echo(f"Starting the dashboard (log: {paths.dashboard_log})...")
        dashboard = _Child(
            "dashboard",
            streamlit_command(paths.store_url, port, "127.0.0.1", ""),
            paths.dashboard_log,
            env={"CLICKSTREAM_STORE": paths.store_url},
        )
        children.append(dashboard)
        url = f"http://localhost:{port}"
        _wait_healthy(f"http://127.0.0.1:{port}", dashboard)

        now = datetime.now(UTC).replace(microsecond=0)
        config = SimConfig(
            seed=int(now.timestamp()),
            count=10**9,
            start=iso(now),
            rate=rate,
            daily_amplitude=0.0,
            think_time_s=5.0,
            incidents=(INCIDENT,),
            surges=(SURGE,),
            late_share=0.01,
            late_delay_s=30.0,
        )

        def counted(items):
            for item in items:
                box["sent"] = box.get("sent", 0) + 1
                yield item

        def produce_loop() -> None:
            try:
                box["summary"] = produce(
                    counted(simulated_records(config)),
                    DEMO_TOPIC,
                    bootstrap,
                    keep_timing=True,
                    progress=False,
                    stop=stop,
                )
            except Exception as exc:  # noqa: BLE001 - reported by the main loop
                box["error"] = exc

        producer = threading.Thread(target=produce_loop, name="demo-producer", daemon=True)
        producer.start()
        echo("")
        echo(f"  Dashboard: {url}   <- open it in your browser")
        echo("")
        echo(
            f"  ~{rate:.0f} events/s of simulated shop traffic into {DEMO_TOPIC}; the streaming "
            f"job writes {WINDOW} windows to {redact_url(paths.store_url)}."
        )
        echo(
            "  Scripted: an error incident at minute 2-3 and a traffic surge at minute 5-6 "
            "(watch the alerts). The first results appear after about 30 s. Ctrl-C stops "
            "everything."
        )
        deadline = time.monotonic() + run_seconds if run_seconds else None
        next_status = time.monotonic() + status_every
        while deadline is None or time.monotonic() < deadline:
            for child in children:
                child.check()
            if "error" in box:
                raise DemoError(f"the producer failed: {box['error']}")
            if time.monotonic() >= next_status:
                status = _status(paths.store_url) or status
                echo(_status_line(box.get("sent", 0), status, WINDOW))
                next_status += status_every
            time.sleep(0.5)
    except KeyboardInterrupt:
        echo("\nCtrl-C: stopping...")
    finally:
        for sig in handlers:  # nothing interrupts the cleanup: it stops what the demo started
            signal.signal(sig, _already_stopping)
        stop.set()
        if producer is not None:
            producer.join(timeout=10)
            sent = box.get("summary")
            echo(f"  producer stopped ({sent.line() if sent else 'no summary'})")
        status = _status(paths.store_url) or status
        for child in reversed(children):
            # SIGINT is the job's Ctrl-C: it finishes the running micro-batch and exits.
            if child.name == "streaming job":
                how = child.stop(signal.SIGINT, timeout=60)
            else:
                how = child.stop(signal.SIGTERM, timeout=15)
            echo(f"  {child.name} {how}")
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        if started_broker:
            broker.down(echo=lambda m: echo(f"  {m}"))
        else:
            echo(f"  broker left running (it was running before the demo): {bootstrap}")
        echo(f"Everything the demo started is stopped. Its store stays in {paths.root}.")
    return status
