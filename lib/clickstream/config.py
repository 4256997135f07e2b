"""One settings object for the whole library, read from the environment.

Every value can be overridden by an argument (`Settings(..., topic="x")` or
`get_settings(topic="x")`); the CLI maps its options onto the same fields.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from clickstream.errors import ClickstreamError
from clickstream.redact import redact_url

KAFKA_VERSION = "4.1.1"
SCALA_BINARY = "2.13"
DEFAULT_PORT = 9092
DEFAULT_TOPIC = "user_clickstream"
DASHBOARD_PORT = 8501  # Streamlit's own default
LAB_PORT = 8888
STORE_FORMS = (
    "sqlite:///relative.db, sqlite:////absolute/path.db, redis://host:port/db or "
    "postgresql://user@host:port/db"
)


class ConfigError(ClickstreamError):
    """A setting's value cannot work; the CLI exits with 2, as for a bad option."""


# -- checks shared by the environment and the CLI's options --------------------------------------
# Each returns the value to use, or raises ValueError with a message naming the bad value (never
# a password) and what is expected.


def _port_of(hostinfo: str) -> int | None:
    """The port of `host[:port]` (None if not given); ValueError unless it is 1-65535."""
    port = urlsplit(f"//{hostinfo}").port  # ValueError: not a number, or above 65535
    if port == 0:
        raise ValueError("port 0")
    return port


def _has_host_and_port(hostinfo: str) -> bool:
    try:
        return bool(urlsplit(f"//{hostinfo}").hostname) and _port_of(hostinfo) is not None
    except ValueError:
        return False


