"""Passwords never shown: store URLs in messages and the checkpoint, Kafka's SASL settings.

(The streaming job from the command line, against a Redis server with a password, is
tests/integration/test_secrets.py.)
"""

from __future__ import annotations

import pytest

from clickstream.ingest.security import KafkaSecurity
from clickstream.local.broker import free_port
from clickstream.process.stream import StreamConfig, explain_failure
from clickstream.redact import redact_text, redact_url, without_credentials
from clickstream.serve.store import StoreError, open_store


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw1234@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://alice:pw1234@cache:6379/2", "redis://alice:***@cache:6379/2"),
        ("rediss://:pw1234@cache.example:6380/0", "rediss://:***@cache.example:6380/0"),
        ("unix://:pw1234@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("postgresql://me:pw1234@db:5432/analytics", "postgresql://me:***@db:5432/analytics"),
        ("postgres://me:pw1234@db/analytics?schema=s", "postgres://me:***@db/analytics?schema=s"),
        # Secret query parameters, whatever their case, among others that stay readable.
        (
            "postgresql://me@db/analytics?sslmode=require&password=pw1234&schema=s",
            "postgresql://me@db/analytics?sslmode=require&password=***&schema=s",
        ),
        ("redis://cache:6379/0?Password=pw1234", "redis://cache:6379/0?Password=***"),
        ("postgresql://db/a?sslpassword=pw1234", "postgresql://db/a?sslpassword=***"),
        # Special characters, percent-encoded or not.
        ("postgresql://me:p%40ss%3Aw%2Frd@db/a", "postgresql://me:***@db/a"),
        ("redis://:p@ss:w!rd@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://:pa/ss?w#rd@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://:pw1234@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        # Not a URL urllib can read (an unclosed '['): nothing of it is shown.
        ("redis://:pw1234@[::1:6379/0", "redis://***"),
    ],
)
def test_redact_url_hides_the_password_of_every_scheme(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///serving.db",
        "sqlite:////var/lib/clickstream/serving.db",
        "redis://127.0.0.1:6379/0",
        "redis://cache:6379/0?socket_timeout=5",
        "postgresql://me@db:5432/analytics?schema=s",
        "postgresql://db/analytics?sslrootcert=/certs/a@b.pem",
    ],
)
def test_a_url_without_a_password_is_shown_as_given(url):
    assert redact_url(url) == url


def test_the_checkpoint_identity_of_a_store_ignores_the_login():
    one = "postgresql://me:first-pw@db:5432/analytics?schema=s&password=x"
    two = "postgresql://other:second-pw@db:5432/analytics?schema=s"
    assert (
        without_credentials(one)
        == without_credentials(two)
        == "postgresql://db:5432/analytics?schema=s"
    )
    assert without_credentials("redis://:first-pw@cache:6379/0") == "redis://cache:6379/0"
    # Another database, schema or server is another store.
    others = {
        without_credentials(u)
        for u in (
            one,
            "postgresql://me:pw@db:5432/other?schema=s",
            "postgresql://me:pw@db:5432/analytics?schema=t",
            "postgresql://me:pw@db2:5432/analytics?schema=s",
        )
    }
    assert len(others) == 4
    assert without_credentials("sqlite:////data/serving.db") == "sqlite:////data/serving.db"


def test_redact_text_hides_the_password_in_a_librarys_message():
    url = "postgresql://me:p%40ss-w0rd@db/a"
    message = f'bad token "p%40ss-w0rd" (p@ss-w0rd) in {url}'
    assert redact_text(message, url) == 'bad token "***" (***) in postgresql://me:***@db/a'


def test_store_errors_do_not_show_the_password():
    port = free_port()  # nothing listens there
    for url, expected in (
        (f"redis://:redis-secret-pw@127.0.0.1:{port}/0", "is not reachable"),
        (f"postgresql://me:pg-secret-pw@127.0.0.1:{port}/a", "Cannot connect to PostgreSQL"),
        # libpq quotes what it cannot parse: here, the password.
        (f"postgresql://me:50%zz-secret-pw@127.0.0.1:{port}/a", "invalid percent-encoded"),
    ):
        with pytest.raises(StoreError, match=expected) as caught:
            open_store(url)
        assert "secret-pw" not in str(caught.value)
        assert redact_url(url) in str(caught.value)


def test_the_stream_config_shows_and_keeps_no_password():
    def config(url: str) -> StreamConfig:
        return StreamConfig.create(topic="t", store_url=url, bootstrap_servers="b:1")

    first = config("redis://:first-pw@cache:6379/0")
    second = config("redis://:second-pw@cache:6379/0")
    assert first.identity() == second.identity()
    assert first.identity()["store_url"] == "redis://cache:6379/0"
    assert first.checkpoint == second.checkpoint != config("redis://cache:6379/1").checkpoint
    assert "first-pw" not in repr(first) and "redis://:***@cache:6379/0" in repr(first)
    failure = explain_failure(RuntimeError("lost redis://:first-pw@cache:6379/0"), first)
    assert "first-pw" not in str(failure)


def test_kafka_security_never_shows_the_sasl_password():
    settings = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username="analytics",
        password="sasl-secret-pw",
        cafile=None,
        certfile=None,
        keyfile=None,
    )
    for shown in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert "sasl-secret-pw" not in shown
        assert "password='***'" in shown and "username='analytics'" in shown
    # The clients still get it.
    assert settings.kafka_python()["sasl_plain_password"] == "sasl-secret-pw"
    assert 'password="sasl-secret-pw"' in settings.spark_options()["kafka.sasl.jaas.config"]
    plain = KafkaSecurity(
        protocol="PLAINTEXT",
        sasl_mechanism=None,
        username=None,
        password=None,
        cafile=None,
        certfile=None,
        keyfile=None,
    )
    assert "password=None" in repr(plain)
