"""Topics, producers and consumers with kafka-python, configured once for the course."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from clickstream.config import Settings, get_settings
from clickstream.errors import BrokerNotReachable, ClickstreamError
from clickstream.processes import wait_until


def client_security() -> dict:
    """TLS/SASL keyword arguments for kafka-python clients (empty for PLAINTEXT)."""
    from clickstream.ingest.security import get_security

    return get_security().kafka_python()


def _listening(bootstrap: str) -> list[str]:
    """The addresses of `bootstrap` where something accepts TCP connections."""
    from clickstream.ports import port_is_open

    found = []
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        if port.isdigit() and port_is_open(host.strip("[]") or "127.0.0.1", int(port)):
            found.append(address.strip())
    return found


def unreachable(bootstrap: str, last: BaseException | None = None) -> BrokerNotReachable:
    """The error for a bootstrap address where no metadata request succeeded, saying which of
    two different problems it is: nothing listens there, or something does but the broker it
    leads to cannot be reached (a broker advertising an address this machine cannot resolve or
    connect to, such as a container's name)."""
    detail = f" (last error: {type(last).__name__}: {last})" if last else ""
    listening = _listening(bootstrap)
    if listening:
        return BrokerNotReachable(
            f"Something accepts connections at {', '.join(listening)}, but no Kafka metadata "
            f"request succeeded{detail}. Either the client's security settings do not match "
            "that listener (authentication failed, or TLS/SASL is on one side only: see the "
            "KAFKA_SECURITY_PROTOCOL settings), or the broker advertises an address this machine "
            "cannot reach (its advertised.listeners, e.g. a container's name such as "
            "kafka:9092): make it advertise one reachable from here, such as localhost:PORT "
            "for a container with a published port."
        )
    return BrokerNotReachable(
        f"No Kafka broker answered at {bootstrap}{detail}. Start the local one with "
        "`clickstream broker up`, or set KAFKA_BOOTSTRAP_SERVERS to a reachable cluster."
    )


def _bootstrap_errors() -> tuple[type[Exception], ...]:
    """The exceptions kafka-python raises when it cannot reach any broker."""
    import kafka.errors as ke

    names = ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError")
    return tuple(getattr(ke, n) for n in names if hasattr(ke, n))


def _admin(bootstrap: str):
    from kafka import KafkaAdminClient

    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=10000,
            # A broker that answers at all answers within a second or two; give up after 10 s
            # rather than kafka-python's 30 (an unreachable address, a refused login).
            bootstrap_timeout_ms=10000,
            client_id="clickstream-admin",
            **client_security(),
        )
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, exc) from None


@contextmanager
def admin_client(bootstrap: str) -> Iterator:
    """A kafka-python admin client, closed afterwards. A broker that cannot be reached, at
    bootstrap or later (the address it advertises), raises BrokerNotReachable saying which."""
    admin = _admin(bootstrap)
    try:
        yield admin
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, exc) from None
    finally:
        admin.close()


def topic_exists(topic: str, bootstrap: str) -> bool:
    """Whether the cluster at `bootstrap` has `topic` (BrokerNotReachable if none answers)."""
    with admin_client(bootstrap) as admin:
        return topic in admin.list_topics()


def open_consumer(topic: str, bootstrap: str, **options):
    """A kafka-python KafkaConsumer of `topic` with these options and the course's TLS/SASL
    settings; BrokerNotReachable, which names the fix, if no broker answers."""
    from kafka import KafkaConsumer

    try:
        return KafkaConsumer(topic, bootstrap_servers=bootstrap, **{**client_security(), **options})
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, exc) from None


