"""A solution can be pasted back into its notebook: every name a reference solution's exercise
function reads is defined in the notebook before that exercise (an import, an assignment, a
function), so the solutions share the notebooks' names and data."""

from __future__ import annotations

import ast
import builtins
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("*_solutions.ipynb"))


def code_of(cell: dict) -> str:
    """A code cell's Python, without IPython's magics and shell escapes."""
    lines = "".join(cell["source"]).splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def defined_names(tree: ast.AST) -> set[str]:
    """Names a cell binds at module level: imports, assignments, functions, classes, loops."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def free_names(function: ast.FunctionDef) -> set[str]:
    """Names a function reads that it does not bind itself (nor its nested functions)."""
    bound = {a.arg for a in ast.walk(function) if isinstance(a, ast.arg)}  # nested ones too
    bound |= defined_names(ast.Module(body=function.body, type_ignores=[]))
    read = {
        n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    return read - bound - set(dir(builtins))


def exercises(path: Path) -> dict[str, tuple[ast.FunctionDef, set[str]]]:
    """Each `exercise_N` function, with the names its own cell defines (pasted with it)."""
    found = {}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            tree = ast.parse(code_of(cell))
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name.startswith("exercise_"):
                    found[node.name] = (node, defined_names(tree))
    return found


def names_before(path: Path, exercise: str) -> set[str]:
    """Names the notebook defines up to (and including) the cell that defines `exercise`."""
    names: set[str] = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(code_of(cell))
        names |= defined_names(tree)
        if any(isinstance(n, ast.FunctionDef) and n.name == exercise for n in tree.body):
            return names
    raise AssertionError(f"{path.name} has no {exercise}")


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name[:2])
def test_solutions_paste_back_into_their_notebook(solution):
    notebook = NOTEBOOKS / solution.name.replace("_solutions.ipynb", ".ipynb")
    assert notebook.exists(), f"{solution.name} has no notebook {notebook.name}"
    theirs, ours = exercises(notebook), exercises(solution)
    extra = [n for n in set(ours) - set(theirs) if not n.startswith(tuple(f"{t}_" for t in theirs))]
    assert set(theirs) <= set(ours) and not extra, (
        f"exercises: notebook {sorted(theirs)}, solution {sorted(ours)} (a solution may add "
        "alternatives named after the exercise, such as exercise_1_by_hash)"
    )
    problems = []
    for name, (function, its_cell) in sorted(ours.items()):
        base = next(t for t in theirs if name == t or name.startswith(f"{t}_"))
        missing = free_names(function) - its_cell - names_before(notebook, base)
        if missing:
            problems.append(
                f"{name} reads {sorted(missing)}, which {notebook.name} does not define"
            )
    assert not problems, "; ".join(problems)
