"""The dashboard behind jupyter-server-proxy: a JupyterLab launcher tile and the /dashboard/ path.

Registered through the `jupyter_serverproxy_servers` entry point in pyproject.toml, so it works
wherever the package is installed: locally (`make lab`), in the Docker image and on Binder.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def dashboard_command(port: str = "{port}", base_url: str = "{base_url}") -> list[str]:
    """Streamlit on the port the proxy picks, serving under the proxy's path."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        port,
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--server.baseUrlPath",
        f"{base_url}dashboard",
        "--browser.gatherUsageStats",
        "false",
        # The proxy is the only client, and it sits on the same origin as JupyterLab.
        "--server.enableCORS",
        "false",
        "--server.enableXsrfProtection",
        "false",
    ]


def dashboard_server() -> dict:
    """jupyter-server-proxy settings; Streamlit needs more than the default 5 s to start."""
    return {
        "command": dashboard_command(),
        "timeout": 60,
        "absolute_url": True,
        "new_browser_tab": True,
        "launcher_entry": {"enabled": True, "title": "Clickstream dashboard"},
    }
