"""Send records to Kafka at a target rate, with progress and an honest summary.

Sources are simulated traffic (`simulated_records`), a replay file (`replay_records`), or any
iterable of (key, value, event_time_seconds) triples. Delivery failures are retried by the
client (acks=all, idempotence) and then counted and reported, never swallowed.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clickstream.errors import ClickstreamError
from clickstream.events import parse_event_time


class ReplayFileError(ClickstreamError):
    """A replay file is missing or unreadable."""


@dataclass
class ProduceSummary:
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    topic: str = ""
    first_error: str | None = None
    skipped_lines: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (
            f"sent {self.sent:,} records to {self.topic} in {self.seconds:.1f} s "
            f"({self.rate:,.0f} events/s), failed {self.failed:,}"
        )
        if self.first_error:
            text += f"; first error: {self.first_error}"
        return text


Item = tuple[bytes | None, bytes, float | None]  # key, value, event time (epoch s) or None


def simulated_records(config) -> Iterator[Item]:
    """(key, value, event time) from the seeded simulator."""
    from clickstream.simulator import Simulator

    for rec in Simulator(config).records():
        ts = None
        if rec.event is not None:
            try:
                ts = parse_event_time(rec.event["event_time"]).timestamp()
            except (KeyError, TypeError, ValueError):
                ts = None
        yield rec.key, rec.value, ts


def replay_records(path: str | Path, with_times: bool = True) -> Iterator[Item]:
    """Lines of a JSONL(.gz) file, keyed by user_id when the line is a JSON object.

    Every line is sent as it is, byte for byte, including lines that are not valid events: the
    streaming job quarantines those. A line that is not JSON has no key and no event time.
    """
    path = Path(path)
    if not path.exists():
        raise ReplayFileError(f"Replay file {path} does not exist.")
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):  # noqa: B007 - used after the loop
                value = raw.rstrip(b"\r\n")
                if not value:
                    continue
                key, ts = None, None
                try:
                    obj = json.loads(value)
                except ValueError:
                    obj = None
                if isinstance(obj, dict):
                    if isinstance(obj.get("user_id"), str):
                        key = obj["user_id"].encode()
                    if with_times and isinstance(obj.get("event_time"), str):
                        try:
                            ts = parse_event_time(obj["event_time"]).timestamp()
                        except ValueError:
                            ts = None
                yield key, value, ts
    except (EOFError, OSError, zlib.error) as exc:
        raise ReplayFileError(
            f"Replay file {path} is unreadable after line {lineno} ({exc}); the {lineno} lines "
            "before it were read. If it is gzip, the file is probably truncated: regenerate it "
            "or replay its readable part."
        ) from exc


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
) -> ProduceSummary:
    """Send `items` to `topic`; pace by `rate` (events/s) or by event time (`keep_timing`)."""
    from clickstream.kafka_io import make_producer

    own = producer is None
    producer = producer or make_producer(bootstrap)
    summary = ProduceSummary(topic=topic)
    errors: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="ev", desc=f"producing to {topic}", file=sys.stderr)
    started = time.monotonic()
    first_ts: float | None = None
    try:
        for key, value, ts in items:
            if stop is not None and stop.is_set():
                break
            now = time.monotonic() - started
            if duration_s is not None and now >= duration_s:
                break
            if rate:
                due = summary.sent / rate
                if due > now:
                    time.sleep(due - now)
            elif keep_timing and ts is not None:
                first_ts = ts if first_ts is None else first_ts
                due = ts - first_ts
                if due > now:
                    time.sleep(due - now)
            producer.send(topic, key=key, value=value).add_errback(on_error)
            summary.sent += 1
            if bar is not None and summary.sent % 500 == 0:
                bar.update(500)
        producer.flush()
    finally:
        if own:
            producer.close()
        summary.seconds = time.monotonic() - started
        if bar is not None:
            bar.update(summary.sent - bar.n)
            bar.close()
    summary.failed = len(errors)
    summary.sent -= summary.failed
    if errors:
        summary.first_error = f"{type(errors[0]).__name__}: {errors[0]}"
    return summary
