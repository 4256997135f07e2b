"""Find Java and check its version before anything starts a JVM."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
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


# Class-data sharing (AppCDS): a JVM that exits with -XX:ArchiveClassesAtExit writes the classes
# it loaded, parsed and verified, to an archive; a JVM started with -XX:SharedArchiveFile maps
# them instead of loading them one by one. Spark and the brokers start seconds faster from one.


def class_archive_path(folder: Path, name: str, java: JavaInfo, classpath: Iterable[Path]) -> Path:
    """The archive for this Java and these jars: another Java, another jar set, the same jars
    elsewhere or the same jars installed again (the JVM checks the class path it was recorded
    with, and each jar's size and modification time) gets an archive of its own."""

    def jar(path: Path) -> str:
        try:
            st = Path(path).stat()
        except OSError:
            return str(path)
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"

    key = "\n".join([java.executable, java.version, *sorted(jar(p) for p in classpath)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return folder / f"{name}-java-{java.major}-{digest}.jsa"


def class_archive_options(archive: Path) -> list[str]:
    """JVM options that map `archive` if it exists; a JVM that finds it unusable (another
    build of Java, another class path) goes on without it, silently."""
    if not archive.is_file():
        return []
    return [f"-XX:SharedArchiveFile={archive}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]


def record_class_archive(
    archive: Path, code: str, what: str, echo: Callable[[str], None] = print, env=None
) -> Path | None:
    """Run the Python `code` in a fresh interpreter (with `env` added; a None value unsets)
    whose JVMs (started with CLICKSTREAM_JAVA_OPTIONS) write their classes to `archive` when
    they exit; the last one to exit writes the archive. Never fatal:
    without an archive, `what` starts as before, only more slowly."""
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f"{archive.name}.{os.getpid()}.partial")
    options = os.environ.get("CLICKSTREAM_JAVA_OPTIONS", "")
    record = f"-XX:ArchiveClassesAtExit={shlex.quote(str(partial))}"
    env = {**os.environ, **(env or {}), "CLICKSTREAM_JAVA_OPTIONS": f"{options} {record}"}
    env = {k: v for k, v in env.items() if v is not None}  # None: unset
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900
        )
        if out.returncode == 0 and partial.is_file() and partial.stat().st_size > 0:
            os.replace(partial, archive)
            return archive
        lines = (out.stderr or out.stdout).strip().splitlines()[-5:]
        echo(
            f"The class archive for {what} could not be recorded; {what} will start without it "
            "(more slowly):" + "".join(f"\n  {line}" for line in lines)
        )
    except subprocess.TimeoutExpired:
        echo(f"Recording the class archive for {what} took over 15 minutes; skipped.")
    finally:
        partial.unlink(missing_ok=True)
    return None
