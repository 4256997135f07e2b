"""A local, single-node Apache Kafka broker in KRaft mode, run from its own jars.

`up` formats storage once, starts the broker in the background on 127.0.0.1 and waits until it
answers a metadata request; `down` stops it and leaves no process behind. Topic data survives
`down`/`up`; `down(purge=True)` deletes it. Logs go to <state dir>/broker/broker.log. The broker
starts from the class-data archive `clickstream setup` records (about 4 s instead of 6).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import BrokerError, BrokerNotReachable, PortInUseError
from clickstream.jars import ensure_kafka_jars, kafka_jars_dir
from clickstream.local.java import (
    JavaInfo,
    check_java_for_kafka,
    class_archive_options,
    class_archive_path,
    extra_java_options,
    record_class_archive,
)
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

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int, avoid: tuple[int, ...] = ()) -> list[int]:
    """`count` different TCP ports on 127.0.0.1 that nobody listens on right now, none of them
    in `avoid`. All are held until all are chosen: ports picked one at a time can repeat."""
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


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


def who_listens(port: int) -> str:
    """A short description of the process listening on `port`, when the OS tells us."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid:
                    proc = psutil.Process(conn.pid)
                    return f"pid {conn.pid} ({' '.join(proc.cmdline())[:120]})"
    except Exception:  # noqa: BLE001 - best effort only, the error message still stands
        pass
    return "another process"


