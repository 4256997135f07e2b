"""Send records to Kafka at a target rate, with progress and an honest summary.

Sources are simulated traffic (`simulated_records`), a replay file (`replay_records`), or any
iterable of (key, value, event_time_seconds) triples. Two client backends sit behind the same
interface: kafka-python (the course's client) and confluent-kafka (optional, faster). Both use
acks=all with idempotence, partition by murmur2 of the key (as Kafka's Java client does), and
retry failed deliveries inside the client; what still fails is counted and reported, never
swallowed.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clickstream.errors import ClickstreamError
from clickstream.events import parse_event_time

BACKENDS = ("kafka-python", "confluent")


class ReplayFileError(ClickstreamError):
    """A replay file is missing or unreadable."""


class ProduceError(ClickstreamError):
    """Producing stopped early; `summary` says what was delivered before it stopped."""

    summary: ProduceSummary | None = None


@dataclass
class ProduceSummary:
    """What a produce run delivered: counts, time, the first error, lines that were not JSON."""

    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    topic: str = ""
    backend: str = ""
    first_error: str | None = None
    not_json: int = 0
    first_not_json_line: int | None = None
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (
            f"sent {self.sent:,} records to {self.topic} in {self.seconds:.1f} s "
            f"({self.rate:,.0f} events/s), failed {self.failed:,}"
        )
        if self.not_json:
            text += f"; not JSON: {self.not_json:,} (first at line {self.first_not_json_line})"
        if self.first_error:
            text += f"; first error: {self.first_error}"
        if self.interrupted:
            text += "; interrupted"
        return text


Item = tuple[bytes | None, bytes, float | None]  # key, value, event time (epoch s) or None


# --- sources ------------------------------------------------------------------------------


def simulated_records(config, with_times: bool = True) -> Iterator[Item]:
    """(key, value, event time) from the seeded simulator; times only when `with_times`."""
    from clickstream.source.simulator import Simulator

    records = Simulator(config).records()
    if not with_times:
        # The hot path of `produce` and the benchmark: no per-event time parsing.
        for rec in records:
            yield rec.key, rec.value, None
        return
    for rec in records:
        ts = None
        if rec.event is not None:
            try:
                ts = parse_event_time(rec.event["event_time"]).timestamp()
            except (KeyError, TypeError, ValueError):
                ts = None
        yield rec.key, rec.value, ts


def _generator_main(config_json: str, with_times: str, chunk: str) -> None:
    """Child process of `generated_in_background`: pickled chunks of items on stdout."""
    import pickle

    from clickstream.source.simulator import SimConfig

    out = sys.stdout.buffer
    size = int(chunk)
    try:
        config = SimConfig.from_dict(json.loads(config_json))
        batch: list = []
        for item in simulated_records(config, with_times=with_times == "1"):
            batch.append(item)
            if len(batch) >= size:
                pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
                batch = []
        if batch:
            pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(None, out)
    except BrokenPipeError:  # the parent stopped reading (a duration, a stop): nothing to say
        return
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
        pickle.dump(f"{type(exc).__name__}: {exc}", out)
    out.flush()


def generated_in_background(config, with_times: bool = False, chunk: int = 2048) -> Iterator[Item]:
    """`simulated_records(config)`, generated in a separate process and handed over in chunks.

    The same items in the same order (one generator, one pipe). Generating costs about 7 us per
    event in Python; in a process of its own it runs on a second core while this process spends
    its time in the Kafka client. The pipe's buffer bounds memory (the generator waits when the
    reader is behind); closing the iterator early (a duration or a stop) stops the process.
    """
    import pickle
    import subprocess

    code = "import sys; from clickstream.source.producer import _generator_main; _generator_main(*sys.argv[1:])"
    args = [json.dumps(config.to_dict()), "1" if with_times else "0", str(chunk)]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        while True:
            try:
                batch = pickle.load(proc.stdout)
            except EOFError:
                proc.wait(timeout=10)
                raise ClickstreamError(
                    f"the simulator process ended unexpectedly (exit code {proc.returncode}): "
                    + proc.stderr.read().decode(errors="replace").strip()[-500:]
                ) from None
            if batch is None:
                return
            if isinstance(batch, str):
                raise ClickstreamError(f"the simulator failed: {batch}")
            yield from batch
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.stdout.close()
        proc.stderr.close()
        proc.wait(timeout=10)


class ReplayFile:
    """The lines of a JSONL file (gzip-compressed or not) as (key, value, event time) triples.

    Every non-blank line is sent byte for byte (without its line ending), including lines that
    are not valid events: the streaming job quarantines those. A JSON object is keyed by its
    `user_id` when that is a string; other lines have no key and no event time, and lines that
    are not JSON at all are counted (`not_json`, `first_not_json_line`). Blank lines are
    skipped. If the file breaks part-way (a truncated or corrupt gzip), the lines before the
    break are yielded and then `ReplayFileError` names the last good line.
    """

    def __init__(self, path: str | Path, with_times: bool = True):
        self.path = Path(path)
        self.with_times = with_times
        self.lines = 0
        self.not_json = 0
        self.first_not_json_line: int | None = None
        self.blank = 0
        if not self.path.exists():
            raise ReplayFileError(
                f"Replay file {self.path} does not exist. Check the path, or record one with "
                f"`clickstream simulate -o {self.path.name}`."
            )
        if self.path.is_dir():
            raise ReplayFileError(f"Replay file {self.path} is a directory; give a .jsonl(.gz).")
        try:
            with self.path.open("rb") as fh:
                # Decide by content, not by name: a .gz that is plain text still replays.
                self.gzipped = fh.read(2) == b"\x1f\x8b"
        except OSError as exc:
            raise ReplayFileError(f"Replay file {self.path} cannot be read: {exc}.") from exc

    def __iter__(self) -> Iterator[Item]:
        opener = gzip.open if self.gzipped else open
        path, with_times = self.path, self.with_times
        loads = json.loads
        try:
            with opener(path, "rb") as fh:
                for raw in fh:
                    self.lines += 1
                    value = raw.rstrip(b"\n")
                    if value.endswith(b"\r"):
                        value = value[:-1]
                    if not value.strip():
                        self.blank += 1
                        continue
                    key, ts = None, None
                    try:
                        obj = loads(value)
                    except ValueError:  # includes bytes that are not UTF-8
                        self._count_not_json()
                        yield None, value, None
                        continue
                    if isinstance(obj, dict):
                        user = obj.get("user_id")
                        if isinstance(user, str):
                            key = user.encode()
                        when = obj.get("event_time")
                        if with_times and isinstance(when, str):
                            try:
                                ts = parse_event_time(when).timestamp()
                            except ValueError:
                                ts = None
                    yield key, value, ts
        except (EOFError, OSError, zlib.error) as exc:
            good = self.lines
            raise ReplayFileError(
                f"Replay file {path} broke after line {good:,} ({type(exc).__name__}: {exc}); "
                f"it is probably truncated or corrupt. Lines 1-{good:,} were read (and sent); "
                "the rest is lost: regenerate the file or fetch it again."
            ) from exc

    def _count_not_json(self) -> None:
        self.not_json += 1
        if self.first_not_json_line is None:
            self.first_not_json_line = self.lines


def replay_records(path: str | Path, with_times: bool = True) -> ReplayFile:
    """The lines of a JSONL(.gz) file, keyed by user_id; see `ReplayFile` for bad lines."""
    return ReplayFile(path, with_times=with_times)


# --- backends -----------------------------------------------------------------------------


class ProducerBackend:
    """One Kafka client behind the interface `produce` uses: send, flush, close, failures."""

    name = "?"

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None
        self._lock = threading.Lock()

    def _on_error(self, exc: BaseException | str) -> None:
        # Called from the client's I/O thread: count under a lock.
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = _describe(exc)

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        """The settings that matter for speed and safety, for reports."""
        return {}


class KafkaPythonBackend(ProducerBackend):
    """kafka-python's KafkaProducer with the course settings (`kafka_io.producer_config`)."""

    name = "kafka-python"
    # kafka-python 3 has no buffer_memory bound: wait for old records past this many in flight.
    MAX_IN_FLIGHT = 262_144
    _MARK_EVERY = 8192

    def __init__(self, bootstrap: str, producer=None, **overrides):
        super().__init__()
        from kafka.partitioner.default import murmur2

        from clickstream.ingest.kafka_io import make_producer, producer_config

        self._murmur2 = murmur2
        self.config = producer_config(bootstrap, **overrides)
        self.own = producer is None
        self.producer = producer if producer is not None else make_producer(bootstrap, **overrides)
        self._send = self.producer.send
        self._count = 0
        self._marks: deque = deque()
        self._closed = False
        self._wait_s = self.config.get("delivery_timeout_ms", 120_000) / 1000 + 5
        # Partition keyed records here, as kafka-python's default partitioner would (murmur2 of
        # the key over the sorted partitions), but once per key rather than once per record:
        # its pure-Python murmur2 and metadata look-ups cost about a quarter of send().
        own_partitioner = producer is None and "partitioner" not in overrides
        self._partitions: dict[str, tuple[list[int], dict[bytes, int]]] | None = (
            {} if own_partitioner else None
        )

    def _partition_for(self, topic: str, key: bytes) -> int:
        cached = self._partitions.get(topic)
        if cached is None:
            parts = sorted(self.producer.partitions_for(topic))
            cached = self._partitions[topic] = (parts, {})
        parts, by_key = cached
        partition = by_key.get(key)
        if partition is None:
            partition = by_key[key] = parts[(self._murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return partition

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            if key is not None and self._partitions is not None:
                partition = self._partition_for(topic, key)
                future = self._send(topic, key=key, value=value, partition=partition)
            else:
                future = self._send(topic, key=key, value=value)
        except Exception as exc:  # noqa: BLE001 - turned into a clear, non-swallowed error
            raise ProduceError(
                f"kafka-python could not queue a record for {topic}: {_describe(exc)}. "
                "Check that the broker is up (`clickstream broker status`) and the topic exists."
            ) from exc
        future.add_errback(self._on_error)
        self._count += 1
        if self._count % self._MARK_EVERY == 0:
            if self._partitions is not None:
                self._partitions.clear()  # follow partition changes; bounds the key cache
            self._marks.append(future)
            if len(self._marks) * self._MARK_EVERY > self.MAX_IN_FLIGHT:
                try:
                    self._marks.popleft().get(timeout=self._wait_s)
                except Exception:  # noqa: BLE001 - its errback has counted any failure
                    pass

    def flush(self) -> None:
        from kafka.errors import UnknownError

        deadline = time.monotonic() + self._wait_s
        while True:
            try:
                self.producer.flush()
                return
            except UnknownError:
                # kafka-python 3.0 raises "Future not done" when a batch was split after
                # MessageSizeTooLarge during the flush (cf. KAFKA-9312 in the Java client).
                # The halves are queued again, so flushing again waits for them.
                if time.monotonic() > deadline:
                    raise ProduceError(
                        "kafka-python could not flush its queued records within the delivery "
                        "timeout; some records may not have been delivered."
                    ) from None

    def close(self) -> None:
        if self.own and not self._closed:
            self._closed = True
            self.flush()
            self.producer.close()

    def describe(self) -> dict:
        keys = ("acks", "enable_idempotence", "compression_type", "batch_size", "linger_ms")
        return {k: self.config.get(k) for k in keys}


def confluent_config(bootstrap: str, **overrides) -> dict:
    """confluent-kafka (librdkafka) settings equivalent to `kafka_io.producer_config`."""
    from clickstream.ingest.kafka_io import producer_config

    base = producer_config(bootstrap)
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": base["linger_ms"],
        "batch.size": base["batch_size"],
        "compression.type": base["compression_type"] or "none",
        # Java-compatible partitioning, so a key lands where kafka-python puts it.
        "partitioner": "murmur2_random",
        "delivery.timeout.ms": base["delivery_timeout_ms"],
        # Callbacks only for failures: successes are counted as sent minus failed.
        "delivery.report.only.error": True,
        "queue.buffering.max.kbytes": 256 * 1024,
        "client.id": base["client_id"],
    }
    config.update(overrides)
    return config


class ConfluentBackend(ProducerBackend):
    """confluent-kafka's Producer (librdkafka, C): same semantics, several times faster."""

    name = "confluent"
    _POLL_EVERY = 1024

    def __init__(self, bootstrap: str, **overrides):
        super().__init__()
        try:
            from confluent_kafka import KafkaException, Producer
        except ImportError:
            raise ClickstreamError(
                "The confluent backend needs confluent-kafka: `pip install -e '.[fast]'` "
                "(or `pip install confluent-kafka`), or use --backend kafka-python."
            ) from None
        self.config = confluent_config(bootstrap, **overrides)
        self.config["error_cb"] = self._on_client_error
        self.producer = Producer(self.config)
        try:
            # librdkafka connects lazily; ask for metadata now so a wrong address fails fast.
            self.producer.list_topics(timeout=10)
        except KafkaException:
            from clickstream.ingest.kafka_io import unreachable

            self.producer.close()
            raise unreachable(bootstrap) from None
        self._produce = self.producer.produce
        self._poll = self.producer.poll
        self._count = 0
        self._closed = False
        self.fatal: BaseException | None = None

    def _on_client_error(self, err) -> None:
        # Connection hiccups are retried by librdkafka; only fatal errors end the run.
        if err.fatal():
            self.fatal = RuntimeError(str(err))

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._on_error(f"{err.name()}: {err.str()}")

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._produce(topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._poll(0.05)  # the local queue is full: let deliveries drain it
            except Exception as exc:  # noqa: BLE001 - turned into a clear error
                raise ProduceError(
                    f"confluent-kafka could not queue a record for {topic}: {exc}"
                ) from exc
        self._count += 1
        if self._count % self._POLL_EVERY == 0:
            self._poll(0)
            if self.fatal is not None:
                raise ProduceError(f"confluent-kafka stopped with a fatal error: {self.fatal}")

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.producer.flush()
            self.producer.close()  # stops librdkafka's threads now, not at garbage collection

    def describe(self) -> dict:
        keys = ("acks", "enable.idempotence", "compression.type", "batch.size", "linger.ms")
        return {k: self.config.get(k) for k in keys}


def _describe(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    name, text = type(exc).__name__, str(exc)
    # kafka-python's broker errors print as "[Error 10] Name: None"; their description says why.
    description = getattr(exc, "description", None)
    if description and (not exc.args or exc.args == (None,)):
        return f"{name}: {description}"
    return text if name in text else f"{name}: {text}"


def make_backend(name: str, bootstrap: str, **overrides) -> ProducerBackend:
    """A producer backend by name: "kafka-python" or "confluent"."""
    if name == "kafka-python":
        return KafkaPythonBackend(bootstrap, **overrides)
    if name == "confluent":
        return ConfluentBackend(bootstrap, **overrides)
    raise ClickstreamError(f"Unknown producer backend {name!r}: use one of {', '.join(BACKENDS)}.")


# --- the send loop ------------------------------------------------------------------------


def produce(
    items: Iterable[Item],
    topic: str,
    bootstrap: str,
    rate: float | None = None,
    duration_s: float | None = None,
    keep_timing: bool = False,
    progress: bool = True,
    total: int | None = None,
    producer=None,
    stop: threading.Event | None = None,
    backend: str = "kafka-python",
    max_records: int | None = None,
) -> ProduceSummary:
    """Send `items` to `topic`; pace by `rate` (events/s) or by event time (`keep_timing`).

    Stops at the end of `items`, after `duration_s`, after `max_records`, when `stop` is set,
    or on Ctrl-C (the summary then says "interrupted"). Queued records are always flushed
    first. If the source or the client fails part-way, a ClickstreamError is raised after the
    flush, with the summary of what was delivered as its `summary` attribute.
    """
    client, own = _client_for(producer, bootstrap, backend)
    summary = ProduceSummary(topic=topic, backend=client.name)
    bar = _progress_bar(topic, total) if progress else None
    pace = _Pace(rate, keep_timing, duration_s, stop, bar)
    send, every = client.send, pace.every
    sent = 0
    failure: ClickstreamError | None = None
    try:
        try:
            for key, value, ts in items:
                if sent % every == 0 and pace.should_stop(sent, ts):
                    break
                send(topic, key, value)
                sent += 1
                if max_records is not None and sent >= max_records:
                    break
        except ClickstreamError as exc:
            failure = exc
        except KeyboardInterrupt:
            summary.interrupted = True
        client.flush()
    finally:
        summary.seconds = time.monotonic() - pace.started
        if own:
            client.close()
        if bar is not None:
            bar.update(sent - bar.n)
            bar.close()
    _add_outcome(summary, client, sent, items)
    if failure is not None:
        failure.summary = summary
        raise failure
    return summary


def _client_for(producer, bootstrap: str, backend: str) -> tuple[ProducerBackend, bool]:
    """The backend to send with, and whether `produce` owns it (and so closes it)."""
    if isinstance(producer, ProducerBackend):
        return producer, False
    if producer is not None:
        return KafkaPythonBackend(bootstrap, producer=producer), True
    return make_backend(backend, bootstrap), True


def _progress_bar(topic: str, total: int | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", desc=f"producing to {topic}", file=sys.stderr, leave=False)


def _add_outcome(summary: ProduceSummary, client: ProducerBackend, sent: int, items) -> None:
    """What was delivered, what failed, and the lines of a replay file that were not JSON."""
    summary.failed = client.failed
    summary.sent = sent - client.failed
    summary.first_error = client.first_error
    if isinstance(items, ReplayFile):
        summary.not_json = items.not_json
        summary.first_not_json_line = items.first_not_json_line


class _Pace:
    """When to send the next record, and whether to stop: the deadline, `stop`, the progress
    bar, and the rate or the event times to keep."""

    def __init__(self, rate, keep_timing: bool, duration_s, stop, bar):
        self.rate, self.stop, self.bar = rate, stop, bar
        self.paced = bool(rate) or keep_timing
        # Paced runs check the clock every record; flat-out runs every 256 (cheap enough, and
        # duration/stop/progress stay accurate to a few milliseconds).
        self.every = 1 if self.paced else 256
        self.started = time.monotonic()
        self.deadline = self.started + duration_s if duration_s is not None else None
        self.next_tick = self.started
        self.first_ts: float | None = None

    def should_stop(self, sent: int, ts: float | None) -> bool:
        """Update the progress bar and wait until the next record is due; True to stop now."""
        now = time.monotonic()
        if (self.deadline is not None and now >= self.deadline) or (
            self.stop is not None and self.stop.is_set()
        ):
            return True
        if self.bar is not None and now >= self.next_tick:
            self.bar.update(sent - self.bar.n)
            self.next_tick = now + 0.2
        if not self.paced:
            return False
        due = self._due(sent, ts, now)
        return due > now and not _sleep_until(due, self.deadline, self.stop)

    def _due(self, sent: int, ts: float | None, now: float) -> float:
        if self.rate:
            return self.started + sent / self.rate
        if ts is not None:
            self.first_ts = ts if self.first_ts is None else self.first_ts
            return self.started + (ts - self.first_ts)
        return now


def _sleep_until(due: float, deadline: float | None, stop: threading.Event | None) -> bool:
    """Sleep until `due` in short slices; False if the deadline or `stop` came first."""
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        if stop is not None and stop.is_set():
            return False
        if now >= due:
            return True
        # Short slices keep Ctrl-C, `stop` and the deadline responsive during long gaps.
        limit = min(due, deadline) if deadline is not None else due
        time.sleep(min(limit - now, 0.25))


def replay_file(
    path: str | Path,
    topic: str,
    bootstrap: str,
    keep_timing: bool = False,
    **kwargs,
) -> ProduceSummary:
    """Send every line of a JSONL(.gz) file to `topic` (see `ReplayFile` for bad lines)."""
    return produce(
        replay_records(path, with_times=keep_timing),
        topic,
        bootstrap,
        keep_timing=keep_timing,
        **kwargs,
    )
