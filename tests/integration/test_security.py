"""TLS and SASL against a real broker: a self-signed certificate made by the test, kafka-python
and Spark both connect with the settings from one place, and clients without them are refused."""

from __future__ import annotations

import subprocess

import pytest
from kafka.errors import KafkaError
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException

from clickstream.config import get_settings
from clickstream.errors import BrokerNotReachable
from clickstream.ingest.kafka_io import admin_client, ensure_topic, read_all, send_all
from clickstream.ingest.security import KafkaSecurity, SecurityConfigError, combined_pem
from clickstream.local.broker import LocalBroker, free_port
from tests.conftest import CLICKSTREAM

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-secret", "admin": "admin-secret"}


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "broker.key", d / "broker.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    ssl_port, sasl_port = free_port(), free_port()
    plain_users = " ".join(f'user_{u}="{p}"' for u, p in USERS.items())
    broker = LocalBroker(
        get_settings(state_dir=d / "state", port=free_port()),
        listeners={"SSL": (ssl_port, "SSL"), "SASL_SSL": (sasl_port, "SASL_SSL")},
        properties={
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(combined_pem(str(cert), str(key))),
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="admin-secret" {plain_users};',
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        },
        format_args=["--add-scram", "SCRAM-SHA-256=[name=alice,password=alice-secret]"],
    )
    broker.up(echo=lambda m: None)
    yield {
        "broker": broker,
        "ca": str(cert),
        "ssl": f"127.0.0.1:{ssl_port}",
        "sasl": f"127.0.0.1:{sasl_port}",
    }
    broker.down(echo=lambda m: None)


def use(monkeypatch, **env):
    for name in (
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SSL_CAFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def round_trip(bootstrap: str, topic: str, n: int = 50) -> list[bytes]:
    ensure_topic(topic, partitions=1, bootstrap=bootstrap)
    values = [b"secure-%d" % i for i in range(n)]
    send_all([(b"k", v) for v in values], topic, bootstrap)
    return [m.value for m in read_all(topic, bootstrap, timeout_s=20)]


def test_tls_client_connects_and_plain_client_is_refused(tls_broker, monkeypatch):
    use(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=tls_broker["ca"])
    assert round_trip(tls_broker["ssl"], "tls_topic") == [b"secure-%d" % i for i in range(50)]
    use(monkeypatch)  # no TLS settings: the TLS listener does not speak to it
    with pytest.raises(BrokerNotReachable), admin_client(tls_broker["ssl"]) as admin:
        admin.list_topics()
    # Without the CA, the self-signed certificate is not trusted.
    use(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL")
    with pytest.raises(BrokerNotReachable), admin_client(tls_broker["ssl"]) as admin:
        admin.list_topics()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_over_tls(tls_broker, monkeypatch, mechanism):
    use(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="alice",
        KAFKA_SASL_PASSWORD="alice-secret",
        KAFKA_SSL_CAFILE=tls_broker["ca"],
    )
    topic = f"sasl_{mechanism.lower().replace('-', '_')}"
    assert len(round_trip(tls_broker["sasl"], topic)) == 50
    # `clickstream consume` reads with the same settings, from the environment.
    out = subprocess.run(
        [CLICKSTREAM, "consume", "--topic", topic, "--bootstrap-servers", tls_broker["sasl"]]
        + ["--from-beginning", "--raw", "--max", "50", "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"secure-{i}" for i in range(50)]
    use(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="alice",
        KAFKA_SASL_PASSWORD="wrong",
        KAFKA_SSL_CAFILE=tls_broker["ca"],
    )
    with (
        pytest.raises((KafkaError, BrokerNotReachable)) as err,
        admin_client(tls_broker["sasl"]) as admin,
    ):
        admin.list_topics()
    text = f"{type(err.value).__name__} {err.value}".lower()
    assert "auth" in text or "no kafka broker answered" in text


@pytest.mark.spark
def test_spark_reads_over_sasl_ssl_with_the_same_settings(tls_broker, monkeypatch, spark):
    from clickstream.process.pipeline import read_kafka

    use(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        KAFKA_SASL_USERNAME="alice",
        KAFKA_SASL_PASSWORD="alice-secret",
        KAFKA_SSL_CAFILE=tls_broker["ca"],
    )
    round_trip(tls_broker["sasl"], "spark_secure", n=120)
    options = KafkaSecurity().spark_options()
    assert options["kafka.sasl.mechanism"] == "SCRAM-SHA-256"
    df = read_kafka(spark, "spark_secure", tls_broker["sasl"], streaming=False, options=options)
    assert df.count() == 120
    # The same read without the settings fails instead of hanging or reading nothing.
    bare = read_kafka(
        spark,
        "spark_secure",
        tls_broker["ssl"],
        streaming=False,
        options={"kafka.request.timeout.ms": "3000", "kafka.default.api.timeout.ms": "3000"},
    )
    with pytest.raises((Py4JJavaError, PySparkException)):
        bare.count()


def test_incomplete_settings_say_what_is_missing(monkeypatch):
    use(monkeypatch, KAFKA_SECURITY_PROTOCOL="SASL_SSL")
    with pytest.raises(SecurityConfigError) as err:
        KafkaSecurity()
    assert "KAFKA_SASL_MECHANISM" in str(err.value) and "KAFKA_SASL_USERNAME" in str(err.value)
    use(monkeypatch, KAFKA_SECURITY_PROTOCOL="TLS")
    with pytest.raises(SecurityConfigError, match="SASL_SSL"):
        KafkaSecurity()
