"""Local KRaft Kafka, run from its own jars: N combined broker+controller nodes on 127.0.0.1.

`clickstream broker up --brokers 3` starts three nodes with a static controller quorum; topics
default to replication factor 3 with min.insync.replicas 2, so with acks=all one node can stop
mid-stream without losing an acknowledged event. `stop_node(n)` / `start_node(n)` take one node
down and back, for the fault-tolerance lesson. The course's own broker
(`clickstream.local.broker.LocalBroker`) is the one-node case of the same class.

Each node formats its storage once, writes its log to `broker.log` and its pid to `broker.pid`
in its directory, and starts from the class-data archive `clickstream setup` records. Topic data
survives `down`/`up`; `down(purge=True)` deletes it (the logs stay).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import BrokerError, BrokerNotReachable
from clickstream.local.jars import ensure_kafka_jars, kafka_jars_dir
from clickstream.local.java import (
    JavaInfo,
    check_java_for_kafka,
    class_archive_options,
    class_archive_path,
    extra_java_options,
)
from clickstream.ports import free_ports
from clickstream.processes import GaveUp, WaitTimeout, alive, stop, wait_until
from clickstream.processes import die_with_parent as _die_with_parent

LOG4J_CONFIG = Path(__file__).with_name("broker_log4j2.properties")
START_TIMEOUT_S = 90


@dataclass
class BrokerStatus:
    bootstrap_servers: str
    running: bool
    external: bool
    kafka_version: str | None = None
    pid: int | None = None
    log_file: str | None = None
    topics: dict[str, dict] = field(default_factory=dict)
    nodes: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def read_json(path: Path) -> dict:
    """A state file (meta.json and the like) as a dict; empty if missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def kafka_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is alive and is a Kafka broker, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid, "kafka.Kafka") else None


