"""Exercise checks of notebook 10 (`clickstream.course.scaling_out`).

Every check must accept the reference answer and name the usual mistakes.
"""

from __future__ import annotations

import math

import pytest

from clickstream.course import scaling_out as ex
from clickstream.course.checks import CORRECT, ExerciseError


def test_tasks_and_waves_rule():
    assert ex.tasks_and_waves(6, 1, 2) == (2, 3)
    assert ex.tasks_and_waves(1, 2, 1) == (1, 1)
    assert ex.tasks_and_waves(7, 2, 2) == (4, 2)
    assert ex.tasks_and_waves(0, 2, 2) == (0, 0)


def test_tasks_and_waves_accepts_the_rule_and_names_mistakes(capsys):
    ex.check_tasks_and_waves(ex.tasks_and_waves)
    assert CORRECT in capsys.readouterr().out

    def every_core_busy(partitions, executors, cores):
        return (executors * cores, math.ceil(partitions / (executors * cores)))

    with pytest.raises(ExerciseError, match="fewer partitions than cores"):
        ex.check_tasks_and_waves(every_core_busy)

    def one_task_each(partitions, executors, cores):
        return (partitions, 1 if partitions else 0)

    with pytest.raises(ExerciseError, match="one task at a time"):
        ex.check_tasks_and_waves(one_task_each)

    def rounds_down(partitions, executors, cores):
        return (min(partitions, executors * cores), partitions // (executors * cores))

    with pytest.raises(ExerciseError, match="round up"):
        ex.check_tasks_and_waves(rounds_down)

    def per_executor(partitions, executors, cores):
        return (min(partitions, executors * cores), math.ceil(partitions / executors))

    with pytest.raises(ExerciseError, match="as many tasks at once as it has cores"):
        ex.check_tasks_and_waves(per_executor)

    with pytest.raises(ExerciseError, match="a pair of ints"):
        ex.check_tasks_and_waves(lambda p, e, c: [2, 3])
    with pytest.raises(ExerciseError, match="raised ZeroDivisionError"):
        ex.check_tasks_and_waves(lambda p, e, c: (min(p, e * c), p // 0))


def test_write_accepted_accepts_the_rule_and_names_mistakes(capsys):
    ex.check_write_accepted(ex.write_accepted)
    assert CORRECT in capsys.readouterr().out

    def ignores_acks(rf, isr, up, acks):
        return up >= max(1, isr)

    with pytest.raises(ExerciseError, match="acks=1 waits for the leader only"):
        ex.check_write_accepted(ignores_acks)

    def leader_is_enough(rf, isr, up, acks):
        return up >= 1

    with pytest.raises(ExerciseError, match="NotEnoughReplicas"):
        ex.check_write_accepted(leader_is_enough)

    def majority(rf, isr, up, acks):
        return up > rf // 2 if acks == "all" else up >= 1

    with pytest.raises(ExerciseError, match="at least min.insync.replicas"):
        ex.check_write_accepted(majority)

    def forgets_the_leader(rf, isr, up, acks):
        return up >= isr if acks == "all" else True

    with pytest.raises(ExerciseError, match="no leader"):
        ex.check_write_accepted(forgets_the_leader)

    def caps_at_rf(rf, isr, up, acks):
        return up >= min(isr, rf) and up >= 1 if acks == "all" else up >= 1

    with pytest.raises(ExerciseError, match="above its replication factor"):
        ex.check_write_accepted(caps_at_rf)

    with pytest.raises(ExerciseError, match="True or False"):
        ex.check_write_accepted(lambda rf, isr, up, acks: "accepted")
