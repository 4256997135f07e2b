"""A local three-node KRaft Kafka cluster, for the fault-tolerance lesson.

`clickstream broker up --brokers 3` starts three combined broker+controller nodes on 127.0.0.1
with a static controller quorum; topics default to replication factor 3 with
min.insync.replicas 2, so with acks=all one node can stop mid-stream without losing an
acknowledged event. `stop_node(n)` / `start_node(n)` take one node down and back.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import BrokerError, BrokerNotReachable
from clickstream.jars import ensure_kafka_jars, kafka_jars_dir
from clickstream.local.broker import (
    LOG4J_CONFIG,
    START_TIMEOUT_S,
    BrokerStatus,
    cluster_id,
    free_ports,
    kafka_class_archive,
    kafka_pid,
    read_json,
    wait_for_broker,
)
from clickstream.local.java import check_java_for_kafka, class_archive_options, extra_java_options
from clickstream.processes import GaveUp, stop, wait_until


class LocalKafkaCluster:
    """N combined nodes, each with its own properties, data, log and pid under <state>/kafka-cluster."""

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
        return self.meta().get("nodes", [])

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n['port']}" for n in self.nodes())

    def running_nodes(self) -> list[int]:
        return [n["node_id"] for n in self.nodes() if self.node_pid(n["node_id"])]

    def is_running(self) -> bool:
        return bool(self.running_nodes())

    # -- lifecycle -------------------------------------------------------------------------------
    def up(self, brokers: int = 3, echo=print) -> BrokerStatus:
        """Start every node that is not running; wait until all of them serve metadata."""
        meta = self.meta()
        if meta and len(meta.get("nodes", [])) != brokers:
            raise BrokerError(
                f"A {len(meta['nodes'])}-node cluster exists in {self.dir}; stop and delete it "
                "with `clickstream broker down --purge` before starting one of another size."
            )
        running = self.running_nodes()
        if meta and len(running) == brokers:
            echo(f"Kafka cluster already running at {self.bootstrap_servers}.")
            return self.status(with_topics=False)
        check_java_for_kafka()
        ensure_kafka_jars(self.settings)
        if not meta:
            ports = free_ports(2 * brokers)
            meta = {
                "cluster_id": cluster_id(),
                "nodes": [
                    {"node_id": i, "port": ports[2 * i - 2], "controller_port": ports[2 * i - 1]}
                    for i in range(1, brokers + 1)
                ],
            }
            self.dir.mkdir(parents=True, exist_ok=True)
            self.meta_file.write_text(json.dumps(meta, indent=2))
        voters = ",".join(f"{n['node_id']}@127.0.0.1:{n['controller_port']}" for n in meta["nodes"])
        started = time.monotonic()
        for node in meta["nodes"]:
            if node["node_id"] in running:
                continue
            self._write_properties(node, voters, brokers)
            if not (self.node_dir(node["node_id"]) / "data" / "meta.properties").exists():
                self._format(node["node_id"], meta["cluster_id"])
            self._start(node["node_id"])
        self._wait_for_all(brokers)
        echo(
            f"Kafka {self.settings.kafka_version} cluster of {brokers} nodes up at "
            f"{self.bootstrap_servers} ({time.monotonic() - started:.1f} s; logs in {self.dir})."
        )
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

        Stopped one by one, each node's controlled shutdown would wait for the ones still up,
        and the last would wait for a controller quorum that is gone.
        """
        pids = {n["node_id"]: self.node_pid(n["node_id"]) for n in self.nodes()}
        pids = {node: pid for node, pid in pids.items() if pid}
        left = [node for node, pid in pids.items() if stop(pid, hard=hard)]
        if left:
            raise BrokerError(f"Could not stop Kafka cluster nodes {left}.")
        if pids:
            echo(f"Kafka cluster stopped (nodes {', '.join(map(str, sorted(pids)))}).")
        if purge and self.dir.exists():
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)
            echo(f"Cluster data deleted ({self.dir}).")
        return bool(pids)

    def status(self, with_topics: bool = True) -> BrokerStatus:
        running = self.running_nodes()
        st = BrokerStatus(
            self.bootstrap_servers,
            bool(running),
            False,
            kafka_version=self.settings.kafka_version,
            pid=self.node_pid(running[0]) if running else None,
            log_file=str(self.dir),
        )
        st.nodes = [  # type: ignore[attr-defined]
            {**n, "pid": self.node_pid(n["node_id"])} for n in self.nodes()
        ]
        if running and with_topics:
            from clickstream.ingest.kafka_io import describe_topics

            st.topics = describe_topics(self.live_bootstrap_servers())
        return st

    def live_bootstrap_servers(self) -> str:
        """The addresses of the nodes running now (`bootstrap_servers` lists every node, stopped
        ones too), for clients that connect while a node is down."""
        live = set(self.running_nodes())
        return ",".join(f"127.0.0.1:{n['port']}" for n in self.nodes() if n["node_id"] in live)

    # -- internals -----------------------------------------------------------------------------
    def _write_properties(self, node: dict, voters: str, brokers: int) -> None:
        d = self.node_dir(node["node_id"])
        d.mkdir(parents=True, exist_ok=True)
        rf, isr = str(min(3, brokers)), str(max(1, min(2, brokers - 1)))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node["node_id"]),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node['port']},"
            f"CONTROLLER://127.0.0.1:{node['controller_port']}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node['port']}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(d / "data"),
            "num.partitions": "3",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            "unclean.leader.election.enable": "false",
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

    def _format(self, node_id: int, cid: str) -> None:
        props = self.node_dir(node_id) / "server.properties"
        cmd = self._java(node_id, "256m") + [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cid,
            "-c",
            str(props),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise BrokerError(
                f"Formatting node {node_id}'s storage failed:\n"
                + (out.stdout + out.stderr).strip()[-2000:]
            )

    def _start(self, node_id: int) -> None:

        d = self.node_dir(node_id)
        heap = os.environ.get("CLICKSTREAM_BROKER_HEAP", "384m")
        log = open(d / "broker.log", "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(
            self._java(node_id, heap) + ["kafka.Kafka", str(d / "server.properties")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
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

    def _wait_for_all(self, brokers: int) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        retried: dict[int, bool] = {}

        def formed() -> bool:
            dead = [n["node_id"] for n in self.nodes() if not self._starting_or_running(n)]
            for node_id in dead:
                code = self._procs[node_id].returncode if node_id in self._procs else None
                if retried.get(node_id):
                    tail = (self.node_dir(node_id) / "broker.log").read_text(errors="replace")
                    raise GaveUp(
                        f"node {node_id} exited (exit status {code}); its log is "
                        f"{self.node_dir(node_id) / 'broker.log'}; last lines:\n"
                        + "\n".join(tail.splitlines()[-15:])
                    )
                retried[node_id] = True  # once: a node that dies at birth gets a second start
                self._start(node_id)
            wait_for_broker(self.bootstrap_servers, timeout_s=5)
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
            try:
                return len(admin.describe_cluster().get("brokers", [])) >= brokers
            finally:
                admin.close()

        wait_until(
            formed,
            START_TIMEOUT_S,
            f"the {brokers}-node cluster to form (logs in {self.dir})",
            retry_on=(BrokerNotReachable, KafkaError, OSError),
            error=BrokerError,
        )
