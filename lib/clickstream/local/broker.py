"""The course's own Kafka broker: one KRaft node on 127.0.0.1, run from Kafka's jars.

`up` formats storage once, starts the broker in the background and waits until it answers a
metadata request; `down` stops it and leaves no process behind. Topic data survives
`down`/`up`; `down(purge=True)` deletes it. Logs go to <state dir>/broker/broker.log. The broker
starts from the class-data archive `clickstream setup` records (about 4 s instead of 6).

It is the one-node case of `clickstream.local.kafka_cluster.LocalKafkaCluster`, on the port the
settings name (9092 unless `CLICKSTREAM_KAFKA_PORT` or `--port` says otherwise), with optional
extra listeners (SSL, SASL) for the security lesson.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import BrokerError, PortInUseError
from clickstream.local.java import record_class_archive
from clickstream.local.kafka_cluster import (
    BrokerStatus,
    LocalKafkaCluster,
    cluster_id,
    kafka_class_archive,
    kafka_pid,
    wait_for_broker,
)
from clickstream.ports import free_port, free_ports, port_is_open, who_listens

__all__ = [
    "BrokerStatus",
    "LocalBroker",
    "build_kafka_class_archive",
    "exercise_broker",
    "free_port",
    "kafka_class_archive",
    "port_is_open",
    "wait_for_broker",
]


class LocalBroker(LocalKafkaCluster):
    """The course's broker: one node, managed through files in <state dir>/broker."""

    what = "Kafka broker"

    def __init__(
        self,
        settings: Settings | None = None,
        listeners: dict[str, tuple[int, str]] | None = None,
        properties: dict[str, str] | None = None,
        format_args: list[str] | None = None,
    ):
        """`listeners` adds {name: (port, protocol)} beside PLAINTEXT (e.g. an SSL listener),
        `properties` adds broker settings, `format_args` extra StorageTool arguments (e.g.
        `--add-scram`), for the security lesson and tests."""
        super().__init__(settings)
        self.extra_listeners = listeners or {}
        self.extra_properties = properties or {}
        self.format_args = format_args or []
        self.dir = self.settings.broker_dir
        self.pid_file = self.dir / "broker.pid"
        self.meta_file = self.dir / "meta.json"
        self.log_file = self.dir / "broker.log"
        self.data_dir = self.dir / "data"
        self.properties = self.dir / "server.properties"

    # -- state -----------------------------------------------------------------------------
    def node_dir(self, node_id: int) -> Path:
        return self.dir

    def nodes(self) -> list[dict]:
        meta = self.meta()
        return [{"node_id": 1, "port": self.port, "controller_port": meta.get("controller_port")}]

    def pid(self) -> int | None:
        return kafka_pid(self.pid_file)

    @property
    def port(self) -> int:
        return self.settings.local_port

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log written)"

    # -- lifecycle -------------------------------------------------------------------------
    def up(
        self, port: int | None = None, echo=print, die_with_parent: bool = False
    ) -> BrokerStatus:
        """Start the broker unless it runs already; return once it answers metadata requests.

        With `die_with_parent`, a broker started here stops when this process dies, however it
        dies (the demo's; `clickstream broker up` leaves its broker running on purpose)."""
        if self.settings.is_external:
            echo(
                f"KAFKA_BOOTSTRAP_SERVERS={self.settings.external_bootstrap}: using that "
                "cluster, nothing started."
            )
            wait_for_broker(self.settings.external_bootstrap, timeout_s=15)
            return self.status(with_topics=False)
        if port is not None:
            self.settings = self.settings.with_(port=port)
        pid = self.pid()
        if pid is not None:
            echo(f"Kafka broker already running at {self.bootstrap_servers} (pid {pid}).")
            return self.status(with_topics=False)
        if port_is_open("127.0.0.1", self.port):
            raise PortInUseError(
                f"Port {self.port} on 127.0.0.1 is in use by {who_listens(self.port)}, which is "
                f"not the course's broker. Stop that process, or start ours on another port: "
                f"`clickstream broker up --port {self.port + 100}` (the other commands then find "
                "it on its own)."
            )
        return super().up(1, echo, die_with_parent)

    def down(self, purge: bool = False, echo=print, hard: bool = False) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s). True if one was running."""
        if self.settings.is_external:
            echo("KAFKA_BOOTSTRAP_SERVERS is set: the external cluster is not ours to stop.")
            return False
        return super().down(purge, echo, hard)

    def status(self, with_topics: bool = True) -> BrokerStatus:
        if not self.settings.is_external:
            st = super().status(with_topics)
            st.nodes = []  # one node: the broker itself
            return st
        st = BrokerStatus(self.settings.external_bootstrap, True, True)
        if with_topics:
            from clickstream.ingest.kafka_io import describe_topics

            st.topics = describe_topics(st.bootstrap_servers)
        return st

    # -- how one node differs from a cluster -------------------------------------------------
    def _plan(self, brokers: int) -> None:
        """Storage is formatted for one port: starting it on another would strand its data."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.meta()
        formatted = (self.data_dir / "meta.properties").exists()
        if formatted and meta.get("port") != self.port:
            raise BrokerError(
                f"The broker's storage in {self.data_dir} was formatted for port "
                f"{meta.get('port')}, not {self.port}. Start it on port {meta.get('port')}, or "
                "delete its data with `clickstream broker down --purge` first."
            )
        if not formatted or not meta.get("controller_port"):
            (meta["controller_port"],) = free_ports(1, avoid=(self.port,))
        meta.setdefault("cluster_id", cluster_id())
        meta["port"] = self.port
        self.meta_file.write_text(json.dumps(meta, indent=2))

    def _quorum(self, node: dict) -> dict[str, str]:
        """A one-node dynamic quorum (formatted with --standalone)."""
        return {"controller.quorum.bootstrap.servers": f"127.0.0.1:{node['controller_port']}"}

    def _listeners(self, node: dict) -> dict[str, tuple[int, str]]:
        return {**super()._listeners(node), **self.extra_listeners}

    def _extra_properties(self) -> dict[str, str]:
        return self.extra_properties

    def _format_args(self) -> list[str]:
        return self.format_args

    def _log_location(self) -> Path:
        return self.log_file

    def _up_message(self, brokers: int, seconds: float) -> str:
        return (
            f"Kafka {self.settings.kafka_version} broker up at {self.bootstrap_servers} "
            f"(pid {self.pid()}, {seconds:.1f} s; log: {self.log_file})."
        )

    def _down_message(self, pids: dict[int, int]) -> str:
        if not pids:
            return "No local Kafka broker running."
        return f"Kafka broker stopped (pid {pids[1]})."


