"""Every notebook imports its exercise checks from one module of `clickstream.course`, named
after the notebook, and every name a notebook or solution imports from `clickstream.course`
exists there: checked without running a notebook (nbval finds out only minutes later)."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def course_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from clickstream.course... import name` in the code cells."""
    found = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "clickstream.course"
            ):
                found += [(node.module, alias.name) for alias in node.names]
    return found


def with_solution(notebook: Path) -> list[Path]:
    return [notebook, NOTEBOOKS / "solutions" / notebook.name.replace(".ipynb", "_solutions.ipynb")]


@pytest.mark.parametrize("notebook", LESSONS, ids=lambda p: p.name[:2])
def test_every_name_imported_from_the_course_exists(notebook):
    missing = []
    for path in with_solution(notebook):
        for module, name in course_imports(path):
            if not hasattr(importlib.import_module(module), name):
                missing.append(f"{path.name}: {module}.{name}")
    assert not missing, f"imported but not defined: {missing}"


@pytest.mark.parametrize("notebook", LESSONS, ids=lambda p: p.name[:2])
def test_checks_come_from_the_notebooks_own_module(notebook):
    words = set(notebook.stem.split("_")[1:])
    sources = {
        module
        for path in with_solution(notebook)
        for module, name in course_imports(path)
        if name == "attempt" or name.startswith("check_")
    }
    assert len(sources) == 1, f"{notebook.name} imports its checks from {sorted(sources)}"
    module = sources.pop()
    assert set(module.rsplit(".", 1)[1].split("_")) <= words, (
        f"{notebook.name} imports its checks from {module}, which is not named after it"
    )
