"""Shared fixtures: one real broker and one real Spark session for the integration tests.

At start-up the session points CLICKSTREAM_STATE_DIR at a temporary directory and
CLICKSTREAM_KAFKA_PORT at a free port, so the tests (and the notebook kernels nbval starts,
which inherit the environment) share one broker of their own and never touch a learner's.
The jar cache is the normal one, so jars are fetched once. Set KAFKA_BOOTSTRAP_SERVERS to run
everything against an existing cluster instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clickstream.config import get_settings
from clickstream.course.runner import end_test_session, isolate_test_session
from clickstream.local.broker import LocalBroker, free_port
from clickstream.processes import WaitTimeout, wait_until

IN_CI = bool(os.environ.get("CI"))
# The CLI installed beside this interpreter (tests may run without the venv on PATH).
CLICKSTREAM = str(Path(sys.executable).with_name("clickstream"))


def pytest_configure(config):
    isolate_test_session()


def pytest_unconfigure(config):
    end_test_session()


@pytest.fixture(scope="session")
def broker_settings():
    return get_settings()


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
    from clickstream.ingest.kafka_io import delete_topic

    name = f"test_{uuid.uuid4().hex[:10]}"
    yield name
    try:
        delete_topic(name, bootstrap)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own result
        pass


@pytest.fixture(scope="session")
def spark(broker_settings):
    from clickstream.course.runner import SHORT_LIVED_JIT
    from clickstream.process.spark import get_spark

    # This session lives for the whole run: unlike the short-lived JVMs, it gains from the
    # optimising compiler (see clickstream.course.runner.isolate_test_session).
    options = os.environ.get("CLICKSTREAM_JAVA_OPTIONS", "")
    kept = [o for o in shlex.split(options) if o != SHORT_LIVED_JIT]
    os.environ["CLICKSTREAM_JAVA_OPTIONS"] = shlex.join(kept)
    try:
        session = get_spark("clickstream-tests", settings=broker_settings)
    finally:
        os.environ["CLICKSTREAM_JAVA_OPTIONS"] = options
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


def start_redis(workdir, password: str | None = None) -> tuple[subprocess.Popen, int]:
    """A real redis-server on a free port of 127.0.0.1, without persistence (and wanting
    `password` if given), answering pings: (process, port). Stop it with terminate()."""
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [require_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        + (["--requirepass", password] if password else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port, password=password)
    try:
        wait_until(
            client.ping,
            10,
            "redis-server to answer",
            interval_s=0.1,
            retry_on=(redis.exceptions.ConnectionError,),
        )
    except WaitTimeout as exc:
        proc.kill()
        pytest.fail(str(exc))
    return proc, port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free port for the session (no persistence)."""
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server (initdb into a temporary directory) for the session.

    Fails when PostgreSQL is not installed (apt-get install postgresql), unless
    CLICKSTREAM_SKIP_POSTGRES=1 says to skip the tests that need it.
    """
    from tests.postgres_server import PostgresMissing, start_server

    try:
        server = start_server(free_port())
    except PostgresMissing as exc:
        if os.environ.get("CLICKSTREAM_SKIP_POSTGRES") == "1":
            pytest.skip(f"CLICKSTREAM_SKIP_POSTGRES=1: {exc}")
        pytest.fail(str(exc))
    yield server.url
    server.stop()


@pytest.fixture
def postgres_store_url(postgres_url):
    """A PostgreSQL store URL of its own (a fresh schema), dropped afterwards."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_url}?schema={schema}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request, tmp_path):
    """Each serving-store backend in turn: a fresh SQLite file, a flushed Redis database, a
    fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.db'}"
    if request.param == "postgres":
        return request.getfixturevalue("postgres_store_url")
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushdb()
    return url


def require_class_archive(archive: Path) -> None:
    """Skip without the class archive `clickstream setup` records; in CI, fail instead."""
    if not archive.is_file():
        if IN_CI:
            pytest.fail(f"`clickstream setup` (run by `make test`) recorded no {archive}")
        pytest.skip("no class archive yet: run `clickstream setup`")


def assert_loaded_from_archive(java: str, archive: Path, classpath: str, main_class: str) -> None:
    """The archive fits this Java and class path: with -Xshare:on, a JVM that cannot map it
    refuses to start instead of going on without it; asked to log class loading, it says where
    `main_class` came from."""
    import subprocess

    out = subprocess.run(
        [java, "-Xshare:on", f"-XX:SharedArchiveFile={archive}", "-Xlog:class+load=info"]
        + ["-cp", classpath, main_class],
        capture_output=True,
        text=True,
        timeout=120,
    )
    loaded = [line for line in out.stdout.splitlines() if f"{main_class} " in line]
    assert loaded and "shared objects file (top)" in loaded[0], out.stdout[-2000:] + out.stderr
