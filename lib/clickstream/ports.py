"""TCP ports on 127.0.0.1: is one taken, by whom, and which are free.

Every server the course starts (brokers, Spark's master and workers, the dashboard, test
databases) binds to 127.0.0.1 only, on a port chosen here or given by the learner.
"""

from __future__ import annotations

import socket


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on (host, port)."""
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
