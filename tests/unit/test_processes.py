"""wait_until and process handling through psutil."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from clickstream.errors import BrokerError
from clickstream.processes import GaveUp, WaitTimeout, alive, command_line, stop, wait_until


def test_wait_until_returns_what_the_condition_found():
    calls = []

    def third_time():
        calls.append(1)
        return "ready" if len(calls) == 3 else None

    assert wait_until(third_time, 5, "the third call", interval_s=0.01) == "ready"
    assert len(calls) == 3


def test_wait_until_says_what_it_waited_for_and_the_last_error():
    def refused():
        raise ConnectionRefusedError("nobody listens on 9092")

    with pytest.raises(WaitTimeout) as info:
        wait_until(refused, 0.3, "the broker", interval_s=0.05, retry_on=(OSError,))
    text = str(info.value)
    assert text.startswith("Gave up after 0.3 s waiting for the broker")
    assert "ConnectionRefusedError: nobody listens on 9092" in text
    assert isinstance(info.value.last, ConnectionRefusedError)


def test_wait_until_raises_other_errors_and_stops_on_gave_up():
    with pytest.raises(KeyError):
        wait_until(lambda: {}["x"], 5, "a key", retry_on=(OSError,))
    calls = []

    def exited():
        calls.append(1)
        raise GaveUp("the process exited with code 1")

    with pytest.raises(BrokerError, match="Stopped waiting for the node: the process exited"):
        wait_until(exited, 60, "the node", error=BrokerError)
    assert len(calls) == 1  # no retry after GaveUp


def test_stop_ends_a_process_tree_and_alive_checks_the_command_line():
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", script])
    parent = psutil.Process(proc.pid)
    wait_until(lambda: parent.children(), 10, "the child to start", interval_s=0.05)
    child = parent.children()[0].pid
    assert alive(proc.pid) and alive(proc.pid, "time.sleep(300)")
    assert not alive(proc.pid, "kafka.Kafka")  # a reused pid is not ours
    assert "time.sleep(300)" in command_line(proc.pid)
    assert stop(proc.pid, timeout_s=5) == []
    assert not alive(proc.pid) and not alive(child)


def test_a_hard_stop_kills_at_once_and_a_missing_pid_is_fine():
    # A process that ignores SIGTERM: only SIGKILL ends it.
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", ignores])
    wait_until(lambda: alive(proc.pid, "SIG_IGN"), 10, "the process", interval_s=0.05)
    assert stop(proc.pid, hard=True) == []
    assert not alive(proc.pid)
    assert stop(None) == [] and not alive(None)
