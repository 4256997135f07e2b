"""`clickstream stream` into a Redis server that wants a password: the password is never printed
nor written to the checkpoint, and a new password keeps the checkpoint (no `--reset`).

(How URLs and Kafka's SASL settings are masked, case by case: tests/unit/test_secrets.py.)
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from clickstream.ingest.kafka_io import ensure_topic, send_all
from clickstream.local.broker import free_port
from clickstream.serve.store import StoreError, open_store
from clickstream.source.simulator import SimConfig
from tests.conftest import CLICKSTREAM, start_redis
from tests.stream_truth import Params, build_stream, diff, expected_store, store_rows

PARAMS = Params()


def new_password() -> str:
    # Characters a URL must percent-encode, so both spellings are looked for.
    return f"{secrets.token_urlsafe(12)}@:/?#!"


def spellings(password: str) -> list[str]:
    return [password, quote(password, safe=""), password[:12]]


def store_url(port: int, password: str) -> str:
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


@pytest.fixture
def redis_with_password(tmp_path):
    """A redis-server of its own that wants a random password: (port, password)."""
    password = new_password()
    proc, port = start_redis(tmp_path, password)
    yield port, password
    proc.terminate()
    proc.wait(timeout=10)


def files_holding(directory: Path, texts: list[str]) -> list[str]:
    """Files under `directory` (Spark's logs and state, the job's own) containing any of texts."""
    wanted = [t.encode() for t in texts]
    return [
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and any(w in path.read_bytes() for w in wanted)
    ]


@pytest.mark.integration
@pytest.mark.spark
def test_the_store_password_is_never_shown_and_can_change(
    bootstrap, topic, redis_with_password, tmp_path
):
    port, first = redis_with_password
    records = build_stream(SimConfig(seed=7, count=300, rate=12.0))
    half = len(records) // 2
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    checkpoint = tmp_path / "ckpt"

    def stream(password: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CLICKSTREAM, "stream", "--available-now", "--bootstrap-servers", bootstrap]
            + ["--topic", topic, "--store", store_url(port, password)]
            + ["--checkpoint", str(checkpoint), "--max-offsets-per-trigger", "100"]
            + ["--alerts-topic", "", "--quarantine-topic", "", *PARAMS.cli_args()],
            capture_output=True,
            text=True,
            timeout=300,
        )

    send_all(records[:half], topic, bootstrap)
    one = stream(first)
    assert one.returncode == 0, one.stdout + one.stderr
    saved = (checkpoint / "job.json").read_text()
    assert f"redis://127.0.0.1:{port}/0" in saved
    assert files_holding(checkpoint, spellings(first)) == []

    # A new password: the same store, so the same checkpoint, and the job goes on from it.
    second = new_password()
    redis.Redis(port=port, password=first).config_set("requirepass", second)
    send_all(records[half:], topic, bootstrap)
    two = stream(second)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "--reset" not in two.stderr
    with open_store(store_url(port, second)) as store:
        assert store.counters()["records"] == len(records)
        got = store_rows(store)
    want = expected_store(records, PARAMS).rows
    assert got == want, diff(got, want)
    assert files_holding(checkpoint, spellings(first) + spellings(second)) == []

    # Store errors name the server, never the password: a wrong one, none, or no server.
    for url, cause in (
        (store_url(port, first), "refused the login"),
        (f"redis://127.0.0.1:{port}/0", "refused the login"),
        (store_url(free_port(), second), "not reachable"),
    ):
        with pytest.raises(StoreError, match=cause) as caught:
            open_store(url)
        for text in spellings(first) + spellings(second):
            assert text not in str(caught.value)

    for run in (one, two):
        for text in spellings(first) + spellings(second):
            assert text not in run.stdout + run.stderr, "a password was printed"
