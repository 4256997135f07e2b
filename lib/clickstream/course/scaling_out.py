"""Exercise checks of notebook 10, scaling out: tasks and waves of a Spark stage, and whether
Kafka accepts a write with some replicas down.

The expected answers are computed here with plain Python (the rules of Spark's scheduler and of
Kafka's replication written out), so a check is independent of what it grades.
"""

from __future__ import annotations

import math
from typing import Any

from clickstream.course.checks import ExerciseError, attempt, call_answer, correct, is_int, need

__all__ = [
    "attempt",
    "check_tasks_and_waves",
    "check_write_accepted",
    "tasks_and_waves",
    "write_accepted",
]


# --- 10.1 partitions, cores and waves of tasks ---------------------------------------------


def tasks_and_waves(partitions: int, executors: int, cores_per_executor: int) -> tuple[int, int]:
    """(tasks at once, waves) of a stage with one task per partition: each core runs one task
    at a time, so at most executors x cores run together, in ceil(partitions / cores) rounds."""
    cores = executors * cores_per_executor
    if partitions <= 0 or cores <= 0:
        return (0, 0)
    return (min(partitions, cores), math.ceil(partitions / cores))


# (what the case shows, Spark partitions, executors, cores per executor)
_WAVES_CASES = [
    ("the six-partition topic in this notebook's local[2] session", 6, 1, 2),
    ("the six-partition topic on the two-worker cluster", 6, 2, 1),
    ("a one-partition topic on the two-worker cluster", 1, 2, 1),
    ("three partitions, two executors with two cores each", 3, 2, 2),
    ("seven partitions, two executors with two cores each", 7, 2, 2),
    ("twelve partitions, three executors with four cores each", 12, 3, 4),
    ("an empty stage", 0, 2, 2),
]


def _waves_hint(got: tuple, partitions: int, executors: int, cores_each: int) -> str:
    cores = executors * cores_each
    at_once, waves = tasks_and_waves(partitions, executors, cores_each)
    if got[0] != at_once:
        if got[0] == cores and partitions < cores:
            return (
                "a task reads one partition, so with fewer partitions than cores the other "
                f"cores have nothing to do: at most {partitions} tasks run at once"
            )
        if got[0] == partitions and partitions > cores:
            return f"each core runs one task at a time: at most {cores} tasks run at once"
        if got[0] == executors:
            return "an executor runs one task per core at a time, not one task"
        return "tasks at once: one per core, and never more than there are partitions"
    if partitions and cores and got[1] == partitions // cores:
        return "a last, partial round of tasks still takes a round: round up"
    if executors and got[1] == math.ceil(partitions / executors):
        return "each executor runs as many tasks at once as it has cores"
    return f"the tasks run in rounds of {cores} (the cores): ceil(partitions / cores) rounds"


def check_tasks_and_waves(answer: Any) -> None:
    """Exercise 10.1: `tasks_and_waves(partitions, executors, cores_per_executor) -> (at once, waves)`."""
    need(
        callable(answer),
        "expected the function tasks_and_waves(partitions, executors, cores_per_executor), got "
        f"{type(answer).__name__}",
    )
    for case, partitions, executors, cores_each in _WAVES_CASES:
        what = f"{partitions} partitions, {executors} executor(s) x {cores_each} core(s): {case}"
        got = call_answer(answer, what, partitions, executors, cores_each)
        need(
            isinstance(got, tuple) and len(got) == 2 and all(is_int(n) for n in got),
            f"expected a pair of ints (tasks at once, waves), got {got!r} for {what}",
        )
        expected = tasks_and_waves(partitions, executors, cores_each)
        if tuple(got) != expected:
            hint = _waves_hint(tuple(got), partitions, executors, cores_each)
            raise ExerciseError(f"for {what} the answer is {expected}, not {tuple(got)}: {hint}")
    correct(f"{len(_WAVES_CASES)} stages, including the session and the cluster of notebook 10")


# --- 10.2 replication: is a write accepted? ------------------------------------------------


def write_accepted(
    replication_factor: int, min_insync_replicas: int, replicas_up: int, acks: int | str
) -> bool:
    """Whether the leader accepts a write (`acks` 1 or "all") while `replicas_up` of the
    partition's replicas are up and in sync."""
    if replicas_up < 1:
        return False  # no replica, no leader
    if str(acks) == "all":
        return replicas_up >= min_insync_replicas
    return True


# (what the case shows, replication factor, min.insync.replicas, replicas up, acks)
_WRITE_CASES = [
    ("all three replicas up", 3, 2, 3, "all"),
    ("one of three down", 3, 2, 2, "all"),
    ("two of three down", 3, 2, 1, "all"),
    ("two of three down, acks=1", 3, 2, 1, 1),
    ("the course's single broker", 1, 1, 1, "all"),
    ("every replica down", 3, 2, 0, "all"),
    ("every replica down, acks=1", 3, 2, 0, 1),
    ("min.insync.replicas 1: acks=all with the leader alone", 3, 1, 1, "all"),
    ("min.insync.replicas above the replication factor", 2, 3, 2, "all"),
]


def _write_hint(got: bool, rf: int, isr: int, up: int, acks: int | str) -> str:
    if up < 1:
        return "with no replica up there is no leader, so nothing can be written"
    if str(acks) != "all":
        return (
            "acks=1 waits for the leader only: the write is accepted while the leader is up "
            "(and lost if it dies before a follower copied it); min.insync.replicas applies to "
            "acks=all"
        )
    if isr > rf:
        return (
            "a topic whose min.insync.replicas is above its replication factor can never have "
            "enough replicas in sync: every acks=all write is refused"
        )
    if got:
        return (
            f"with acks=all the leader refuses the write (NotEnoughReplicas) when fewer than "
            f"min.insync.replicas ({isr}) replicas are in sync"
        )
    return (
        f"{up} replica(s) in sync is at least min.insync.replicas ({isr}): the leader accepts "
        "the write, and acknowledges it once every in-sync replica has it"
    )


def check_write_accepted(answer: Any) -> None:
    """Exercise 10.2: `write_accepted(replication_factor, min_insync_replicas, replicas_up, acks)`."""
    need(
        callable(answer),
        "expected the function write_accepted(replication_factor, min_insync_replicas, replicas_up, "
        f"acks), got {type(answer).__name__}",
    )
    for case, rf, isr, up, acks in _WRITE_CASES:
        what = (
            f"replication factor {rf}, min.insync.replicas {isr}, {up} replica(s) up, "
            f"acks={acks} ({case})"
        )
        got = call_answer(answer, what, rf, isr, up, acks)
        need(isinstance(got, bool), f"expected True or False, got {got!r} for {what}")
        expected = write_accepted(rf, isr, up, acks)
        if got != expected:
            verdict = "accepted" if expected else "refused"
            raise ExerciseError(
                f"for {what} the write is {verdict}: {_write_hint(got, rf, isr, up, acks)}"
            )
    correct(f"{len(_WRITE_CASES)} cases, acks=all and acks=1")
