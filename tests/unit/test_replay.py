"""Replay files: what is read from good and bad files, and what `produce` does with it.

No broker: sending goes to a fake backend that records what it was given.
"""

from __future__ import annotations

import gzip
import json
import threading
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from clickstream.cli import main
from clickstream.source.producer import (
    ProducerBackend,
    ReplayFileError,
    produce,
    replay_file,
    replay_records,
)
from clickstream.source.simulator import SAMPLE_PATH

EVENT = {
    "event_id": "e1",
    "event_time": "2026-11-28T10:15:03.120Z",
    "user_id": "u_0042",
    "session_id": "s_1",
    "event_type": "page_view",
    "page": "/",
}


def line(**changes) -> bytes:
    return json.dumps({**EVENT, **changes}, separators=(",", ":")).encode()


class FakeBackend(ProducerBackend):
    """Keeps what was sent; fails the values listed in `fail`."""

    name = "fake"

    def __init__(self, fail: tuple[bytes, ...] = ()):
        super().__init__()
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.fail = fail
        self.flushed = 0

    def send(self, topic, key, value):
        if value in self.fail:
            self._on_error(RuntimeError(f"rejected {value!r}"))
        self.sent.append((topic, key, value))

    def flush(self):
        self.flushed += 1

    def close(self):
        pass


def write(path, lines: list[bytes], gz: bool = False, ending: bytes = b"\n"):
    data = b"".join(x + ending for x in lines)
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


# --- reading ------------------------------------------------------------------------------


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ReplayFileError) as err:
        replay_records(tmp_path / "nope.jsonl.gz")
    assert "nope.jsonl.gz does not exist" in str(err.value)
    assert "clickstream simulate" in str(err.value)


def test_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ReplayFileError, match="is a directory"):
        replay_records(tmp_path)


def test_values_are_sent_byte_for_byte_and_keyed_by_user_id(tmp_path):
    lines = [line(), line(user_id="u_0007", price=19.99), line(event_time="later")]
    items = list(replay_records(write(tmp_path / "a.jsonl", lines)))
    assert [v for _, v, _ in items] == lines
    assert [k for k, _, _ in items] == [b"u_0042", b"u_0007", b"u_0042"]
    # Event times only for parseable ones; replay with timing needs them, the rest go at once.
    expected = datetime(2026, 11, 28, 10, 15, 3, 120_000, tzinfo=UTC).timestamp()
    assert items[0][2] == pytest.approx(expected, abs=1e-6)
    assert items[2][2] is None


def test_times_are_not_parsed_unless_asked(tmp_path):
    items = list(replay_records(write(tmp_path / "a.jsonl", [line()]), with_times=False))
    assert items == [(b"u_0042", line(), None)]


def test_non_json_lines_are_sent_as_is_unkeyed_and_counted(tmp_path):
    lines = [line(), b"GET / HTTP/1.1", line(), b'{"truncated": ', b"\xff\xfe not utf-8"]
    replay = replay_records(write(tmp_path / "a.jsonl", lines))
    items = list(replay)
    assert [v for _, v, _ in items] == lines
    assert [k for k, _, _ in items] == [b"u_0042", None, b"u_0042", None, None]
    assert (replay.not_json, replay.first_not_json_line, replay.lines) == (3, 2, 5)


def test_json_that_is_not_an_event_object_is_sent_unkeyed_but_is_json(tmp_path):
    lines = [b"[1, 2]", b'"text"', line(user_id=42), b'{"no_user": true}']
    replay = replay_records(write(tmp_path / "a.jsonl", lines))
    assert [(k, v) for k, v, _ in replay] == [(None, x) for x in lines]
    assert replay.not_json == 0


def test_blank_lines_are_skipped_and_crlf_endings_dropped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(line() + b"\r\n\r\n   \n" + b"oops\r\n" + line(user_id="u_2"))
    replay = replay_records(path)
    assert [v for _, v, _ in replay] == [line(), b"oops", line(user_id="u_2")]
    # Line numbers are the file's own, blank lines included.
    assert (replay.blank, replay.first_not_json_line, replay.lines) == (2, 4, 5)


def test_gzip_is_recognised_by_content_not_by_name(tmp_path):
    lines = [line(), line(user_id="u_9")]
    plain_named_gz = write(tmp_path / "plain.jsonl.gz", lines)
    gzip_named_plain = write(tmp_path / "packed.jsonl", lines, gz=True)
    for path in (plain_named_gz, gzip_named_plain):
        assert [v for _, v, _ in replay_records(path)] == lines


