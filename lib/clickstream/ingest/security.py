"""Connection security for a remote or managed Kafka, in one place.

TLS and SASL (PLAIN, SCRAM-SHA-256/512) settings come from the environment (or arguments) and
are translated once for kafka-python and once for the Spark Kafka source/sink, so the producer,
the tools and the streaming job always connect the same way.

    KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
    KAFKA_SASL_MECHANISM      PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD
    KAFKA_SSL_CAFILE          PEM file of the CA that signed the brokers' certificates
                              (unset: the system's trusted CAs, as managed services need)
    KAFKA_SSL_CERTFILE / KAFKA_SSL_KEYFILE   client certificate and key (mutual TLS), PEM
    KAFKA_SSL_CHECK_HOSTNAME  true (default) | false
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from clickstream.errors import ClickstreamError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class SecurityConfigError(ClickstreamError):
    """The Kafka security settings are incomplete or inconsistent."""


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = field(
        default_factory=lambda: (_env("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
    )
    sasl_mechanism: str | None = field(default_factory=lambda: _env("KAFKA_SASL_MECHANISM"))
    username: str | None = field(default_factory=lambda: _env("KAFKA_SASL_USERNAME"))
    password: str | None = field(default_factory=lambda: _env("KAFKA_SASL_PASSWORD"))
    cafile: str | None = field(default_factory=lambda: _env("KAFKA_SSL_CAFILE"))
    certfile: str | None = field(default_factory=lambda: _env("KAFKA_SSL_CERTFILE"))
    keyfile: str | None = field(default_factory=lambda: _env("KAFKA_SSL_KEYFILE"))
    check_hostname: bool = field(
        default_factory=lambda: (_env("KAFKA_SSL_CHECK_HOSTNAME") or "true").lower() != "false"
    )

    def __repr__(self) -> str:
        # Settings get printed (a notebook cell, a traceback's locals): the password never is.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.password:
            shown["password"] = "***"
        return f"KafkaSecurity({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise SecurityConfigError(
                "Kafka security settings: "
                + "; ".join(problems)
                + ". See the README's 'Connecting to a remote Kafka' section."
            )

    def _problems(self):
        if self.protocol not in PROTOCOLS:
            yield f"KAFKA_SECURITY_PROTOCOL={self.protocol} is not one of {', '.join(PROTOCOLS)}"
        if self.uses_sasl:
            if (self.sasl_mechanism or "").upper() not in MECHANISMS:
                yield (
                    f"{self.protocol} needs KAFKA_SASL_MECHANISM, one of {', '.join(MECHANISMS)}"
                    f" (got {self.sasl_mechanism!r})"
                )
            if not (self.username and self.password):
                yield f"{self.protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        for name in ("cafile", "certfile", "keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                yield f"KAFKA_SSL_{name.upper()}={path} does not exist"
        if bool(self.certfile) != bool(self.keyfile):
            yield "mutual TLS needs both KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def kafka_python(self) -> dict:
        """Keyword arguments for KafkaProducer / KafkaConsumer / KafkaAdminClient."""
        if self.protocol == "PLAINTEXT":
            return {}
        kw: dict = {"security_protocol": self.protocol}
        if self.uses_tls:
            kw["ssl_check_hostname"] = self.check_hostname
            if self.cafile:
                kw["ssl_cafile"] = self.cafile
            if self.certfile:
                kw.update(ssl_certfile=self.certfile, ssl_keyfile=self.keyfile)
        if self.uses_sasl:
            kw.update(
                sasl_mechanism=self.sasl_mechanism.upper(),
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return kw

    def spark_options(self) -> dict[str, str]:
        """`kafka.`-prefixed options for Spark's Kafka source and sink (Java client names)."""
        if self.protocol == "PLAINTEXT":
            return {}
        opts = {"kafka.security.protocol": self.protocol}
        if self.uses_tls:
            if self.cafile:
                opts["kafka.ssl.truststore.type"] = "PEM"
                opts["kafka.ssl.truststore.location"] = str(Path(self.cafile).resolve())
            if self.certfile:
                # The Java client reads key and certificate chain from one PEM keystore file.
                opts["kafka.ssl.keystore.type"] = "PEM"
                opts["kafka.ssl.keystore.location"] = str(combined_pem(self.certfile, self.keyfile))
            if not self.check_hostname:
                opts["kafka.ssl.endpoint.identification.algorithm"] = ""
        if self.uses_sasl:
            mech = self.sasl_mechanism.upper()
            module = (
                "org.apache.kafka.common.security.plain.PlainLoginModule"
                if mech == "PLAIN"
                else "org.apache.kafka.common.security.scram.ScramLoginModule"
            )
            opts["kafka.sasl.mechanism"] = mech
            opts["kafka.sasl.jaas.config"] = (
                f'{module} required username="{_jaas(self.username)}" '
                f'password="{_jaas(self.password)}";'
            )
        return opts


def _jaas(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def combined_pem(certfile: str, keyfile: str) -> Path:
    """Key + certificate chain in one PEM file beside the key (what Java's PEM keystore reads)."""
    out = Path(keyfile).with_suffix(".keystore.pem")
    out.write_text(Path(keyfile).read_text() + Path(certfile).read_text())
    out.chmod(0o600)
    return out


def get_security() -> KafkaSecurity:
    """The security settings from the environment (PLAINTEXT when nothing is set)."""
    return KafkaSecurity()
