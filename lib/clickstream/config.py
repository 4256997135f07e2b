"""One settings object for the whole library, read from the environment.

Every value can be overridden by an argument (`Settings(..., topic="x")` or
`get_settings(topic="x")`); the CLI maps its options onto the same fields.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

KAFKA_VERSION = "4.1.1"
SCALA_BINARY = "2.13"
DEFAULT_PORT = 9092
DEFAULT_TOPIC = "user_clickstream"
DASHBOARD_PORT = 8501  # Streamlit's own default
LAB_PORT = 8888


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var)
    if base and os.path.isabs(base):
        return Path(base)
    home = os.environ.get("HOME")
    # Containers sometimes run without HOME (PITFALLS #5): fall back to a temp location.
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
        default_factory=lambda: os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
    )
    # None: the port the local broker was started on, else 9092.
    port: int | None = field(
        default_factory=lambda: (
            int(os.environ["CLICKSTREAM_KAFKA_PORT"])
            if os.environ.get("CLICKSTREAM_KAFKA_PORT")
            else None
        )
    )
    topic: str = field(default_factory=lambda: os.environ.get("CLICKSTREAM_TOPIC", DEFAULT_TOPIC))
    spark_master: str = field(default_factory=lambda: os.environ.get("SPARK_MASTER", "local[2]"))
    maven_repo: str | None = field(
        default_factory=lambda: os.environ.get("CLICKSTREAM_MAVEN_REPO") or None
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
        return os.environ.get("CLICKSTREAM_STORE") or f"sqlite:///{self.state_dir / 'serving.db'}"

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (None means 'keep')."""
    return Settings().with_(**overrides)
