"""Waiting for things and stopping the processes the library starts.

`wait_until` is the one polling loop of the library (on tenacity): it calls a condition until
it holds, and when it gives up it always says what it waited for and the last error seen.
`alive`, `command_line` and `stop` go through psutil: a zombie counts as gone, a child is reaped,
and `stop` ends a whole process tree (SIGTERM, then SIGKILL for what is left).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TypeVar

import psutil
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from clickstream.errors import ClickstreamError

T = TypeVar("T")


class WaitTimeout(ClickstreamError):
    """What `wait_until` waited for did not happen in time."""


class GaveUp(Exception):
    """Raised by a condition to stop waiting at once (a process it waits on has exited)."""


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (),
    error: type[ClickstreamError] = WaitTimeout,
) -> T:
    """Call `condition` every `interval_s` until it returns something truthy, and return that.

    Exceptions in `retry_on` count as "not yet"; `GaveUp` stops at once. After `timeout_s`
    (or on `GaveUp`) raises `error` with "waiting for {what}" and the last error seen.
    """
    retrying = Retrying(
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(interval_s),
        retry=retry_if_result(lambda result: not result) | retry_if_exception_type(retry_on),
    )
    try:
        return retrying(condition)
    except GaveUp as exc:
        failure = error(f"Stopped waiting for {what}: {exc}")
        failure.last = exc
    except RetryError as exc:
        last = exc.last_attempt.exception()
        detail = f" (last error: {type(last).__name__}: {last})" if last else ""
        failure = error(f"Gave up after {timeout_s:g} s waiting for {what}{detail}.")
        failure.last = last  # the last error seen, for callers that word their own message
    raise failure


def die_with_parent() -> None:
    """For `subprocess.Popen(preexec_fn=...)`: the child gets SIGTERM when the process that
    started it dies, even by SIGKILL (Linux's parent-death signal; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def alive(pid: int | None, marker: str | None = None) -> bool:
    """`pid` runs (a zombie does not count) and, if given, its command line holds `marker`:
    a pid file whose number now belongs to another program is not ours."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker is None or marker in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return marker is None


def command_line(pid: int) -> str:
    """The process's command line, '' if it is gone or hidden."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def stop(
    pid: int | None,
    timeout_s: float = 30,
    kill_after_s: float = 10,
    tree: bool = True,
    hard: bool = False,
):
    """SIGTERM to `pid` (and, with `tree`, every process under it), SIGKILL to what is left
    after `timeout_s`; with `hard`, SIGKILL at once (a crash). Returns the processes still alive
    after that (empty: all stopped)."""
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if tree else [])]
    except psutil.NoSuchProcess:
        return []
    left = procs
    if not hard:
        _send(procs, psutil.Process.terminate)
        _, left = psutil.wait_procs(procs, timeout=timeout_s)  # reaps our own children too
    _send(left, psutil.Process.kill)
    _, left = psutil.wait_procs(left, timeout=kill_after_s)
    return left


def _send(procs, signal_method) -> None:
    for proc in procs:
        try:
            signal_method(proc)
        except psutil.NoSuchProcess:
            pass
