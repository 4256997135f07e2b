"""The course runs headless: notebooks and every solution, executed with papermill.

nbval (configured in pyproject.toml) already runs every notebook top to bottom and checks its
stored outputs; FAST mode only makes a few runs shorter. So CI runs with papermill what nbval
does not: every reference solution (each must pass its exercise checks) and the first notebook,
which proves that `clickstream course execute` injects its parameters. Running them all takes
another 10 minutes or more: `make execute`, or CLICKSTREAM_COURSE_ONLY=all.

CLICKSTREAM_COURSE_ONLY=00,03 runs the notebooks and solutions with those prefixes instead (for
working on a few notebooks).
"""

from __future__ import annotations

import json
import os

import pytest

from clickstream.course import CourseRun, NotebookRun, course_notebooks, execute_course


@pytest.mark.notebooks
@pytest.mark.integration
@pytest.mark.spark
@pytest.mark.timeout(3600)
def test_the_solutions_and_the_first_notebook_run_with_papermill(tmp_path):
    chosen = os.environ.get("CLICKSTREAM_COURSE_ONLY", "")
    only = [p for p in chosen.split(",") if p] or None
    if only is None:
        only = [p.name for p in course_notebooks(include_solutions=True)]
        only = [n for n in only if n.startswith("00_") or n.endswith("_solutions.ipynb")]
    elif only == ["all"]:
        only = None
    expected = [p.name for p in course_notebooks(only, include_solutions=True)]
    assert expected, f"no notebooks match CLICKSTREAM_COURSE_ONLY={chosen}"
    solutions = [p.name for p in course_notebooks() if p.name.endswith("_solutions.ipynb")]
    assert chosen or ("00_setup_and_checks.ipynb" in expected and set(solutions) <= set(expected))
    assert any(name.endswith("_solutions.ipynb") for name in expected)

    out = tmp_path / "executed"
    result = execute_course(output_dir=out, fast=True, only=only, include_solutions=True)

    assert [r.source.name for r in result.runs] == expected
    assert result.ok, "\n" + result.table()
    for run in result.runs:
        executed = json.loads(run.output.read_text())
        params = [
            c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])
        ]
        assert params and "FAST = True" in "".join(params[0]["source"]), run.name
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
