"""Course tooling: run every notebook headless with papermill, and small helpers notebooks share.

`execute_course()` (and `clickstream course execute`, `make execute`) runs the notebooks in
order, then the exercise solutions, each in its own papermill process with a per-cell timeout,
and writes executed copies, one log per notebook and a summary table into `build/executed`.

The helpers (`ensure_broker`, `reset_topics`, `reset_groups`, `reset_dir`, `jvm_output_to`,
`run_shown`, `start_background`) are what lets every notebook run alone or in order, rerun
deterministically, keep the JVM's console output out of its cells, show the progress of a long
command and leave a server running without losing track of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError
from clickstream.processes import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SOLUTIONS_DIR = NOTEBOOKS_DIR / "solutions"
DEFAULT_OUTPUT_DIR = Path("build/executed")
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 600  # one cell; the longest (Spark start on a busy laptop) needs ~1 minute
NOTEBOOK_TIMEOUT_S = 1800  # a whole notebook, in case a kernel hangs outside any cell
JVM_LOG_MAX_BYTES = 20_000_000
# Given to the notebooks that declare them, so a headless run leaves nothing running behind it.
HEADLESS_PARAMETERS = {"STOP_DASHBOARD": True}


# --- running the course headless ---------------------------------------------------------


@dataclass
class NotebookRun:
    """How one notebook went."""

    name: str
    source: Path
    output: Path
    log: Path
    status: str = "pending"  # ok | failed | timeout
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CourseRun:
    """The result of `execute_course`: one row per notebook, in the order they ran."""

    runs: list[NotebookRun] = field(default_factory=list)
    output_dir: Path = DEFAULT_OUTPUT_DIR

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def failed(self) -> list[NotebookRun]:
        return [r for r in self.runs if not r.ok]

    def table(self) -> str:
        """A plain-text summary: notebook, status, duration, and the error if any."""
        width = max([len("notebook"), *(len(r.name) for r in self.runs)])
        lines = [f"{'notebook':<{width}}  {'status':<7}  {'seconds':>7}", "-" * (width + 18)]
        for r in self.runs:
            lines.append(f"{r.name:<{width}}  {r.status:<7}  {r.seconds:>7.1f}")
            if r.error:
                lines.append(f"{'':<{width}}    {r.error}")
                lines.append(f"{'':<{width}}    log: {r.log}")
        total = sum(r.seconds for r in self.runs)
        good = sum(r.ok for r in self.runs)
        lines.append("-" * (width + 18))
        lines.append(f"{good}/{len(self.runs)} succeeded in {total:.1f} s")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "notebooks": [
                {
                    "name": r.name,
                    "status": r.status,
                    "seconds": round(r.seconds, 1),
                    "output": str(r.output),
                    "log": str(r.log),
                    "error": r.error,
                }
                for r in self.runs
            ],
        }


def course_notebooks(
    only: Iterable[str] | str | None = None, include_solutions: bool = True
) -> list[Path]:
    """The notebooks in course order (NN_*.ipynb), then their solutions.

    `only` keeps the notebooks whose name starts with one of the given prefixes ("01", "03_st").
    """
    paths = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if include_solutions:
        paths += sorted(SOLUTIONS_DIR.glob("[0-9][0-9]_*_solutions.ipynb"))
    if only:
        prefixes = [only] if isinstance(only, str) else list(only)
        paths = [p for p in paths if any(p.name.startswith(x) for x in prefixes)]
    return paths


def execute_course(
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    fast: bool = True,
    only: Iterable[str] | str | None = None,
    include_solutions: bool = True,
    parameters: dict | None = None,
    cell_timeout: int = CELL_TIMEOUT_S,
    notebook_timeout: int = NOTEBOOK_TIMEOUT_S,
    echo: Callable[[str], object] = print,
) -> CourseRun:
    """Run the notebooks in order (then the solutions) with papermill; print and return a summary.

    A failing notebook does not stop the others; `CourseRun.ok` is False if any failed.
    `parameters` are passed to every notebook (FAST is set from `fast`); the notebooks that
    declare a parameter of HEADLESS_PARAMETERS get its value unless `parameters` has one.
    """
    output_dir = Path(output_dir)
    notebooks = course_notebooks(only, include_solutions)
    if not notebooks:
        raise ClickstreamError(
            f"No notebooks matched {only!r} in {NOTEBOOKS_DIR}: names look like "
            "00_setup_and_checks.ipynb; pass a prefix such as 00 or 03_structured."
        )
    params = {**(parameters or {}), "FAST": bool(fast)}
    result = CourseRun(output_dir=output_dir)
    mode = "fast" if fast else "full"
    echo(
        f"Executing {len(notebooks)} notebooks ({mode} mode, kernel {KERNEL_NAME}, "
        f"{cell_timeout} s per cell) into {output_dir}/"
    )
    for index, source in enumerate(notebooks, 1):
        relative = source.relative_to(NOTEBOOKS_DIR)
        run = NotebookRun(
            name=str(relative.with_suffix("")),
            source=source,
            output=output_dir / relative,
            log=output_dir / "logs" / relative.with_suffix(".log").name,
        )
        echo(f"[{index}/{len(notebooks)}] {run.name} ...")
        _execute_one(run, headless_parameters(source, params), cell_timeout, notebook_timeout)
        result.runs.append(run)
        echo(f"[{index}/{len(notebooks)}] {run.name}: {run.status} ({run.seconds:.1f} s)")
        if run.error:
            echo(f"    {run.error}\n    log: {run.log}")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    echo("")
    echo(result.table())
    return result


def notebook_parameters(path: str | Path) -> dict[str, object]:
    """The names and values the notebook's cell tagged `parameters` assigns (plain values), as
    papermill reads them."""
    import ast

    import papermill

    found = {}
    for name, parameter in papermill.inspect_notebook(str(path)).items():
        with contextlib.suppress(ValueError, SyntaxError):
            found[name] = ast.literal_eval(parameter["default"])
    return found


def headless_parameters(path: str | Path, parameters: dict) -> dict:
    """`parameters`, plus the HEADLESS_PARAMETERS the notebook at `path` declares."""
    declared = notebook_parameters(path)
    extra = {k: v for k, v in HEADLESS_PARAMETERS.items() if k in declared}
    return {**extra, **parameters}


def _execute_one(run: NotebookRun, params: dict, cell_timeout: int, notebook_timeout: int) -> None:
    run.output.parent.mkdir(parents=True, exist_ok=True)
    run.log.parent.mkdir(parents=True, exist_ok=True)
    # A separate process per notebook: a dead kernel cannot take the others with it, and the
    # kernel (so the JVMs it starts) inherits this process's stderr, i.e. the log file.
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(run.source),
        str(run.output),
        "--kernel",
        KERNEL_NAME,
        "--cwd",
        str(run.source.parent),
        "--execution-timeout",
        str(cell_timeout),
        "--no-progress-bar",
        "--log-level",
        "WARNING",
        "--parameters_yaml",
        json.dumps(params),  # JSON is YAML
    ]
    started = time.monotonic()
    with run.log.open("w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=notebook_timeout,
                check=False,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    run.seconds = time.monotonic() - started
    if code == 0:
        run.status = "ok"
        return
    run.status = "timeout" if code is None else "failed"
    run.error = _first_error(run.output) or (
        f"the notebook did not finish within {notebook_timeout} s"
        if code is None
        else f"papermill exited with code {code}"
    )


def _first_error(executed: Path) -> str | None:
    """'In [N]: Ename: message' for the first cell that raised, from the executed notebook."""
    try:
        nb = json.loads(executed.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                lines = str(out.get("evalue", "")).strip().splitlines()
                first = lines[0][:200] if lines else ""
                return f"In [{cell.get('execution_count')}]: {out.get('ename')}: {first}"
    return None


# --- helpers the notebooks share ---------------------------------------------------------


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
    import queue
    import threading

    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    lines: queue.Queue[str | None] = queue.Queue()
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

        def read() -> None:
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        # The reader is a thread so that this one (the cell's) can print heartbeats while the
        # command is silent: output printed from another thread may land in the wrong cell.
        threading.Thread(target=read, daemon=True).start()
        last_shown = started
        try:
            while True:
                waited = time.monotonic() - started
                if waited > timeout_s:
                    raise TimeoutError(
                        f"{Path(args[0]).name} did not finish within {timeout_s:.0f} s and was "
                        f"stopped; see {log}"
                    )
                try:
                    line = lines.get(timeout=min(1.0, max(0.0, timeout_s - waited)))
                except queue.Empty:
                    quiet = time.monotonic() - last_shown
                    if heartbeat_s is not None and quiet >= heartbeat_s:
                        echo(f"  ... still running ({time.monotonic() - started:.0f} s)")
                        last_shown = time.monotonic()
                    continue
                if line is None:
                    break
                out.write(line)
                out.flush()
                if hide is None or not hide.search(line):
                    echo(line.rstrip("\n"))
                    last_shown = time.monotonic()
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


# -- test sessions -----------------------------------------------------------------------------
# pytest (tests/conftest.py, and notebooks/conftest.py when only notebooks are collected) calls
# these: a private state directory and broker port for the whole session, set in the
# environment before any notebook kernel or subprocess starts, so they inherit them and never
# touch a learner's broker. Whichever conftest runs first sets it up; the other sees it done.
SHORT_LIVED_JIT = "-XX:TieredStopAtLevel=1"  # C1 only: less warm-up for a JVM that soon ends


def isolate_test_session() -> None:
    """Point CLICKSTREAM_STATE_DIR at a fresh temporary directory and the broker at a free port."""
    if os.environ.get("CLICKSTREAM_TEST_STATE_DIR"):
        return
    from clickstream.local.broker import free_port

    state = Path(tempfile.mkdtemp(prefix="clickstream-tests-"))
    os.environ["CLICKSTREAM_TEST_STATE_DIR"] = str(state)
    os.environ["CLICKSTREAM_STATE_DIR"] = str(state)
    os.environ["CLICKSTREAM_KAFKA_PORT"] = str(free_port())
    # A test session starts dozens of short-lived JVMs (jobs, brokers, the notebooks' Spark) on
    # a small machine: the quick C1 compiler alone spends less CPU warming each of them up than
    # C1 followed by the optimising C2. The tests' shared Spark session, which lives for the
    # whole run, leaves it out (tests/conftest.py).
    options = os.environ.get("CLICKSTREAM_JAVA_OPTIONS", "")
    if SHORT_LIVED_JIT not in shlex.split(options):
        os.environ["CLICKSTREAM_JAVA_OPTIONS"] = f"{options} {SHORT_LIVED_JIT}".strip()


def end_test_session() -> None:
    """Stop the session's private broker, whatever started it (a fixture or a notebook), and
    the processes its notebooks left running (nbval runs 08 as a learner does: its dashboard
    stays up)."""
    test_dir = os.environ.get("CLICKSTREAM_TEST_STATE_DIR")
    if not test_dir or os.environ.get("CLICKSTREAM_STATE_DIR") != test_dir:
        return  # never stop what this session did not start
    for name in running_background():
        stop_background(name)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return  # the broker is someone else's
    from clickstream.local.broker import LocalBroker

    LocalBroker(get_settings()).down(echo=lambda message: None)
