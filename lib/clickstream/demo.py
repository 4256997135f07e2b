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

import psutil

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError
from clickstream.processes import WaitTimeout, alive, die_with_parent, wait_until
from clickstream.redact import redact_url
from clickstream.times import iso

DEMO_TOPIC = "clickstream_demo"
ALERTS_TOPIC = f"{DEMO_TOPIC}_alerts"
QUARANTINE_TOPIC = f"{DEMO_TOPIC}_quarantine"
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

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log: Path,
        env: dict | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 15.0,
    ):
        self.name, self.log = name, log
        self.stop_signal, self.stop_timeout = stop_signal, stop_timeout
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

    def stop(self) -> str:
        """Send it `stop_signal`; after `stop_timeout` s kill its whole process group (Spark's
        JVM too). Says how it went."""
        started = time.monotonic()
        how = "stopped"
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                how = f"did not stop within {self.stop_timeout:.0f} s: killed"
        _end_group(self.proc.pid)
        self._log.close()
        return f"{how} ({time.monotonic() - started:.1f} s)"


def _end_group(pgid: int) -> None:
    """Stop what is left of a child's process group once the child itself has ended: a job
    interrupted while Spark was still starting leaves Spark's JVM behind otherwise. The group
    is the child's own session, so nothing else is in it."""

    def members() -> list[int]:
        found = []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(p.pid) == pgid and alive(p.pid):
                    found.append(p.pid)
        return found

    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if not members():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: not members(), grace, f"process group {pgid} to end")


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


def _stream_job_command(paths: DemoPaths, bootstrap: str) -> list[str]:
    """`clickstream stream` on the demo's topics, store and checkpoint, with short windows."""
    options = {
        "--topic": DEMO_TOPIC,
        "--bootstrap-servers": bootstrap,
        "--store": paths.store_url,
        "--checkpoint": str(paths.checkpoint),
        "--window": WINDOW,
        "--watermark": WATERMARK,
        "--session-gap": "1 minute",
        "--alerts-topic": ALERTS_TOPIC,
        "--quarantine-topic": QUARANTINE_TOPIC,
    }
    return [*_cli(), "stream", *(part for option in options.items() for part in option)]


def _shop_traffic(rate: float):
    """The simulator's settings: shop traffic from now on at `rate` events/s, with the story."""
    from clickstream.source.simulator import SimConfig

    now = datetime.now(UTC).replace(microsecond=0)
    return SimConfig(
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


class _Producer:
    """The simulated shop, into the demo topic on a thread of its own until `stop()`. It counts
    what it sends and keeps its summary, or the error that stopped it (the main loop raises it)."""

    def __init__(self, config, bootstrap: str):
        from clickstream.source.producer import simulated_records

        self.sent = 0
        self.summary = None
        self.error: Exception | None = None
        self._stop = threading.Event()
        records = self._counted(simulated_records(config))
        self._thread = threading.Thread(
            target=self._run, args=(records, bootstrap), name="demo-producer", daemon=True
        )
        self._thread.start()

    def _counted(self, items):
        for item in items:
            self.sent += 1
            yield item

    def _run(self, records, bootstrap: str) -> None:
        from clickstream.source.producer import produce

        try:
            self.summary = produce(
                records, DEMO_TOPIC, bootstrap, keep_timing=True, progress=False, stop=self._stop
            )
        except Exception as exc:  # noqa: BLE001 - reported by the main loop
            self.error = exc

    def stop(self) -> str:
        """Stop sending (the thread gets 10 s to finish) and say what was sent."""
        self._stop.set()
        self._thread.join(timeout=10)
        return self.summary.line() if self.summary else "no summary"


class _StopSignals:
    """Ctrl-C, SIGTERM (`kill`) and SIGHUP (a closing terminal) all stop the demo cleanly, even
    when the shell that started it ignores SIGINT (background jobs inherit an ignored SIGINT).
    Only the main thread can set signal handlers: elsewhere this changes nothing."""

    def __init__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}

    def ignore(self) -> None:
        """From now on nothing interrupts the cleanup: it stops what the demo started."""
        for sig in self.previous:
            signal.signal(sig, _already_stopping)

    def restore(self) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