def build_kafka_class_archive(
    settings: Settings | None = None, echo: Callable[[str], None] = print
) -> Path | None:
    """Record the classes a broker loads into `kafka_class_archive()` (once): `exercise_broker`
    runs a broker of its own, in a temporary state directory on a free port."""
    settings = settings or get_settings()
    with tempfile.TemporaryDirectory(prefix="clickstream-kafka-classes-") as state:
        return record_class_archive(
            kafka_class_archive(settings),
            "from clickstream.local.broker import exercise_broker; exercise_broker()",
            "the Kafka broker",
            echo,
            env={
                "CLICKSTREAM_CACHE_DIR": str(settings.cache_dir),
                "CLICKSTREAM_STATE_DIR": state,
                "CLICKSTREAM_KAFKA_PORT": str(free_port()),
                "KAFKA_BOOTSTRAP_SERVERS": None,
            },
        )


def exercise_broker() -> None:
    """Start the broker, create a topic, write and read a few hundred records, stop it."""
    from clickstream.ingest.kafka_io import ensure_topic, read_all, send_all

    broker = LocalBroker()
    broker.up(echo=lambda message: None)
    try:
        bootstrap = broker.bootstrap_servers
        ensure_topic("classes", partitions=3, bootstrap=bootstrap)
        records = [(f"u{i % 7}".encode(), b"{}") for i in range(300)]
        assert send_all(records, "classes", bootstrap) == len(records)
        assert len(list(read_all("classes", bootstrap))) == len(records)
    finally:
        broker.down(echo=lambda message: None)
