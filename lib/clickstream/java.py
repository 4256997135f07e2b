"""Find Java and check its version before anything starts a JVM."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clickstream.errors import JavaError

SPARK_JAVA = (17, 21)  # Spark 4 runs on these; 23+ fails with security-manager errors
KAFKA_MIN_JAVA = 17

INSTALL_HINT = (
    "Install Java 17: Debian/Ubuntu `sudo apt-get install openjdk-17-jre-headless`, "
    "macOS `brew install openjdk@17`, conda `conda install -c conda-forge openjdk=17`; "
    "then point JAVA_HOME at it (or put its bin/ first on PATH)."
)


@dataclass(frozen=True)
class JavaInfo:
    executable: str
    major: int
    version: str


def find_java_executable() -> str:
    """JAVA_HOME/bin/java if JAVA_HOME is set, else `java` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        if candidate.exists():
            return str(candidate)
        raise JavaError(
            f"JAVA_HOME is set to {home}, but {candidate} does not exist. {INSTALL_HINT}"
        )
    found = shutil.which("java")
    if not found:
        raise JavaError(
            f"No Java found (JAVA_HOME is not set and `java` is not on PATH). {INSTALL_HINT}"
        )
    return found


def parse_java_version(text: str) -> tuple[int, str]:
    """Major version and full version string from `java -version` output."""
    match = re.search(r'version "([^"]+)"', text)
    if not match:
        raise JavaError(
            f"Could not read the Java version from: {text.strip()[:200]!r}. {INSTALL_HINT}"
        )
    version = match.group(1)
    parts = version.split(".")
    major = int(parts[1]) if parts[0] == "1" else int(re.match(r"\d+", parts[0]).group(0))
    return major, version


def java_info() -> JavaInfo:
    """The Java that Kafka and Spark will use."""
    exe = find_java_executable()
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise JavaError(f"Could not run {exe}: {exc}. {INSTALL_HINT}") from exc
    major, version = parse_java_version(out.stderr + out.stdout)
    return JavaInfo(exe, major, version)


def check_java_for_spark() -> JavaInfo:
    """Raise JavaError unless Java is 17 or 21."""
    info = java_info()
    if info.major not in SPARK_JAVA:
        extra = (
            " (Java 23 and later fail inside Spark with 'getSubject is supported only if a "
            "security manager is allowed')"
            if info.major >= 23
            else ""
        )
        raise JavaError(
            f"Java {info.version} found at {info.executable}; Spark 4 needs Java 17 or 21"
            f"{extra}. {INSTALL_HINT}"
        )
    return info


def check_java_for_kafka() -> JavaInfo:
    """Raise JavaError unless Java is 17 or newer (Kafka 4 brokers need 17+)."""
    info = java_info()
    if info.major < KAFKA_MIN_JAVA:
        raise JavaError(
            f"Java {info.version} found at {info.executable}; the Kafka 4 broker needs Java 17 "
            f"or newer. {INSTALL_HINT}"
        )
    return info


def extra_java_options() -> list[str]:
    """CLICKSTREAM_JAVA_OPTIONS, split: added to every JVM the course starts (Spark, brokers)."""
    return shlex.split(os.environ.get("CLICKSTREAM_JAVA_OPTIONS", ""))
