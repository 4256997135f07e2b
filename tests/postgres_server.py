"""A throwaway PostgreSQL server for the tests, from the distribution's binaries.

initdb into a temporary directory, then `postgres` on 127.0.0.1 and a free port with its unix
socket in that directory: nothing of a system-wide cluster is used or touched. PostgreSQL refuses
to run as root, so under root (CI, containers) the server runs as the `postgres` user the Debian
package creates (else `nobody`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

APT_PACKAGE = "postgresql"
SUPERUSER = "clickstream"


class PostgresMissing(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding initdb and postgres (pg_config, Debian's layout, or PATH)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))

    def major(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    candidates += [
        Path(p).parent
        for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major, reverse=True)
    ]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    raise PostgresMissing(
        "PostgreSQL's server (initdb, postgres) is not installed: install the Debian package "
        f"`{APT_PACKAGE}` (sudo apt-get install {APT_PACKAGE}; .ci/run does), or set "
        "CLICKSTREAM_SKIP_POSTGRES=1 to skip the PostgreSQL store's tests."
    )


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/clickstream_test"

    def _as_owner(self) -> dict:
        """subprocess arguments that run the server as a non-root user when we are root."""
        if os.geteuid() != 0:
            return {}
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
            except KeyError:
                continue
            return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        raise PostgresMissing("Running as root and neither a postgres nor a nobody user exists.")

    def start(self, timeout: float = 60.0) -> None:
        owner = self._as_owner()
        if owner:
            os.chown(self.root, owner["user"], owner["group"])
        data, log = self.root / "data", self.root / "server.log"
        init = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust"]
            + ["--no-locale", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            cwd=self.root,
            **owner,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1"]
                + ["-p", str(self.port), "-k", str(self.root)]
                + ["-c", "fsync=off", "-c", "synchronous_commit=off"]
                + ["-c", "full_page_writes=off", "-c", "max_connections=40"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                **owner,
            )
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(
                    f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres",
                    autocommit=True,
                    connect_timeout=2,
                ) as conn:
                    conn.execute("CREATE DATABASE clickstream_test")
                return
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"PostgreSQL did not start on port {self.port} ({exc}); its log:\n{tail}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: ends open sessions
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(port: int) -> PostgresServer:
    """A running server on 127.0.0.1:`port` with an empty database `clickstream_test`."""
    bindir = find_bindir()
    # Not under pytest's tmp_path: its parents are private to the user running the tests, and
    # the server may run as another user.
    root = Path(tempfile.mkdtemp(prefix="clickstream-postgres-"))
    server = PostgresServer(bindir, root, port)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
