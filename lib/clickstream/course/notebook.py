"""Helpers the notebooks share, so that every notebook runs alone or in order and reruns
deterministically.

`ensure_broker`, `reset_topics`, `reset_groups`, `reset_dir` and `notebook_dir` give a notebook
a broker and a clean start; `jvm_output_to` keeps the JVM's console output out of its cells;
`run_shown` shows the progress of a long command; `start_background` leaves a server running
(08's dashboard) without losing track of it, and `stop_background` stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError
from clickstream.processes import wait_until

JVM_LOG_MAX_BYTES = 20_000_000


def ensure_broker(
    bootstrap_servers: str | None = None, echo: Callable[[str], object] = print
) -> str:
    """The bootstrap address to use: the cluster given, else the course's local broker.

    The local broker is started if it is not running, and left running afterwards: every
    notebook shares it.
    """
    from clickstream.local.broker import LocalBroker

    settings = get_settings(external_bootstrap=bootstrap_servers)
    LocalBroker(settings).up(echo=echo)
    return settings.bootstrap_servers


def reset_topics(*topics: str, bootstrap: str, partitions: int = 3) -> None:
    """Delete and recreate `topics` empty, so a rerun starts again from offset 0."""
    from clickstream.ingest.kafka_io import delete_topic, ensure_topic, topic_offsets

    for topic in topics:
        delete_topic(topic, bootstrap)

        def recreated_empty(topic=topic) -> bool:
            # Right after a delete the broker may still report the old topic as existing.
            ensure_topic(topic, partitions=partitions, bootstrap=bootstrap)
            offsets = topic_offsets(topic, bootstrap)
            if len(offsets) == partitions and all(e == 0 for _, e in offsets.values()):
                return True
            delete_topic(topic, bootstrap)
            return False

        wait_until(
            recreated_empty,
            30,
            f"topic {topic} to be recreated empty with {partitions} partitions (check the "
            "broker log: `clickstream broker status`)",
        )


def reset_groups(*groups: str, bootstrap: str) -> None:
    """Forget consumer `groups` and their committed offsets (a group that is absent is fine)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="clickstream-course")
    try:
        # Only delete groups the broker knows: on a fresh broker there is not even a group
        # coordinator yet, and asking it to delete anything fails.
        known = {g["group_id"] for g in admin.list_groups()}
        doomed = [g for g in groups if g in known]
        results = admin.delete_groups(doomed) if doomed else {}
    finally:
        admin.close()
    problems = {g: r for g, r in results.items() if r not in ("OK", "GroupIdNotFoundError")}
    if problems:
        raise ClickstreamError(
            f"Could not delete consumer groups {problems}: a group with running members cannot "
            "be deleted; close its consumers (or restart the kernel that holds them) first."
        )


