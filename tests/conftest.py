"""Shared fixtures: one real broker and one real Spark session for the integration tests.

The broker runs on a free port with its own state directory, so the tests never touch a
learner's running broker; the jar cache is the normal one, so jars are fetched once.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from clickstream.broker import LocalBroker, free_port
from clickstream.config import get_settings

IN_CI = bool(os.environ.get("CI"))
# The CLI installed beside this interpreter (tests may run without the venv on PATH).
CLICKSTREAM = str(Path(sys.executable).with_name("clickstream"))


@pytest.fixture(scope="session")
def broker_settings(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    return get_settings(state_dir=state, port=free_port())


@pytest.fixture(scope="session")
def broker(broker_settings):
    """A real single-node KRaft broker for the whole session (or the one KAFKA_BOOTSTRAP_SERVERS names)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        settings = get_settings()
        yield LocalBroker(settings)
        return
    b = LocalBroker(broker_settings)
    b.up(echo=lambda m: None)
    yield b
    b.down(echo=lambda m: None)


@pytest.fixture(scope="session")
def bootstrap(broker) -> str:
    return broker.settings.bootstrap_servers


@pytest.fixture
def topic(bootstrap):
    """A fresh topic name per test (created by the test or by auto-creation)."""
    from clickstream.kafka_io import delete_topic

    name = f"test_{uuid.uuid4().hex[:10]}"
    yield name
    try:
        delete_topic(name, bootstrap)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own result
        pass


@pytest.fixture(scope="session")
def spark(broker_settings):
    from clickstream.spark import get_spark

    session = get_spark("clickstream-tests", settings=broker_settings)
    yield session
    session.stop()


def require_tool(name: str) -> str:
    """Path of an external tool; in CI a missing tool fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; .ci/run should install it")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path