def check_port(text: str) -> int:
    """A TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r} is not a port: use a number from 1 to 65535.")
    return port


def check_store_url(url: str) -> str:
    """A URL `open_store` can open: sqlite, redis, rediss, postgresql or postgres, and a port,
    when given, from 1 to 65535."""
    try:
        parts, shown = urlsplit(url), repr(redact_url(url))
    except ValueError:  # an unclosed '[': not shown, it may hold a password
        raise ValueError(f"The store URL cannot be read as a URL: use {STORE_FORMS}.") from None
    if parts.scheme == "sqlite" and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return url
    if parts.scheme not in ("redis", "rediss", "postgresql", "postgres"):
        raise ValueError(f"Unsupported store URL {shown}: use {STORE_FORMS}.")
    for hostinfo in parts.netloc.rpartition("@")[2].split(","):  # libpq allows h1:p1,h2:p2
        try:
            _port_of(hostinfo)
        except ValueError:
            raise ValueError(
                f"Store URL {shown} has a port that is not a number from 1 to 65535: use "
                f"{STORE_FORMS}."
            ) from None
    return url


def check_bootstrap_servers(text: str) -> str:
    """Kafka bootstrap servers: host:port[,host:port...] (a PROTOCOL:// prefix is allowed)."""
    for entry in text.split(","):
        address = re.sub(r"^[A-Za-z_]+://", "", entry.strip())
        if not _has_host_and_port(address) or any(c.isspace() for c in address):
            raise ValueError(
                f"{text!r} is not a list of Kafka brokers: write host:port, or several separated "
                "by commas (host1:9092,host2:9092), each port from 1 to 65535."
            )
    return text


def check_topic(name: str) -> str:
    """A topic name Kafka accepts."""
    from kafka.util import ensure_valid_topic_name

    try:
        ensure_valid_topic_name(name)
    except ValueError:
        raise ValueError(
            f"{name!r} is not a Kafka topic name: use 1 to 249 ASCII letters, digits, '.', '_' "
            "and '-'."
        ) from None
    return name


# Spark's own master URL forms (SparkContext.createTaskScheduler and its cluster managers).
_SPARK_MASTER = re.compile(
    r"local|local\[([1-9]\d*|\*)(\s*,\s*[1-9]\d*)?\]"
    r"|local-cluster\[\s*[1-9]\d*\s*,\s*[1-9]\d*\s*,\s*[1-9]\d*\s*\]"
    r"|yarn|k8s://\S+|spark://(?P<hosts>\S+)"
)


def check_spark_master(text: str) -> str:
    """A Spark master URL: local, local[N], local[*], spark://host:port, yarn or k8s://..."""
    match = _SPARK_MASTER.fullmatch(text.strip())
    if match is None or (
        match["hosts"] and not all(map(_has_host_and_port, match["hosts"].split(",")))
    ):
        raise ValueError(
            f"{text!r} is not a Spark master: use local, local[N], local[*], "
            "spark://host:port (a standalone cluster), yarn or k8s://https://host:port."
        )
    return text.strip()


def check_maven_repo(url: str) -> str:
    """The base URL of a Maven 2 repository (http, https or file)."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https", "file") and bool(parts.netloc or parts.path)
    except ValueError:
        ok = False
    if not ok:
        shown = "That URL" if "[" in url else repr(redact_url(url))  # '[': unreadable
        raise ValueError(
            f"{shown} is not a Maven repository URL: use https://host/path/ (or file:///path/ "
            "for a local mirror)."
        )
    return url


def _env(name: str, check=None):
    """The variable's value (None when unset or empty), checked: a bad one is a ConfigError."""
    raw = os.environ.get(name)
    if not raw or check is None:
        return raw or None
    try:
        return check(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {str(exc).rstrip('.')}, or unset {name}.") from None


# Checked wherever settings are read; `check_environment` checks them all at once.
CHECKED_VARIABLES = {
    "CLICKSTREAM_KAFKA_PORT": check_port,
    "CLICKSTREAM_TOPIC": check_topic,
    "CLICKSTREAM_STORE": check_store_url,
    "CLICKSTREAM_MAVEN_REPO": check_maven_repo,
    "KAFKA_BOOTSTRAP_SERVERS": check_bootstrap_servers,
    "SPARK_MASTER": check_spark_master,
}


def check_environment() -> None:
    """Raise a ConfigError for the first variable whose value cannot work."""
    for name, check in CHECKED_VARIABLES.items():
        _env(name, check)


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var)
    if base and os.path.isabs(base):
        return Path(base)
    home = os.environ.get("HOME")
    # Containers sometimes run without HOME (README, Troubleshooting: "basedir must be
    # absolute"): fall back to a temp location.
    if not home or not os.path.isabs(home):
        return Path("/tmp") / f"clickstream-{os.getuid()}" / fallback.strip("./")
    return Path(home) / fallback


def default_cache_dir() -> Path:
    """Downloaded jars live here: $CLICKSTREAM_CACHE_DIR or $XDG_CACHE_HOME/clickstream."""
    env = os.environ.get("CLICKSTREAM_CACHE_DIR")
    return Path(env) if env else _xdg("XDG_CACHE_HOME", ".cache") / "clickstream"


def default_state_dir() -> Path:
    """Broker data, logs, checkpoints and the serving store live here."""
    env = os.environ.get("CLICKSTREAM_STATE_DIR")
    return Path(env) if env else _xdg("XDG_STATE_HOME", ".local/state") / "clickstream"


@dataclass(frozen=True)
class Settings:
    """Where things are and how to reach them."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    state_dir: Path = field(default_factory=default_state_dir)
    external_bootstrap: str | None = field(
        default_factory=lambda: _env("KAFKA_BOOTSTRAP_SERVERS", check_bootstrap_servers)
    )
    # None: the port the local broker was started on, else 9092.
    port: int | None = field(default_factory=lambda: _env("CLICKSTREAM_KAFKA_PORT", check_port))
    topic: str = field(
        default_factory=lambda: _env("CLICKSTREAM_TOPIC", check_topic) or DEFAULT_TOPIC
    )
    spark_master: str = field(
        default_factory=lambda: _env("SPARK_MASTER", check_spark_master) or "local[2]"
    )
    maven_repo: str | None = field(
        default_factory=lambda: _env("CLICKSTREAM_MAVEN_REPO", check_maven_repo)
    )
    kafka_version: str = KAFKA_VERSION

    @property
    def broker_dir(self) -> Path:
        return self.state_dir / "broker"

    @property
    def is_external(self) -> bool:
        """True when KAFKA_BOOTSTRAP_SERVERS points at a cluster we did not start."""
        return self.external_bootstrap is not None

    @property
    def bootstrap_servers(self) -> str:
        """The external cluster if set, else the local broker (on the port it runs on)."""
        if self.external_bootstrap:
            return self.external_bootstrap
        cluster = self.state_dir / "kafka-cluster" / "meta.json"
        if cluster.exists():  # a local multi-node cluster (`clickstream broker up --brokers 3`)
            try:
                nodes = json.loads(cluster.read_text())["nodes"]
                return ",".join(f"127.0.0.1:{n['port']}" for n in nodes)
            except (ValueError, KeyError, OSError):
                pass
        return f"127.0.0.1:{self.local_port}"

    @property
    def local_port(self) -> int:
        """The port of the local broker: the one it was started on, else the configured one."""
        if self.port is not None:
            return self.port
        meta = self.broker_dir / "meta.json"
        if meta.exists():
            try:
                return int(json.loads(meta.read_text())["port"])
            except (ValueError, KeyError, OSError):
                pass
        return DEFAULT_PORT

    @property
    def checkpoint_root(self) -> Path:
        return self.state_dir / "checkpoints"

    @property
    def default_store_url(self) -> str:
        store = _env("CLICKSTREAM_STORE", check_store_url)
        return store or f"sqlite:///{self.state_dir / 'serving.db'}"

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (None means 'keep')."""
    return Settings().with_(**overrides)
