"""pytest configuration for the notebooks (run by nbval: `pytest --nbval notebooks/...`).

- The same isolation as tests/conftest.py (`clickstream.course.runner.isolate_test_session`), for
  when only notebooks are collected: a temporary state directory and a free port for the
  broker, set in the environment before any kernel starts, so kernels inherit them and the
  notebooks' `LocalBroker().up()` starts this session's private broker, never a learner's.
- Plotly figures and widget state are left out of the comparison: each chart in the
  notebooks prints a text summary next to it, and that is checked instead.
- The sanitize file given in pyproject.toml is found from any working directory.
- The solutions are not collected by a plain `pytest` (CI executes each of them with papermill,
  where a wrong answer raises); name them to check their stored outputs too:
  `pytest notebooks/solutions/` or `pytest notebooks/solutions/01_kafka_fundamentals_solutions.ipynb`.
"""

from __future__ import annotations

from pathlib import Path

from clickstream.course.runner import end_test_session, isolate_test_session

SOLUTIONS = Path(__file__).resolve().parent / "solutions"
SKIP_COMPARE = (
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
)


def pytest_configure(config):
    isolate_test_session()
    sanitize = getattr(config.option, "nbval_sanitize_with", None)
    if sanitize and not Path(sanitize).is_absolute() and not Path(sanitize).exists():
        candidate = Path(str(config.rootpath)) / sanitize
        if candidate.exists():
            config.option.nbval_sanitize_with = str(candidate)


def pytest_unconfigure(config):
    end_test_session()


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix != ".ipynb" or SOLUTIONS not in collection_path.parents:
        return None
    for arg in config.args:
        asked = Path(arg.split("::")[0]).resolve()
        if asked == SOLUTIONS or SOLUTIONS in asked.parents:
            return None  # named on the command line: check them
    return True


def pytest_collectstart(collector):
    if getattr(collector, "path", None) is not None and collector.path.suffix == ".ipynb":
        if hasattr(collector, "skip_compare"):
            collector.skip_compare = tuple(collector.skip_compare) + SKIP_COMPARE
