"""The course: helpers the notebooks share, one module of exercise checks per notebook, and the
runner that executes the notebooks headless.

- `clickstream.course.notebook`: what every notebook calls at its start and end (a broker,
  fresh topics, groups and directories, the JVM's output kept out of the cells, a long command
  shown as it runs, a server left running); the names are re-exported here.
- `clickstream.course.checks`: `attempt`, `ExerciseError` and what the checks share, including
  running a learner's streaming query.
- `clickstream.course.truth`: ground truth from the simulator's records, in plain Python.
- one module per notebook, named after it (`setup_and_checks` for 00 to `scaling_out` for 10):
  its checks, re-exporting `attempt`, so a notebook imports them from one place.
- `clickstream.course.runner`: papermill over every notebook (`clickstream course execute`)
  and the isolation of a test session.
"""

from clickstream.course.notebook import (
    ensure_broker,
    jvm_output_to,
    notebook_dir,
    reset_dir,
    reset_groups,
    reset_topics,
    run_shown,
    start_background,
    stop_background,
)

__all__ = [
    "ensure_broker",
    "jvm_output_to",
    "notebook_dir",
    "reset_dir",
    "reset_groups",
    "reset_topics",
    "run_shown",
    "start_background",
    "stop_background",
]
