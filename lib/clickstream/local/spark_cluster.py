"""A real Spark standalone cluster on this machine: one master and N workers, started from the
installed PySpark (no separate Spark download), bound to 127.0.0.1.

`clickstream spark-cluster up --workers 2` then `clickstream stream --master spark://127.0.0.1:7077`
runs the same job with executors on the workers, as it would on a cluster of machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from clickstream.config import Settings, get_settings
from clickstream.errors import ClickstreamError, PortInUseError
from clickstream.local.broker import free_port, port_is_open
from clickstream.local.java import check_java_for_spark, extra_java_options
from clickstream.process.spark import LOG4J_CONFIG
from clickstream.processes import GaveUp, WaitTimeout, alive, stop, wait_until

MASTER_PORT = 7077
START_TIMEOUT_S = 90


class ClusterError(ClickstreamError):
    """The standalone cluster failed to start or answer."""


@dataclass
class ClusterStatus:
    master_url: str | None
    running: bool
    master_pid: int | None = None
    web_ui: str | None = None
    workers: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


class SparkCluster:
    """Master and workers as background processes with pid files in <state dir>/spark-cluster."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.dir = self.settings.state_dir / "spark-cluster"
        self.meta_file = self.dir / "cluster.json"

    def meta(self) -> dict:
        try:
            return json.loads(self.meta_file.read_text())
        except (OSError, ValueError):
            return {}

    def _alive(self, pid: int | None, marker: str) -> bool:
        return alive(pid, marker)

    def master_pid(self) -> int | None:
        pid = self.meta().get("master_pid")
        return pid if self._alive(pid, "deploy.master.Master") else None

    def is_running(self) -> bool:
        return self.master_pid() is not None

    def _env(self) -> dict:
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(spark_home()),
            PYSPARK_PYTHON=sys.executable,
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_NO_DAEMONIZE="1",
            SPARK_LOG_DIR=str(self.dir),
            SPARK_WORKER_DIR=str(self.dir / "work"),
            SPARK_DAEMON_JAVA_OPTS=" ".join(
                [f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG}", *extra_java_options()]
            ),
        )
        return env

    def _spawn(self, name: str, args: list[str]) -> int:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), *args],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return proc.pid

    def up(
        self,
        workers: int = 2,
        cores: int = 1,
        memory: str = "1g",
        port: int | None = None,
        echo=print,
    ) -> ClusterStatus:
        """Start a master and `workers` workers (idempotent); wait until every worker is ALIVE."""
        if self.is_running():
            st = self.status()
            echo(f"Spark cluster already running at {st.master_url} ({len(st.workers)} workers).")
            return st
        check_java_for_spark()
        port = port or MASTER_PORT
        if port_is_open("127.0.0.1", port):
            raise PortInUseError(
                f"Port {port} on 127.0.0.1 is in use; start the cluster on another port with "
                f"`clickstream spark-cluster up --port {port + 1}`."
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        meta = self._start_master(port)
        self._start_workers(meta, workers, cores, memory)
        st = self.status()
        echo(
            f"Spark standalone cluster up at {meta['master_url']}: {len(st.workers)} workers x "
            f"{cores} core(s), {memory} each ({time.monotonic() - started:.1f} s; web UI "
            f"{st.web_ui}; logs in {self.dir})."
        )
        return st

    def _start_master(self, port: int) -> dict:
        """Spawn the master, record it in the meta file, and wait until it answers; returns
        the meta file's contents."""
        web = free_port()
        master = self._spawn(
            "master",
            [
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(web),
            ],
        )
        url = f"spark://127.0.0.1:{port}"
        meta = {"master_pid": master, "master_url": url, "web_port": web, "worker_pids": []}
        self.meta_file.write_text(json.dumps(meta))
        self._wait(lambda: self.master_state() is not None, "the master to answer", master)
        return meta

    def _start_workers(self, meta: dict, workers: int, cores: int, memory: str) -> None:
        """Spawn `workers` workers, add them to the meta file, and wait until all registered."""
        for i in range(workers):
            pid = self._spawn(
                f"worker-{i + 1}",
                [
                    "org.apache.spark.deploy.worker.Worker",
                    meta["master_url"],
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(self.dir / "work"),
                ],
            )
            meta["worker_pids"].append(pid)
        self.meta_file.write_text(json.dumps(meta))
        self._wait(
            lambda: len(self._alive_workers()) >= workers,
            f"{workers} workers to register",
            meta["master_pid"],
        )

    def master_state(self) -> dict | None:
        """The master's own report (its web UI's `/json/`): workers, `activeapps` and
        `completedapps`; None if no master of this cluster answers."""
        web = self.meta().get("web_port")
        if not web:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/json/", timeout=2) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def applications(self, name: str | None = None, wait_s: float = 10) -> list[dict]:
        """The applications the master ran or runs (running first), only those called `name`
        if given; each has its `id`, `name`, `cores`, `state`. Waits up to `wait_s` for a busy
        master to answer."""
        state = wait_until(
            self.master_state,
            wait_s,
            "the Spark master's web UI to answer: is the cluster running? "
            "(`clickstream spark-cluster status`)",
            error=ClusterError,
        )
        apps = [*state.get("activeapps", []), *state.get("completedapps", [])]
        return [a for a in apps if name is None or a.get("name") == name]

    def _alive_workers(self) -> list[dict]:
        data = self.master_state() or {}
        return [w for w in data.get("workers", []) if w.get("state") == "ALIVE"]

    def _wait(self, check, what: str, master_pid: int) -> None:
        def ready() -> bool:
            if check():
                return True
            if not alive(master_pid):
                raise GaveUp("the Spark master exited")
            return False

        try:
            wait_until(ready, START_TIMEOUT_S, what)
        except WaitTimeout as exc:
            tail = (self.dir / "master.log").read_text(errors="replace").splitlines()[-15:]
            self.down(echo=lambda m: None)
            raise ClusterError(
                f"{exc} Logs are in {self.dir}; the master's last lines:\n" + "\n".join(tail)
            ) from None

    def status(self) -> ClusterStatus:
        meta = self.meta()
        if not self.is_running():
            return ClusterStatus(None, False)
        workers = [
            {
                "id": w.get("id"),
                "cores": w.get("cores"),
                "memory_mb": w.get("memory"),
                "state": w.get("state"),
            }
            for w in self._alive_workers()
        ]
        return ClusterStatus(
            meta["master_url"],
            True,
            meta["master_pid"],
            f"http://127.0.0.1:{meta['web_port']}",
            workers,
        )

    def down(self, echo=print) -> bool:
        """Stop workers, then the master; no process is left behind."""
        meta = self.meta()
        pids = [(p, "deploy.worker.Worker") for p in meta.get("worker_pids", [])]
        pids.append((meta.get("master_pid"), "deploy.master.Master"))
        stopped = 0
        for pid, marker in pids:
            if self._alive(pid, marker):
                if stop(pid, timeout_s=20, kill_after_s=5):  # the JVM and its launcher
                    raise ClusterError(f"Could not stop the Spark process {pid}.")
                stopped += 1
        self.meta_file.unlink(missing_ok=True)
        echo(
            f"Spark cluster stopped ({stopped} processes)."
            if stopped
            else "No Spark cluster running."
        )
        return stopped > 0
