"""Project exceptions: each message names the cause and the next step."""

from __future__ import annotations


class ClickstreamError(Exception):
    """Base class; the CLI prints these without a traceback (use --debug for one)."""


class JavaError(ClickstreamError):
    """Java is missing or its version is not supported."""


class JarResolutionError(ClickstreamError):
    """Kafka or connector jars could not be fetched from the Maven repository."""


class PortInUseError(ClickstreamError):
    """The broker's port is held by another process."""


class BrokerError(ClickstreamError):
    """The local broker failed to start, stop, or answer."""


class BrokerNotReachable(ClickstreamError):
    """No broker answered at the bootstrap address."""


class ConnectorMismatchError(ClickstreamError):
    """The Spark Kafka connector version differs from the installed PySpark."""


class StreamJobError(ClickstreamError):
    """The streaming job cannot start or has failed (a bad setting among them)."""
