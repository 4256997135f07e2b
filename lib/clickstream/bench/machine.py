"""The machine a benchmark ran on, described once for every `clickstream bench ...`.

Figures from a shared 2-core laptop and a 64-core server are not comparable, and other work on
the machine lowers every figure, so each benchmark prints this beside its results.
"""

from __future__ import annotations

import os
import platform

from clickstream.config import Settings
from clickstream.errors import ClickstreamError


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def crc32c_implementation() -> str:
    """How kafka-python computes record-batch checksums: the C extension or pure Python."""
    try:
        import crc32c  # noqa: F401

        return "C extension"
    except ImportError:
        return "pure Python (pip install crc32c to speed kafka-python up)"


def _confluent_version() -> str:
    try:
        import confluent_kafka
    except ImportError:
        return "not installed"
    return f"{confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})"


def machine_info(settings: Settings | None = None, kafka: str | None = None) -> dict:
    """CPU, the cores this process may use, RAM, OS, load, and the versions of what is measured."""
    import kafka as kafka_python
    import psutil

    from clickstream.config import get_settings
    from clickstream.local.java import java_info

    try:
        java = java_info().version
    except ClickstreamError:
        java = "not found"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        # Other processes share the cores: a busy machine lowers every figure.
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cores": cores,
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "java": java,
        "kafka": kafka or (settings or get_settings()).kafka_version,
        "kafka_python": kafka_python.__version__,
        "crc32c": crc32c_implementation(),
        "confluent_kafka": _confluent_version(),
    }


def machine_line(m: dict) -> str:
    """One line: CPU, cores, RAM, OS, load, Python and Java."""
    load = m.get("load_avg_1m")
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, {m['os']}"
        + (f", load average {load:.1f}" if load is not None else "")
        + f", Python {m['python']}, Java {m['java']}"
    )
