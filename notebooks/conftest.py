"""pytest configuration for the notebooks (run by nbval: `pytest --nbval notebooks/...`).

- The same isolation as tests/conftest.py, for when only notebooks are collected (then
  tests/conftest.py is not loaded): a temporary state directory and a free port for the
  broker, set in the environment before any kernel starts, so kernels inherit them and the
  notebooks' `LocalBroker().up()` starts this session's private broker, never a learner's.
  Whichever conftest runs first sets them up; the other sees CLICKSTREAM_TEST_STATE_DIR.
- Plotly figures and widget state are left out of the comparison: each chart in the
  notebooks prints a text summary next to it, and that is checked instead.
- The sanitize file given in pyproject.toml is found from any working directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SKIP_COMPARE = (
    "application/vnd.plotly.v1+json",
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
)


def pytest_configure(config):
    if not os.environ.get("CLICKSTREAM_TEST_STATE_DIR"):
        from clickstream.broker import free_port

        state = Path(tempfile.mkdtemp(prefix="clickstream-tests-"))
        os.environ["CLICKSTREAM_TEST_STATE_DIR"] = str(state)
        os.environ["CLICKSTREAM_STATE_DIR"] = str(state)
        os.environ["CLICKSTREAM_KAFKA_PORT"] = str(free_port())
    sanitize = getattr(config.option, "nbval_sanitize_with", None)
    if sanitize and not Path(sanitize).is_absolute() and not Path(sanitize).exists():
        candidate = Path(str(config.rootpath)) / sanitize
        if candidate.exists():
            config.option.nbval_sanitize_with = str(candidate)


def pytest_unconfigure(config):
    isolated = os.environ.get("CLICKSTREAM_STATE_DIR") == os.environ.get("CLICKSTREAM_TEST_STATE_DIR")
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or not isolated:
        return  # never stop a broker this session did not own
    from clickstream.broker import LocalBroker
    from clickstream.config import get_settings

    # Whatever started the session's broker (a notebook or a fixture), stop it.
    LocalBroker(get_settings()).down(echo=lambda message: None)


def pytest_collectstart(collector):
    if getattr(collector, "path", None) is not None and collector.path.suffix == ".ipynb":
        if hasattr(collector, "skip_compare"):
            collector.skip_compare = tuple(collector.skip_compare) + SKIP_COMPARE