def ensure_topic(
    topic: str,
    partitions: int = 3,
    bootstrap: str | None = None,
    replication_factor: int = 1,
    configs: dict[str, str] | None = None,
) -> bool:
    """Create `topic` unless it exists. True if it was created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    bootstrap = bootstrap or get_settings().bootstrap_servers
    with admin_client(bootstrap) as admin:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics(
                [NewTopic(topic, partitions, replication_factor, topic_configs=configs or {})]
            )
        except TopicAlreadyExistsError:
            return False
        _wait_for_leaders(admin, topic)
        return True


def _wait_for_leaders(admin, topic: str, timeout_s: float = 30) -> None:
    def led() -> bool:
        meta = admin.describe_topics([topic])
        parts = meta[0].get("partitions", []) if meta else []
        return bool(parts) and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in parts)

    wait_until(
        led,
        timeout_s,
        f"every partition of {topic} to have a leader (is every broker up? "
        "`clickstream broker status`)",
        interval_s=0.2,
    )


def delete_topic(topic: str, bootstrap: str | None = None) -> bool:
    """Delete `topic` if it exists (and wait until it is gone). True if it existed."""
    bootstrap = bootstrap or get_settings().bootstrap_servers
    with admin_client(bootstrap) as admin:
        if topic not in admin.list_topics():
            return False
        admin.delete_topics([topic])
        wait_until(
            lambda: topic not in admin.list_topics(),
            30,
            f"the broker to finish deleting {topic}",
            interval_s=0.2,
        )
        return True


def topic_offsets(topic: str, bootstrap: str | None = None) -> dict[int, tuple[int, int]]:
    """{partition: (earliest offset, latest offset)} for `topic`."""
    from kafka import KafkaConsumer, TopicPartition

    bootstrap = bootstrap or get_settings().bootstrap_servers
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, client_id="clickstream-offsets", **client_security()
        )
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, exc) from None
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        return {tp.partition: (begin[tp], end[tp]) for tp in tps}
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, exc) from None
    finally:
        consumer.close()


def message_count(topic: str, bootstrap: str | None = None) -> int:
    """Records currently held by `topic` (latest minus earliest offsets, summed)."""
    return sum(e - b for b, e in topic_offsets(topic, bootstrap).values())


def describe_topics(bootstrap: str, include_internal: bool = False) -> dict[str, dict]:
    """{topic: {"partitions": n, "messages": n}} for every topic on the cluster."""
    with admin_client(bootstrap) as admin:
        names = sorted(t for t in admin.list_topics() if include_internal or not t.startswith("__"))
        described = admin.describe_topics(names) if names else []
    out = {}
    for item in described:
        name = item.get("name") or item.get("topic")
        out[name] = {
            "partitions": len(item.get("partitions", [])),
            "messages": message_count(name, bootstrap),
        }
    return out


def producer_config(bootstrap: str, **overrides) -> dict:
    """kafka-python producer settings tuned for throughput without giving up safety."""
    # Measured with `clickstream bench produce`: compression matters most, because kafka-python
    # checksums each batch (CRC32C) after compressing it (in C with the `crc32c` package, a
    # course dependency; in pure Python without it, three times slower); lz4 shrinks our JSON about 5x and halves CPU per event against no
    # compression (gzip costs more than it saves). Batches of 256 KiB to 1 MiB measured the
    # same, 64 KiB worse. kafka-python 3 has no `buffer_memory`: `producer.KafkaPythonBackend`
    # bounds the records in flight instead. Idempotence keeps per-key order with 5 in flight.
    config = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        # Batches fill in well under 20 ms at full speed; at 40 events/s it adds <20 ms latency.
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 5,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "client_id": "clickstream-producer",
        "compression_type": _best_codec(),
    }
    config.update(overrides)
    return config


def _best_codec() -> str | None:
    """lz4 when its codec is installed (fast, good ratio for JSON), else gzip."""
    try:
        import lz4.frame  # noqa: F401

        return "lz4"
    except ImportError:
        return "gzip"


def make_producer(bootstrap: str | None = None, **overrides):
    from kafka import KafkaProducer

    bootstrap = bootstrap or get_settings().bootstrap_servers
    try:
        return KafkaProducer(**{**client_security(), **producer_config(bootstrap, **overrides)})
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, exc) from None


def send_all(
    records: Iterable[tuple[bytes | None, bytes]],
    topic: str,
    bootstrap: str | None = None,
    producer=None,
) -> int:
    """Send (key, value) pairs and flush; raise if any send failed. Returns the count sent."""
    own = producer is None
    producer = producer or make_producer(bootstrap)
    failures: list[Exception] = []
    sent = 0
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value).add_errback(failures.append)
            sent += 1
        producer.flush()
    finally:
        if own:
            producer.close()
    if failures:
        raise ClickstreamError(
            f"{len(failures)} of {sent} records could not be delivered to {topic}: {failures[0]}"
        )
    return sent


def read_all(
    topic: str, bootstrap: str | None = None, timeout_s: float = 10, max_records: int | None = None
) -> Iterator:
    """Every record currently in `topic`, from the beginning, then stop (ConsumerRecords)."""
    from kafka import KafkaConsumer, TopicPartition

    bootstrap = bootstrap or get_settings().bootstrap_servers
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        **client_security(),
        enable_auto_commit=False,
        client_id="clickstream-reader",
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        seen = 0
        for msg in consumer:
            yield msg
            seen += 1
            tp = TopicPartition(msg.topic, msg.partition)
            if msg.offset + 1 >= end[tp]:
                remaining.discard(tp)
            if not remaining or (max_records and seen >= max_records):
                break
    finally:
        consumer.close()


def settings_bootstrap(settings: Settings | None = None) -> str:
    return (settings or get_settings()).bootstrap_servers