def cluster_id() -> str:
    """A random KRaft cluster id (22 characters of URL-safe base64, as Kafka's tools make)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # the storage tool would read it as an option
            return cid


def kafka_class_archive(settings: Settings | None = None, java: JavaInfo | None = None) -> Path:
    """Where the class-data archive for this Kafka and this Java lives (it may not exist)."""
    settings = settings or get_settings()
    return class_archive_path(
        settings.cache_dir / "kafka-classes",
        f"kafka-{settings.kafka_version}",
        java or check_java_for_kafka(),
        kafka_jars_dir(settings).glob("*.jar"),
    )


def _log_tail(log_file: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


class LocalKafkaCluster:
    """N combined nodes, each with its own properties, data, log and pid under <state>/kafka-cluster."""

    what = "Kafka cluster"  # how messages name it

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.dir = self.settings.state_dir / "kafka-cluster"
        self.meta_file = self.dir / "meta.json"
        self._procs: dict[int, subprocess.Popen] = {}

    # -- state ---------------------------------------------------------------------------------
    def meta(self) -> dict:
        return read_json(self.meta_file)

    def node_dir(self, node_id: int) -> Path:
        return self.dir / f"node-{node_id}"

    def node_pid(self, node_id: int) -> int | None:
        return kafka_pid(self.node_dir(node_id) / "broker.pid")

    def nodes(self) -> list[dict]:
        """[{node_id, port, controller_port}] of every node, running or not."""
        return self.meta().get("nodes", [])

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n['port']}" for n in self.nodes())

    def running_nodes(self) -> list[int]:
        return [n["node_id"] for n in self.nodes() if self.node_pid(n["node_id"])]

    def is_running(self) -> bool:
        return bool(self.running_nodes())

    def live_bootstrap_servers(self) -> str:
        """The addresses of the nodes running now (`bootstrap_servers` lists every node, stopped
        ones too), for clients that connect while a node is down."""
        live = set(self.running_nodes())
        return ",".join(f"127.0.0.1:{n['port']}" for n in self.nodes() if n["node_id"] in live)

    # -- lifecycle -------------------------------------------------------------------------------
    def up(self, brokers: int = 3, echo=print, die_with_parent: bool = False) -> BrokerStatus:
        """Start every node that is not running; wait until all of them serve metadata.

        With `die_with_parent`, nodes started here stop when this process dies, however it dies.
        """
        self._plan(brokers)
        running = self.running_nodes()
        if len(running) == brokers:
            echo(f"{self.what} already running at {self.bootstrap_servers}.")
            return self.status(with_topics=False)
        check_java_for_kafka()
        ensure_kafka_jars(self.settings)
        meta = self.meta()
        started = time.monotonic()
        for node in self.nodes():
            if node["node_id"] in running:
                continue
            self._write_properties(node, brokers)
            if not (self.node_dir(node["node_id"]) / "data" / "meta.properties").exists():
                self._format(node["node_id"], meta["cluster_id"], brokers)
            self._start(node["node_id"], die_with_parent)
        self._wait_for_all(brokers)
        echo(self._up_message(brokers, time.monotonic() - started))
        return self.status(with_topics=False)

    def stop_node(self, node_id: int, hard: bool = False, echo=print) -> None:
        """Stop one node (SIGTERM, or SIGKILL with hard=True) to show what replication buys."""
        pid = self.node_pid(node_id)
        if pid is None:
            echo(f"Node {node_id} is not running.")
            return
        if stop(pid, hard=hard):  # waits until the process is gone
            raise BrokerError(f"Could not stop node {node_id} (pid {pid}).")
        echo(f"Node {node_id} stopped (pid {pid}).")

    def start_node(self, node_id: int, echo=print) -> None:
        if self.node_pid(node_id):
            echo(f"Node {node_id} already running.")
            return
        self._start(node_id)
        port = next(n["port"] for n in self.nodes() if n["node_id"] == node_id)
        wait_for_broker(f"127.0.0.1:{port}", timeout_s=START_TIMEOUT_S)
        echo(f"Node {node_id} started again.")

    def down(self, purge: bool = False, echo=print, hard: bool = False) -> bool:
        """Stop every node: all at once (SIGTERM, then SIGKILL after 30 s), or `hard` (SIGKILL).
        True if any was running.

        Stopped one by one, each node's controlled shutdown would wait for the ones still up,
        and the last would wait for a controller quorum that is gone.
        """
        pids = {n["node_id"]: self.node_pid(n["node_id"]) for n in self.nodes()}
        pids = {node: pid for node, pid in pids.items() if pid}
        left = [node for node, pid in pids.items() if stop(pid, hard=hard)]
        if left:
            raise BrokerError(f"Could not stop {self.what} nodes {left} (pids {pids}).")
        echo(self._down_message(pids))
        for node in self.nodes():
            (self.node_dir(node["node_id"]) / "broker.pid").unlink(missing_ok=True)
        if purge and self.dir.exists():
            for node in self.nodes():
                shutil.rmtree(self.node_dir(node["node_id"]) / "data", ignore_errors=True)
            self.meta_file.unlink(missing_ok=True)
            echo(f"{self.what} data deleted (in {self.dir}).")
        return bool(pids)

    def status(self, with_topics: bool = True) -> BrokerStatus:
        running = self.running_nodes()
        st = BrokerStatus(
            self.bootstrap_servers,
            bool(running),
            False,
            kafka_version=self.settings.kafka_version,
            pid=self.node_pid(running[0]) if running else None,
            log_file=str(self._log_location()),
            nodes=[{**n, "pid": self.node_pid(n["node_id"])} for n in self.nodes()],
        )
        if running and with_topics:
            from clickstream.ingest.kafka_io import describe_topics

            st.topics = describe_topics(self.live_bootstrap_servers())
        return st

    # -- what differs between one node and many: overridden by LocalBroker ------------------------
    def _plan(self, brokers: int) -> None:
        """Check the nodes on disk fit `brokers`; choose ports and a cluster id the first time."""
        meta = self.meta()
        if meta and len(meta.get("nodes", [])) != brokers:
            raise BrokerError(
                f"A {len(meta['nodes'])}-node cluster exists in {self.dir}; stop and delete it "
                "with `clickstream broker down --purge` before starting one of another size."
            )
        if meta:
            return
        ports = free_ports(2 * brokers)
        nodes = [
            {"node_id": i, "port": ports[2 * i - 2], "controller_port": ports[2 * i - 1]}
            for i in range(1, brokers + 1)
        ]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta_file.write_text(
            json.dumps({"cluster_id": cluster_id(), "nodes": nodes}, indent=2)
        )

    def _quorum(self, node: dict) -> dict[str, str]:
        """How a node finds the controllers: a static quorum of every node."""
        voters = ",".join(f"{n['node_id']}@127.0.0.1:{n['controller_port']}" for n in self.nodes())
        return {"controller.quorum.voters": voters}

    def _listeners(self, node: dict) -> dict[str, tuple[int, str]]:
        """{name: (port, protocol)} a node serves clients on."""
        return {"PLAINTEXT": (node["port"], "PLAINTEXT")}

    def _extra_properties(self) -> dict[str, str]:
        return {}

    def _format_args(self) -> list[str]:
        return []

    def _log_location(self) -> Path:
        return self.dir

    def _up_message(self, brokers: int, seconds: float) -> str:
        return (
            f"Kafka {self.settings.kafka_version} cluster of {brokers} nodes up at "
            f"{self.bootstrap_servers} ({seconds:.1f} s; logs in {self.dir})."
        )

    def _down_message(self, pids: dict[int, int]) -> str:
        if not pids:
            return f"No local {self.what} running."
        return f"{self.what} stopped (nodes {', '.join(map(str, sorted(pids)))})."

    # -- internals -----------------------------------------------------------------------------
    def _write_properties(self, node: dict, brokers: int) -> None:
        d = self.node_dir(node["node_id"])
        d.mkdir(parents=True, exist_ok=True)
        rf, isr = str(min(3, brokers)), str(max(1, min(2, brokers - 1)))
        listeners = self._listeners(node)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node["node_id"]),
            **self._quorum(node),
            "listeners": ",".join(
                [f"{name}://127.0.0.1:{port}" for name, (port, _) in listeners.items()]
                + [f"CONTROLLER://127.0.0.1:{node['controller_port']}"]
            ),
            "advertised.listeners": ",".join(
                f"{name}://127.0.0.1:{port}" for name, (port, _) in listeners.items()
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["CONTROLLER:PLAINTEXT"] + [f"{n}:{proto}" for n, (_, proto) in listeners.items()]
            ),
            "log.dirs": str(d / "data"),
            "num.partitions": "3",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            "unclean.leader.election.enable": "false",
            "log.retention.hours": "168",
            "auto.create.topics.enable": "true",
            **self._extra_properties(),
        }
        (d / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java(self, node_id: int, heap: str) -> list[str]:
        java = check_java_for_kafka()
        return [
            java.executable,
            f"-Xmx{heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            *extra_java_options(),
            *class_archive_options(kafka_class_archive(self.settings, java)),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.node_dir(node_id)}",
            "-cp",
            str(kafka_jars_dir(self.settings) / "*"),
        ]

    def _format(self, node_id: int, cid: str, brokers: int) -> None:
        props = self.node_dir(node_id) / "server.properties"
        standalone = ["--standalone"] if brokers == 1 else []  # a one-node dynamic quorum
        cmd = self._java(node_id, "256m") + [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cid,
            "-c",
            str(props),
            *standalone,
            *self._format_args(),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise BrokerError(
                f"Formatting node {node_id}'s storage failed:\n"
                + (out.stdout + out.stderr).strip()[-2000:]
            )

    def _start(self, node_id: int, die_with_parent: bool = False) -> None:
        d = self.node_dir(node_id)
        default_heap = "512m" if len(self.nodes()) == 1 else "384m"
        heap = os.environ.get("CLICKSTREAM_BROKER_HEAP", default_heap)
        log = open(d / "broker.log", "ab")  # noqa: SIM115 - handed to the child process
        log.write(
            f"\n==== starting node {node_id} {time.strftime('%Y-%m-%dT%H:%M:%S')} ====\n".encode()
        )
        log.flush()
        proc = subprocess.Popen(
            self._java(node_id, heap) + ["kafka.Kafka", str(d / "server.properties")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal or notebook does not reach it
            close_fds=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        log.close()
        (d / "broker.pid").write_text(str(proc.pid))
        self._procs[node_id] = proc

    def _starting_or_running(self, node: dict) -> bool:
        """A node started by this object is judged by its process; others by their pid file."""
        proc = self._procs.get(node["node_id"])
        if proc is not None:
            return proc.poll() is None
        return self.node_pid(node["node_id"]) is not None

    def _restart_dead_nodes(self, retried: dict[int, bool]) -> None:
        """Start again, once, a node that died at birth; the second time, say why it died."""
        for node in self.nodes():
            node_id = node["node_id"]
            if self._starting_or_running(node):
                continue
            if retried.get(node_id):
                proc = self._procs.get(node_id)
                log_file = self.node_dir(node_id) / "broker.log"
                raise GaveUp(
                    f"node {node_id} exited (exit status {proc.returncode if proc else None}); "
                    f"its log is {log_file}; last lines:\n{_log_tail(log_file, 15)}"
                )
            retried[node_id] = True
            self._start(node_id)

    def _wait_for_all(self, brokers: int) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        retried: dict[int, bool] = {}

        def formed() -> bool:
            self._restart_dead_nodes(retried)
            wait_for_broker(self.bootstrap_servers, timeout_s=5)
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
            try:
                return len(admin.describe_cluster().get("brokers", [])) >= brokers
            finally:
                admin.close()

        try:
            wait_until(
                formed,
                START_TIMEOUT_S,
                f"the {brokers}-node cluster at {self.bootstrap_servers} to form"
                if brokers > 1
                else f"the broker at {self.bootstrap_servers} to answer",
                retry_on=(BrokerNotReachable, KafkaError, OSError),
                error=BrokerError,
            )
        except BrokerError as exc:
            for node in self.nodes():  # nothing half-started stays behind
                pid = self.node_pid(node["node_id"])
                if pid:
                    stop(pid)
            raise BrokerError(f"The {self.what} did not start: {exc}") from None


def wait_for_broker(
    bootstrap: str, timeout_s: float = 30, process: subprocess.Popen | None = None
) -> None:
    """Block until a metadata request is answered; raise BrokerNotReachable otherwise."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from clickstream.ingest.kafka_io import client_security, unreachable

    def answered() -> bool:
        if process is not None and process.poll() is not None:
            raise GaveUp(f"the broker process exited with code {process.returncode}")
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=5000,
            # Short, so a broker process that died is noticed within a few seconds.
            bootstrap_timeout_ms=3000,
            client_id="clickstream-health",
            **client_security(),
        )
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()

    try:
        wait_until(
            answered,
            timeout_s,
            f"a Kafka broker to answer at {bootstrap}",
            retry_on=(KafkaError, OSError, ValueError),
        )
    except WaitTimeout as exc:
        if isinstance(exc.last, GaveUp):
            raise BrokerNotReachable(str(exc.last)) from None
        raise unreachable(bootstrap, exc.last) from None
