"""Exercise checks of notebook 09 (`clickstream.course.operating_the_job`).

Every check must accept the reference answer and name the usual mistakes; the example
checkpoints must read the same with `clickstream.process.lag` as Spark's own; the batch plan must be
the one Spark 4.2 ran (numbers measured with availableNow and maxOffsetsPerTrigger).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from clickstream.course import operating_the_job as ex
from clickstream.course.checks import CORRECT, ExerciseError
from clickstream.process.lag import committed_offsets


def lag_from_checkpoint(checkpoint, topic, end_offsets):
    """The reference answer to 09.1."""
    commits = [int(p.name) for p in (Path(checkpoint) / "commits").iterdir() if p.name.isdigit()]
    last = (Path(checkpoint) / "offsets" / str(max(commits))).read_text().splitlines()[-1]
    import json

    position = {int(p): o for p, o in json.loads(last)[topic].items()}
    return {p: end - position.get(p, 0) for p, end in end_offsets.items()}


def batches_by_rule(backlog, cap):
    return len(ex.plan_batches(backlog, cap))


def test_example_checkpoints_read_like_spark_ones(tmp_path):
    ex.write_spark_checkpoint(tmp_path, "t", [{0: 5, 1: 7}, {0: 9, 1: 12}, {0: 20, 1: 20}], 1)
    assert committed_offsets(tmp_path) == {"t": {0: 9, 1: 12}}
    assert sorted(p.name for p in (tmp_path / "commits").iterdir()) == [
        ".0.crc",
        ".1.crc",
        "0",
        "1",
    ]


def test_checkpoint_lag_accepts_the_reference_and_names_mistakes(capsys):
    ex.check_checkpoint_lag(lag_from_checkpoint)
    assert CORRECT in capsys.readouterr().out

    def newest_planned(checkpoint, topic, end_offsets):
        import json

        ids = [int(p.name) for p in (Path(checkpoint) / "offsets").iterdir() if p.name.isdigit()]
        last = (Path(checkpoint) / "offsets" / str(max(ids))).read_text().splitlines()[-1]
        position = {int(p): o for p, o in json.loads(last)[topic].items()}
        return {p: end - position.get(p, 0) for p, end in end_offsets.items()}

    with pytest.raises(ExerciseError, match="no commits/3"):
        ex.check_checkpoint_lag(newest_planned)

    def sorted_as_text(checkpoint, topic, end_offsets):
        import json

        names = [p.name for p in (Path(checkpoint) / "commits").iterdir() if p.name.isdigit()]
        last = (Path(checkpoint) / "offsets" / max(names)).read_text().splitlines()[-1]
        position = {int(p): o for p, o in json.loads(last)[topic].items()}
        return {p: end - position.get(p, 0) for p, end in end_offsets.items()}

    with pytest.raises(ExerciseError, match="as numbers"):
        ex.check_checkpoint_lag(sorted_as_text)

    def forgets_new_partitions(checkpoint, topic, end_offsets):
        import json

        commits = [
            int(p.name) for p in (Path(checkpoint) / "commits").iterdir() if p.name.isdigit()
        ]
        last = (Path(checkpoint) / "offsets" / str(max(commits))).read_text().splitlines()[-1]
        position = {int(p): o for p, o in json.loads(last)[topic].items()}
        return {p: end_offsets[p] - o for p, o in position.items()}

    with pytest.raises(ExerciseError, match="added to the topic after the last batch"):
        ex.check_checkpoint_lag(forgets_new_partitions)

    with pytest.raises(ExerciseError, match="raised ValueError"):
        ex.check_checkpoint_lag(lambda c, t, e: {int(p.name): 0 for p in Path(c).iterdir()})


def test_plan_batches_is_what_spark_ran():
    # Measured with Spark 4.2: availableNow, maxOffsetsPerTrigger, a 3-partition topic.
    backlog = {0: 1370, 1: 1025, 2: 1255}
    assert ex.plan_batches(backlog, None) == [3650]
    assert ex.plan_batches(backlog, 1000) == [998, 998, 999, 655]
    assert ex.plan_batches(backlog, 500) == [498, 498, 499, 498, 498, 499, 498, 162]
    assert ex.plan_batches(backlog, 200)[:10] == [199, 199, 199, 199, 198, 199, 198, 198, 198, 199]
    assert ex.plan_batches(backlog, 200)[10:] == [199, 198, 198, 199, 198, 199, 198, 199, 76]
    assert ex.plan_batches({0: 0}, 10) == []
    assert ex.plan_batches({0: 5000, 1: 1}, 1000)[0] == 1000  # the small partition is not starved


def test_micro_batches_accepts_the_rule_and_explains_ceil(capsys):
    ex.check_micro_batches(
        batches_by_rule, {0: 1370, 1: 1025, 2: 1255}, {None: 1, 1000: 4, 200: 19}
    )
    assert "including the 3 runs measured above" in capsys.readouterr().out

    def ceil(backlog, cap):
        total = sum(backlog.values())
        return 0 if not total else 1 if cap is None else math.ceil(total / cap)

    with pytest.raises(ExerciseError, match=r"ceil\(total / cap\)"):
        ex.check_micro_batches(ceil)
    with pytest.raises(ExerciseError, match="one batch"):
        ex.check_micro_batches(lambda b, c: len(ex.plan_batches(b, c or 100)))
    with pytest.raises(ExerciseError, match="expected an int"):
        ex.check_micro_batches(lambda b, c: 2.0)


def test_catch_up(capsys):
    ex.check_catch_up(ex.catch_up_seconds)
    assert CORRECT in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="keep arriving"):
        ex.check_catch_up(lambda lag, i, p: lag / p if p > i else math.inf)
    with pytest.raises(ExerciseError, match="math.inf"):
        ex.check_catch_up(lambda lag, i, p: lag / (p - i) if p != i else math.inf)
    with pytest.raises(ExerciseError, match="expected the function"):
        ex.check_catch_up(40.0)
