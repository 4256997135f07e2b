"""Running the course outside JupyterLab: every notebook headless with papermill, and the
isolation of a test session.

`execute_course()` (and `clickstream course execute`, `make execute`) runs the notebooks in
order, then the exercise solutions, each in its own papermill process with a per-cell timeout,
and writes executed copies, one log per notebook and a summary table into `build/executed`.

`isolate_test_session` and `end_test_session` are what the test suites' conftests call, so
that the tests and the notebooks they run never touch a learner's broker or state.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from clickstream.config import get_settings
from clickstream.course.notebook import running_background, stop_background
from clickstream.errors import ClickstreamError

REPO_ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
SOLUTIONS_DIR = NOTEBOOKS_DIR / "solutions"
DEFAULT_OUTPUT_DIR = Path("build/executed")
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 600  # one cell; the longest (Spark start on a busy laptop) needs ~1 minute
NOTEBOOK_TIMEOUT_S = 1800  # a whole notebook, in case a kernel hangs outside any cell
# Given to the notebooks that declare them, so a headless run leaves nothing running behind it.
HEADLESS_PARAMETERS = {"STOP_DASHBOARD": True}


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


def _papermill_command(run: NotebookRun, params: dict, cell_timeout: int) -> list[str]:
    return [
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


def _execute_one(run: NotebookRun, params: dict, cell_timeout: int, notebook_timeout: int) -> None:
    run.output.parent.mkdir(parents=True, exist_ok=True)
    run.log.parent.mkdir(parents=True, exist_ok=True)
    # A separate process per notebook: a dead kernel cannot take the others with it, and the
    # kernel (so the JVMs it starts) inherits this process's stderr, i.e. the log file.
    cmd = _papermill_command(run, params, cell_timeout)
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


# -- test sessions -----------------------------------------------------------------------------
# pytest (tests/conftest.py, and notebooks/conftest.py when only notebooks are collected) calls
# these: a private state directory and broker port for the whole session, set in the
# environment before any notebook kernel or subprocess starts, so they inherit them and never
# touch a learner's broker. Whichever conftest runs first sets it up; the other sees it done.
SHORT_LIVED_JIT = "-XX:TieredStopAtLevel=1"  # C1 only: less warm-up for a JVM that soon ends


def isolate_test_session() -> None:
    """Point CLICKSTREAM_STATE_DIR at a fresh temporary directory and the broker at a free port.

    Under pytest-xdist (`make test` runs two workers) each worker is a session of its own: it
    inherits the controller's environment, so it sets up its own directory and port."""
    owner = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if os.environ.get("CLICKSTREAM_TEST_STATE_DIR") and (
        os.environ.get("CLICKSTREAM_TEST_OWNER", "main") == owner
    ):
        return
    from clickstream.local.broker import free_port

    state = Path(tempfile.mkdtemp(prefix="clickstream-tests-"))
    os.environ["CLICKSTREAM_TEST_STATE_DIR"] = str(state)
    os.environ["CLICKSTREAM_STATE_DIR"] = str(state)
    os.environ["CLICKSTREAM_KAFKA_PORT"] = str(free_port())
    os.environ["CLICKSTREAM_TEST_OWNER"] = owner
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