class _Demo:
    """One run of the demo, and what it started, so that the cleanup stops exactly that."""

    def __init__(self, settings: Settings, echo: _Echo):
        self.settings, self.echo = settings, echo
        self.paths = DemoPaths(settings.state_dir / "demo")
        self.broker = None
        self.started_broker = False
        self.bootstrap = ""
        self.children: list[_Child] = []
        self.producer: _Producer | None = None
        self.status: dict = {}  # the newest figures read from the store

    def prepare(self, port: int) -> None:
        """Check the port, empty the demo's directory, start the broker if needed, fresh topics."""
        from clickstream.course import reset_topics
        from clickstream.dashboard.app import check_port
        from clickstream.local.broker import LocalBroker

        check_port("127.0.0.1", port)  # before starting anything: names the fix (--port)
        shutil.rmtree(self.paths.root, ignore_errors=True)
        self.paths.root.mkdir(parents=True)
        self.broker = LocalBroker(self.settings)
        self.started_broker = not self.settings.is_external and not self.broker.is_running()
        # A broker it starts goes when the demo goes.
        self.broker.up(echo=self.echo, die_with_parent=True)
        self.bootstrap = self.settings.bootstrap_servers
        reset_topics(DEMO_TOPIC, ALERTS_TOPIC, QUARANTINE_TOPIC, bootstrap=self.bootstrap)
        self.echo(
            f"Fresh topics {DEMO_TOPIC}, {ALERTS_TOPIC}, {QUARANTINE_TOPIC} at {self.bootstrap}."
        )

    def start(self, rate: float, port: int) -> None:
        """The streaming job, the dashboard (waiting until it answers), then the producer."""
        from clickstream.dashboard.app import streamlit_command

        paths = self.paths
        self.echo(f"Starting the streaming job (Spark; log: {paths.stream_log})...")
        job = _stream_job_command(paths, self.bootstrap)
        # SIGINT is the job's Ctrl-C: it finishes the running micro-batch and exits.
        self.children.append(
            _Child(
                "streaming job", job, paths.stream_log, stop_signal=signal.SIGINT, stop_timeout=60
            )
        )
        self.echo(f"Starting the dashboard (log: {paths.dashboard_log})...")
        dashboard = _Child(
            "dashboard",
            streamlit_command(paths.store_url, port, "127.0.0.1", ""),
            paths.dashboard_log,
            env={"CLICKSTREAM_STORE": paths.store_url},
        )
        self.children.append(dashboard)
        _wait_healthy(f"http://127.0.0.1:{port}", dashboard)
        self.producer = _Producer(_shop_traffic(rate), self.bootstrap)

    def introduce(self, rate: float, port: int) -> None:
        """Where the dashboard is and what to watch for."""
        self.echo("")
        self.echo(f"  Dashboard: http://localhost:{port}   <- open it in your browser")
        self.echo("")
        self.echo(
            f"  ~{rate:.0f} events/s of simulated shop traffic into {DEMO_TOPIC}; the streaming "
            f"job writes {WINDOW} windows to {redact_url(self.paths.store_url)}."
        )
        self.echo(
            "  Scripted: an error incident at minute 2-3 and a traffic surge at minute 5-6 "
            "(watch the alerts). The first results appear after about 30 s. Ctrl-C stops "
            "everything."
        )

    def watch(self, run_seconds: float | None, status_every: float) -> None:
        """Until `run_seconds` have passed (or forever): a status line every `status_every` s,
        and a DemoError as soon as a part stops by itself."""
        deadline = time.monotonic() + run_seconds if run_seconds else None
        next_status = time.monotonic() + status_every
        while deadline is None or time.monotonic() < deadline:
            self.check()
            if time.monotonic() >= next_status:
                self.status = _status(self.paths.store_url) or self.status
                self.echo(_status_line(self.producer.sent, self.status, WINDOW))
                next_status += status_every
            time.sleep(0.5)

    def check(self) -> None:
        for child in self.children:
            child.check()
        if self.producer.error is not None:
            raise DemoError(f"the producer failed: {self.producer.error}")

    def stop_processes(self) -> None:
        """Stop the producer, read the store a last time, stop the children newest first."""
        if self.producer is not None:
            self.echo(f"  producer stopped ({self.producer.stop()})")
        self.status = _status(self.paths.store_url) or self.status
        for child in reversed(self.children):
            self.echo(f"  {child.name} {child.stop()}")

    def stop_broker(self) -> None:
        """Stop the broker if this run started it; say where the store stays."""
        if self.started_broker:
            self.broker.down(echo=lambda m: self.echo(f"  {m}"))
        else:
            self.echo(f"  broker left running (it was running before the demo): {self.bootstrap}")
        self.echo(f"Everything the demo started is stopped. Its store stays in {self.paths.root}.")


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
    demo = _Demo(settings or get_settings(), _Echo(echo))
    demo.prepare(port)
    signals = _StopSignals()
    try:
        demo.start(rate, port)
        demo.introduce(rate, port)
        demo.watch(run_seconds, status_every)
    except KeyboardInterrupt:
        demo.echo("\nCtrl-C: stopping...")
    finally:
        signals.ignore()
        demo.stop_processes()
        signals.restore()
        demo.stop_broker()
    return demo.status
