"""The course runs headless: notebooks and every solution, executed with papermill.

nbval (configured in pyproject.toml) already runs every notebook top to bottom and checks its
stored outputs; FAST mode only makes a few runs shorter. So CI runs with papermill what nbval
does not: every reference solution, each of which must pass its exercise checks, through
`clickstream course execute`'s own runner, which injects its parameters. So each notebook runs
once per CI run. Running the notebooks with papermill too takes another 10 minutes or more:
`make execute`, or CLICKSTREAM_COURSE_ONLY=all.

CLICKSTREAM_COURSE_ONLY=00,03 runs the notebooks and solutions with those prefixes instead (for
working on a few notebooks). A headless run sets the parameters in HEADLESS_PARAMETERS for the
notebooks that declare them (STOP_DASHBOARD: 08 leaves its dashboard running for a learner, not
for papermill), so it leaves nothing running behind it.

The other tests here cover the course helpers the notebooks use for long steps: `run_shown`
(a command's output line by line) and `start_background` (a server that outlives its cell).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from clickstream.course.notebook import running_background
from clickstream.course.runner import (
    CourseRun,
    NotebookRun,
    course_notebooks,
    execute_course,
    notebook_parameters,
)


@pytest.mark.notebooks
@pytest.mark.integration
@pytest.mark.spark
@pytest.mark.timeout(3600)
def test_every_solution_runs_with_papermill(tmp_path):
    chosen = os.environ.get("CLICKSTREAM_COURSE_ONLY", "")
    only = [p for p in chosen.split(",") if p] or None
    if only is None:
        only = [p.name for p in course_notebooks(include_solutions=True)]
        only = [n for n in only if n.endswith("_solutions.ipynb")]
    elif only == ["all"]:
        only = None
    expected = [p.name for p in course_notebooks(only, include_solutions=True)]
    assert expected, f"no notebooks match CLICKSTREAM_COURSE_ONLY={chosen}"
    solutions = [p.name for p in course_notebooks() if p.name.endswith("_solutions.ipynb")]
    assert chosen or set(expected) == set(solutions)
    assert any(name.endswith("_solutions.ipynb") for name in expected)

    out = tmp_path / "executed"
    before = running_background()  # what this session's notebooks left running (08's dashboard)
    result = execute_course(output_dir=out, fast=True, only=only, include_solutions=True)

    assert [r.source.name for r in result.runs] == expected
    assert result.ok, "\n" + result.table()
    for run in result.runs:
        executed = json.loads(run.output.read_text())
        params = [
            c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])
        ]
        assert params and "FAST = True" in "".join(params[0]["source"]), run.name
        if "STOP_DASHBOARD" in notebook_parameters(run.source):
            assert "STOP_DASHBOARD = True" in "".join(params[0]["source"]), run.name
    # What a notebook leaves running for a learner, a headless run stops (the end of the test
    # session would too, but later and silently).
    assert running_background() == before
    assert json.loads((out / "summary.json").read_text())["ok"] is True


def test_only_selects_by_prefix_and_keeps_course_order():
    all_paths = course_notebooks()
    chosen = course_notebooks(only=["01", "00"])
    assert chosen == [p for p in all_paths if p.name.startswith(("00", "01"))]
    assert [p.name for p in course_notebooks(only="00", include_solutions=False)] == [
        "00_setup_and_checks.ipynb"
    ]


def test_summary_table_names_failures_and_their_logs(tmp_path):
    ok = NotebookRun("00_a", tmp_path / "a", tmp_path / "a.out", tmp_path / "a.log", "ok", 1.5)
    bad = NotebookRun(
        "01_b", tmp_path / "b", tmp_path / "b.out", tmp_path / "b.log", "failed", 2.0, "cell 3: E"
    )
    run = CourseRun([ok, bad], tmp_path)
    table = run.table()
    assert not run.ok and run.failed == [bad]
    assert "01_b" in table and "failed" in table and "cell 3: E" in table and "b.log" in table
    assert "1/2 succeeded" in table


def test_run_shown_shows_each_line_as_it_comes_and_keeps_them_in_the_log(tmp_path):
    from clickstream.course import run_shown

    shown = []
    script = (
        "import time\nfor i in range(3):\n    print('batch', i, flush=True)\n"
        "    time.sleep(0.05)\nprint('WARNING: Using incubator modules')\nraise SystemExit(3)"
    )
    code = run_shown([sys.executable, "-c", script], tmp_path / "job.log", echo=shown.append)
    assert code == 3 and shown == ["batch 0", "batch 1", "batch 2"]  # the JVM's noise: log only
    assert (tmp_path / "job.log").read_text().splitlines() == [
        "batch 0",
        "batch 1",
        "batch 2",
        "WARNING: Using incubator modules",
    ]


def test_run_shown_says_it_is_still_running_and_stops_a_command_that_overruns(tmp_path):
    from clickstream.course import run_shown

    shown = []
    script = "import os, time; print(os.getpid(), flush=True); time.sleep(30)"
    with pytest.raises(TimeoutError, match="job2.log"):
        run_shown([sys.executable, "-c", script], tmp_path / "job2.log", 2.5, shown.append, 1)
    pid = int(shown[0])
    assert any("still running" in line for line in shown[1:]), shown
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_run_shown_stops_the_command_when_the_cell_is_interrupted(tmp_path):
    from clickstream.course import run_shown

    pids = []

    def interrupt(line: str) -> None:
        pids.append(int(line))
        raise KeyboardInterrupt

    script = "import os, time; print(os.getpid(), flush=True); time.sleep(30)"
    with pytest.raises(KeyboardInterrupt):
        run_shown([sys.executable, "-c", script], tmp_path / "job.log", echo=interrupt)
    assert not psutil.pid_exists(pids[0])


def test_a_background_process_is_recorded_replaced_and_stopped(tmp_path):
    from clickstream.config import Settings
    from clickstream.course.notebook import running_background, start_background, stop_background

    settings = Settings(state_dir=tmp_path)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    first = start_background("server", sleeper, tmp_path / "server.log", settings)
    assert running_background(settings) == {"server": first.pid}
    second = start_background("server", sleeper, tmp_path / "server.log", settings)
    assert first.poll() is not None, "a second start stops the first"
    assert running_background(settings) == {"server": second.pid}
    assert stop_background("server", settings) is True
    assert second.poll() is not None and running_background(settings) == {}
    assert stop_background("server", settings) is False


def test_a_record_whose_pid_now_belongs_to_another_process_is_left_alone(tmp_path):
    from clickstream.config import Settings
    from clickstream.course.notebook import running_background, stop_background

    settings = Settings(state_dir=tmp_path)
    folder = tmp_path / "course" / "background"
    folder.mkdir(parents=True)
    me = psutil.Process()
    record = {"pid": me.pid, "created": me.create_time() - 100, "args": ["gone"]}
    (folder / "old.json").write_text(json.dumps(record))
    assert running_background(settings) == {}
    assert stop_background("old", settings) is False  # and this test process is still here


def test_headless_runs_set_the_parameters_a_notebook_declares(tmp_path):
    from clickstream.course.runner import headless_parameters, notebook_parameters

    def notebook(source: str) -> Path:
        import nbformat

        nb = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]})],
            metadata={
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
            },
        )
        path = tmp_path / f"nb{len(list(tmp_path.iterdir()))}.ipynb"
        nbformat.write(nb, path)
        return path

    with_dashboard = notebook("FAST = False\nSTOP_DASHBOARD = False  # keep it up\n")
    without = notebook("FAST = False\n")
    assert notebook_parameters(with_dashboard) == {"FAST": False, "STOP_DASHBOARD": False}
    assert headless_parameters(with_dashboard, {"FAST": True}) == {
        "STOP_DASHBOARD": True,
        "FAST": True,
    }
    assert headless_parameters(without, {"FAST": True}) == {"FAST": True}
    assert headless_parameters(with_dashboard, {"STOP_DASHBOARD": False}) == {
        "STOP_DASHBOARD": False
    }