def cluster_id() -> str:
    """A random KRaft cluster id (22 characters of URL-safe base64, as Kafka's tools make)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # the storage tool would read it as an option
            return cid


class LocalBroker:
    """The course's own broker, managed through files in <state dir>/broker."""

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
        self.settings = settings or get_settings()
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
    def meta(self) -> dict:
        return read_json(self.meta_file)

    def pid(self) -> int | None:
        return kafka_pid(self.pid_file)

    def is_running(self) -> bool:
        return self.pid() is not None

    @property
    def port(self) -> int:
        return self.settings.local_port

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

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
        port = self.port
        if port_is_open("127.0.0.1", port):
            raise PortInUseError(
                f"Port {port} on 127.0.0.1 is in use by {who_listens(port)}, which is not the "
                f"course's broker. Stop that process, or start ours on another port: "
                f"`clickstream broker up --port {port + 100}` (the other commands then find it "
                "on its own)."
            )
        check_java_for_kafka()
        jars = ensure_kafka_jars(self.settings)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.meta()
        controller_port = int(meta.get("controller_port") or 0)
        formatted = (self.data_dir / "meta.properties").exists()
        if formatted and meta.get("port") != port:
            raise BrokerError(
                f"The broker's storage in {self.data_dir} was formatted for port "
                f"{meta.get('port')}, not {port}. Start it on port {meta.get('port')}, or "
                "delete its data with `clickstream broker down --purge` first."
            )
        if not formatted or not controller_port:
            (controller_port,) = free_ports(1, avoid=(port,))
        self._write_properties(port, controller_port)
        if not formatted:
            self._format(jars, meta.get("cluster_id") or cluster_id(), port, controller_port)
        started = time.monotonic()
        proc = self._start(jars, die_with_parent)
        try:
            wait_for_broker(self.bootstrap_servers, timeout_s=START_TIMEOUT_S, process=proc)
        except BrokerNotReachable as exc:
            stop(proc.pid)
            raise BrokerError(
                f"The Kafka broker did not start ({exc}). Its log is {self.log_file}; last "
                f"lines:\n{self.log_tail()}"
            ) from None
        echo(
            f"Kafka {self.settings.kafka_version} broker up at {self.bootstrap_servers} "
            f"(pid {proc.pid}, {time.monotonic() - started:.1f} s; log: {self.log_file})."
        )
        return self.status(with_topics=False)

    def down(self, purge: bool = False, echo=print) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s). True if one was running."""
        if self.settings.is_external:
            echo("KAFKA_BOOTSTRAP_SERVERS is set: the external cluster is not ours to stop.")
            return False
        pid = self.pid()
        if pid is None:
            echo("No local Kafka broker running.")
        else:
            if stop(pid):
                raise BrokerError(f"Could not stop the broker process {pid}.")
            echo(f"Kafka broker stopped (pid {pid}).")
        self.pid_file.unlink(missing_ok=True)
        if purge and self.dir.exists():
            import shutil

            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.meta_file.unlink(missing_ok=True)
            echo(f"Broker data deleted ({self.data_dir}).")
        return pid is not None

    def status(self, with_topics: bool = True) -> BrokerStatus:
        if self.settings.is_external:
            st = BrokerStatus(self.settings.external_bootstrap, True, True)
        else:
            pid = self.pid()
            st = BrokerStatus(
                self.bootstrap_servers,
                pid is not None,
                False,
                kafka_version=self.settings.kafka_version,
                pid=pid,
                log_file=str(self.log_file),
            )
        if st.running and with_topics:
            from clickstream.ingest.kafka_io import describe_topics

            st.topics = describe_topics(st.bootstrap_servers)
        return st

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log written)"

    # -- internals -------------------------------------------------------------------------
    def _write_properties(self, port: int, controller_port: int) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
            "listeners": ",".join(
                [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}"]
                + [f"{n}://127.0.0.1:{p}" for n, (p, _) in self.extra_listeners.items()]
            ),
            "advertised.listeners": ",".join(
                [f"PLAINTEXT://127.0.0.1:{port}"]
                + [f"{n}://127.0.0.1:{p}" for n, (p, _) in self.extra_listeners.items()]
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
                + [f"{n}:{proto}" for n, (_, proto) in self.extra_listeners.items()]
            ),
            "log.dirs": str(self.data_dir),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.num.partitions": "3",
            "log.retention.hours": "168",
            "auto.create.topics.enable": "true",
        }
        props.update(self.extra_properties)
        self.properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        meta = self.meta()
        meta.update(port=port, controller_port=controller_port)
        self.meta_file.write_text(json.dumps(meta, indent=2))

    def _java_cmd(self, jars: list[Path], heap: str | None = None) -> list[str]:
        java = check_java_for_kafka()
        heap = heap or os.environ.get("CLICKSTREAM_BROKER_HEAP", "512m")
        return [
            java.executable,
            f"-Xmx{heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            *extra_java_options(),
            *class_archive_options(kafka_class_archive(self.settings, java)),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp",
            str(kafka_jars_dir(self.settings) / "*"),
        ]

    def _format(self, jars, cid: str, port: int, controller_port: int) -> None:
        cmd = self._java_cmd(jars, heap="256m") + [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cid,
            "-c",
            str(self.properties),
            "--standalone",
            *self.format_args,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise BrokerError(
                "Formatting the broker's storage failed:\n"
                + (out.stdout + out.stderr).strip()[-2000:]
            )
        meta = self.meta()
        meta.update(cluster_id=cid, port=port, controller_port=controller_port)
        self.meta_file.write_text(json.dumps(meta, indent=2))

    def _start(self, jars, die_with_parent: bool = False) -> subprocess.Popen:
        cmd = self._java_cmd(jars) + ["kafka.Kafka", str(self.properties)]
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        log.write(f"\n==== starting broker {time.strftime('%Y-%m-%dT%H:%M:%S')} ====\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal or notebook does not reach it
            close_fds=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        log.close()
        self.pid_file.write_text(str(proc.pid))
        return proc


def kafka_class_archive(settings: Settings | None = None, java: JavaInfo | None = None) -> Path:
    """Where the class-data archive for this Kafka and this Java lives (it may not exist)."""
    settings = settings or get_settings()
    return class_archive_path(
        settings.cache_dir / "kafka-classes",
        f"kafka-{settings.kafka_version}",
        java or check_java_for_kafka(),
        kafka_jars_dir(settings).glob("*.jar"),
    )


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


def wait_for_broker(
    bootstrap: str, timeout_s: float = 30, process: subprocess.Popen | None = None
) -> None:
    """Block until a metadata request is answered; raise BrokerNotReachable otherwise."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from clickstream.ingest.kafka_io import client_security

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
        last = f"{type(exc.last).__name__}: {exc.last}" if exc.last else "no answer"
        raise BrokerNotReachable(
            f"No Kafka broker answered at {bootstrap} within {timeout_s:.0f} s ({last}). "
            "Start the local one with `clickstream broker up`, or check KAFKA_BOOTSTRAP_SERVERS."
        ) from None