def reset_dir(path: str | Path) -> Path:
    """An empty directory at `path` (e.g. a checkpoint location), created or emptied."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def notebook_dir(name: str, settings: Settings | None = None) -> Path:
    """A per-notebook working directory under the state dir (checkpoints, scratch files)."""
    path = (settings or get_settings()).state_dir / "course" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def jvm_output_to(log_file: str | Path | None = None) -> Iterator[Path]:
    """Send the console output of processes started inside this block to `log_file`.

    Jupyter kernels forward everything written to file descriptors 1 and 2 into the current
    cell, and a JVM started from a cell (Spark's) inherits them and keeps printing there
    ("WARNING: Using incubator modules", log lines) long after. Starting it inside this block
    hands it a log file instead; Python's own prints are not affected.
    """
    path = Path(log_file) if log_file else get_settings().state_dir / "logs" / "spark-jvm.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    # Start afresh once the log is large, so a learner's state directory does not grow forever.
    mode = "wb" if path.exists() and path.stat().st_size > JVM_LOG_MAX_BYTES else "ab"
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with path.open(mode) as log:
        try:
            for fd in saved:
                os.dup2(log.fileno(), fd)
            yield path
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


JVM_NOISE = re.compile(r"^(WARNING: |\d\d:\d\d:\d\d (WARN|INFO) |SLF4J: )")


def _lines_of(proc: subprocess.Popen) -> queue.Queue[str | None]:
    """A queue that a reader thread fills with `proc`'s output lines, then None at its end.

    The reader is a thread so that the caller (the cell's thread) can print heartbeats while
    the command is silent: output printed from another thread may land in the wrong cell.
    """
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


@dataclass
class _Shown:
    """How `run_shown` shows a command's output: where, what to hide, when to say it runs."""

    out: IO[str]
    echo: Callable[[str], object]
    hide: re.Pattern | None
    heartbeat_s: float | None
    started: float
    last_shown: float = 0.0

    def line(self, line: str) -> None:
        self.out.write(line)
        self.out.flush()
        if self.hide is None or not self.hide.search(line):
            self.echo(line.rstrip("\n"))
            self.last_shown = time.monotonic()

    def quiet(self) -> None:
        if self.heartbeat_s is not None and time.monotonic() - self.last_shown >= self.heartbeat_s:
            self.echo(f"  ... still running ({time.monotonic() - self.started:.0f} s)")
            self.last_shown = time.monotonic()


def _relay(lines: queue.Queue[str | None], shown: _Shown, timeout_s: float, what: str) -> None:
    """Show every line of `lines` until its end; TimeoutError (saying `what`) after `timeout_s`."""
    while True:
        waited = time.monotonic() - shown.started
        if waited > timeout_s:
            raise TimeoutError(what)
        try:
            line = lines.get(timeout=min(1.0, max(0.0, timeout_s - waited)))
        except queue.Empty:
            shown.quiet()
            continue
        if line is None:
            return
        shown.line(line)


def run_shown(
    args: list[str],
    log: str | Path,
    timeout_s: float = 600,
    echo: Callable[[str], object] = print,
    heartbeat_s: float | None = 10,
    hide: re.Pattern | None = JVM_NOISE,
) -> int:
    """Run a command to its end, showing its output line by line as it comes, and return its
    exit code. Every line goes to `log`; lines matching `hide` (the JVM's warnings and log
    lines) only go there. After `heartbeat_s` seconds without a line it says how long it has
    been running, so a long silent step (Spark starting) still shows progress.

    The command runs in its own process group, stopped as a whole when it outlives `timeout_s`
    (TimeoutError, naming the log) or when the caller is interrupted (a kernel interrupt).
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # a Python child's lines as they come
            start_new_session=True,  # its own process group: stopped as a whole
        )
        shown = _Shown(out, echo, hide, heartbeat_s, started, last_shown=started)
        try:
            _relay(
                _lines_of(proc),
                shown,
                timeout_s,
                f"{Path(args[0]).name} did not finish within {timeout_s:.0f} s and was "
                f"stopped; see {log}",
            )
            return proc.wait()
        finally:
            if proc.poll() is None:  # timed out, or interrupted: stop it and what it started
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- processes a notebook leaves running -------------------------------------------------------
# A notebook may leave a server running for the learner (08's dashboard). It starts it with
# `start_background`, which records it under the state directory; the next run of the cell,
# `stop_background` and the end of a test session (`end_test_session`) find it there. A record
# holds the process's start time too, so a pid the system has since given to another process is
# never signalled.


def _background_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).state_dir / "course" / "background"


def _recorded(path: Path):
    """The live process a record names, or None (gone, or its pid now another process's)."""
    import psutil

    try:
        record = json.loads(path.read_text())
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["created"]) > 0.01:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            proc.wait(timeout=0)  # reap our own child
            return None
        return proc
    except (OSError, ValueError, KeyError, psutil.Error):
        return None


def start_background(
    name: str, args: list[str], log: str | Path, settings: Settings | None = None
) -> subprocess.Popen:
    """Start `args` in a process group of its own, its output in `log`, and record it as
    `name`; the process a previous call recorded under that name is stopped first."""
    import psutil

    stop_background(name, settings)
    folder = _background_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record = {"pid": proc.pid, "created": psutil.Process(proc.pid).create_time(), "args": args}
    (folder / f"{name}.json").write_text(json.dumps(record) + "\n")
    return proc


def stop_background(name: str, settings: Settings | None = None, timeout_s: float = 30) -> bool:
    """Stop the process group recorded as `name` (SIGTERM, then SIGKILL after `timeout_s`) and
    forget it. False if it was not running."""
    import psutil

    path = _background_dir(settings) / f"{name}.json"
    proc = _recorded(path)
    path.unlink(missing_ok=True)
    if proc is None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
    except psutil.NoSuchProcess:
        pass
    return True


def running_background(settings: Settings | None = None) -> dict[str, int]:
    """{name: pid} of the recorded processes still running."""
    folder = _background_dir(settings)
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        proc = _recorded(path)
        if proc is not None:
            found[path.stem] = proc.pid
    return found
