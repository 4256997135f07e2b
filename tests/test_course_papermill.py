"""The course runs headless: every notebook, then every solution, executed with papermill.

This is how CI proves that each notebook runs top to bottom with its parameters injected (fast
mode) and that every reference solution passes its exercise checks. nbval (configured in
pyproject.toml) separately checks the stored outputs of the same notebooks.

CLICKSTREAM_COURSE_ONLY=00,03 limits the papermill run to notebooks with those prefixes (for
working on a few notebooks); CI leaves it unset and runs them all.
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
def test_every_notebook_and_solution_runs_with_papermill(tmp_path):
    only = [p for p in os.environ.get("CLICKSTREAM_COURSE_ONLY", "").split(",") if p] or None
    expected = [p.name for p in course_notebooks(only, include_solutions=True)]
    assert expected, f"no notebooks match CLICKSTREAM_COURSE_ONLY={only}"
    assert only or "00_setup_and_checks.ipynb" in expected
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