def test_shipped_sample_reads_completely_with_its_bad_lines_counted():
    raw = gzip.decompress(SAMPLE_PATH.read_bytes()).split(b"\n")
    expected = [x for x in raw if x]
    not_json = []
    for number, value in enumerate(expected, 1):
        try:
            json.loads(value)
        except ValueError:
            not_json.append(number)
    replay = replay_records(SAMPLE_PATH)
    assert [v for _, v, _ in replay] == expected
    assert len(expected) == 15_000 and not_json  # the sample carries malformed lines on purpose
    assert (replay.not_json, replay.first_not_json_line) == (len(not_json), not_json[0])


def truncated_gzip(tmp_path, n: int = 4000) -> tuple:
    lines = [line(event_id=f"e{i:05d}", user_id=f"u_{i % 50:04d}") for i in range(n)]
    packed = gzip.compress(b"".join(x + b"\n" for x in lines))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    return path, lines


def test_truncated_gzip_yields_the_lines_before_the_break_then_names_it(tmp_path):
    path, lines = truncated_gzip(tmp_path)
    got = []
    with pytest.raises(ReplayFileError) as err:
        for _, value, _ in replay_records(path):
            got.append(value)
    assert 0 < len(got) < len(lines)
    assert got == lines[: len(got)]  # a clean prefix, never a partial line
    message = str(err.value)
    assert f"broke after line {len(got):,}" in message
    assert "truncated" in message and str(path) in message


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    packed = bytearray(gzip.compress(b"".join(line() + b"\n" for _ in range(2000))))
    packed[20:60] = b"\x00" * 40
    path.write_bytes(bytes(packed))
    with pytest.raises(ReplayFileError, match="broke after line"):
        list(replay_records(path))


# --- producing from a replay (fake backend) -----------------------------------------------


def test_summary_counts_lines_that_are_not_json(tmp_path):
    path = write(tmp_path / "a.jsonl", [line(), b"not json", line(), b"nor this"])
    fake = FakeBackend()
    summary = replay_file(path, "t", "unused:9092", producer=fake, progress=False)
    assert [v for _, _, v in fake.sent] == [line(), b"not json", line(), b"nor this"]
    assert (summary.sent, summary.failed, summary.not_json) == (4, 0, 2)
    assert "not JSON: 2 (first at line 2)" in summary.line()


def test_truncated_gzip_sends_the_lines_before_the_break_then_raises(tmp_path):
    path, lines = truncated_gzip(tmp_path)
    fake = FakeBackend()
    with pytest.raises(ReplayFileError) as err:
        replay_file(path, "t", "unused:9092", producer=fake, progress=False)
    sent = [v for _, _, v in fake.sent]
    assert sent == lines[: len(sent)] and fake.flushed == 1
    assert err.value.summary.sent == len(sent)
    assert f"after line {len(sent):,}" in str(err.value)


def test_delivery_failures_are_counted_and_the_first_is_named():
    fake = FakeBackend(fail=(b"b", b"d"))
    items = [(None, v, None) for v in (b"a", b"b", b"c", b"d")]
    summary = produce(items, "t", "unused:9092", producer=fake, progress=False)
    assert (summary.sent, summary.failed) == (2, 2)
    assert summary.first_error == "RuntimeError: rejected b'b'"
    assert "failed 2; first error: RuntimeError" in summary.line()


def test_rate_max_records_duration_and_stop_end_a_run():
    items = [(None, b"x", None)] * 1000
    fake = FakeBackend()
    summary = produce(items, "t", "u", rate=100.0, max_records=5, producer=fake, progress=False)
    assert summary.sent == 5
    # Pacing at 100/s: the fifth record is due 40 ms after the first.
    assert summary.seconds >= 0.04

    summary = produce(items, "t", "u", rate=50.0, duration_s=0.1, producer=fake, progress=False)
    assert 1 <= summary.sent < 1000

    stop = threading.Event()
    stop.set()
    assert produce(items, "t", "u", stop=stop, producer=fake, progress=False).sent == 0


def test_keep_timing_follows_event_time_gaps():
    items = [(None, b"a", 100.0), (None, b"not json", None), (None, b"b", 100.2)]
    summary = produce(items, "t", "u", keep_timing=True, producer=FakeBackend(), progress=False)
    assert summary.sent == 3 and summary.seconds >= 0.2


# --- the command line, before any broker is involved --------------------------------------


def test_cli_replay_of_a_missing_file_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["produce", "--replay", str(tmp_path / "gone.jsonl")])
    assert result.exit_code == 1
    assert "error: Replay file" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_two_paces():
    result = CliRunner().invoke(main, ["produce", "--rate", "10", "--keep-timing"])
    assert result.exit_code == 2
    assert "choose one" in result.output
