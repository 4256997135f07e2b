"""pytest configuration for the notebooks (run by nbval: `pytest --nbval notebooks/...`).

- The same isolation as tests/conftest.py (`clickstream.course.isolate_test_session`), for
  when only notebooks are collected: a temporary state directory and a free port for the
  broker, set in the environment before any kernel starts, so kernels inherit them and the
  notebooks' `LocalBroker().up()` starts this session's private broker, never a learner's.
- Plotly figures and widget state are left out of the comparison: each chart in the
  notebooks prints a text summary next to it, and that is checked instead.
- The sanitize file given in pyproject.toml is found from any working directory.
"""

from __future__ import annotations

from pathlib import Path

from clickstream.course import end_test_session, isolate_test_session

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


def pytest_collectstart(collector):
    if getattr(collector, "path", None) is not None and collector.path.suffix == ".ipynb":
        if hasattr(collector, "skip_compare"):
            collector.skip_compare = tuple(collector.skip_compare) + SKIP_COMPARE
