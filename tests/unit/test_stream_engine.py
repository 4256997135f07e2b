"""The streaming job's engine without Spark: exact metrics whatever the micro-batches."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from clickstream import events
from clickstream.serving import open_store
from clickstream.simulator import SimConfig
from clickstream.stream import (
    JOB,
    CheckpointMismatchError,
    Engine,
    JobState,
    Spec,
    StateFiles,
    StreamConfig,
    StreamJobError,
    duration_us,
    funnel_stage,
    page_kind,
)
from tests.stream_truth import Params, build_stream, diff, expected_store, store_rows

US = 1_000_000


def run_engine(records, params: Params, sizes, store_url: str, seed: int = 0) -> int:
    """Feed `records` in batches of sizes drawn from `sizes`; pickle the state between
    batches as the job does; write each batch to the store. Returns the number of batches."""
    slide = params.slide_s or params.window_s
    spec = Spec(params.window_s * US, slide * US, params.watermark_s * US, params.gap_s * US)
    engine = Engine(spec)
    state = JobState()
    rng = random.Random(seed)
    batch = i = 0
    with open_store(store_url) as store:
        while i < len(records):
            n = rng.choice(sizes)
            chunk = [(0, j, records[j][1]) for j in range(i, min(i + n, len(records)))]
            result = engine.process(state, chunk)
            state = pickle.loads(pickle.dumps(state))
            assert store.write_batch(JOB, batch, result.rows)
            i, batch = i + n, batch + 1
    return batch


@pytest.fixture(scope="module")
def records():
    return build_stream()


@pytest.mark.parametrize(
    ("params", "sizes"),
    [
        (Params(), [300]),
        (Params(), [17, 120, 300, 2]),
        (Params(window_s=10, slide_s=5), [150, 250]),
        (Params(window_s=20, watermark_s=20, gap_s=15), [60]),
    ],
    ids=["tumbling-300", "tumbling-mixed", "sliding", "other-settings"],
)
def test_engine_equals_ground_truth_whatever_the_batches(records, params, sizes, tmp_path):
    truth = expected_store(records, params)
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    batches = run_engine(records, params, sizes, url)
    assert batches > 10
    with open_store(url) as store:
        got = store_rows(store)
    assert got == truth.rows, diff(got, truth.rows)
    assert len(got["alerts"]) == 3 and {a["status"] for a in got["alerts"]} == {"closed"}


def test_first_batch_has_no_watermark_later_ones_drop_late_events():
    spec = Spec(10 * US, 10 * US, 15 * US, 30 * US)
    engine, state = Engine(spec), JobState()

    def event(event_id: str, second: int) -> bytes:
        return events.to_json_bytes(
            {
                "event_id": event_id,
                "event_time": f"2026-11-28T00:{second // 60:02d}:{second % 60:02d}.000Z",
                "user_id": "u_1",
                "session_id": "s_1",
                "event_type": "page_view",
                "page": "/",
            }
        )

    first = engine.process(state, [(0, 0, event("a", 100)), (0, 1, event("b", 10))])
    assert (first.accepted, first.late) == (2, 0)  # as in Spark: no watermark yet
    second = engine.process(
        state, [(0, 2, event("c", 84)), (0, 3, event("d", 86)), (0, 4, event("d", 86))]
    )
    # Watermark 100 - 15 = 85 s: c is dropped; d is kept once, its copy counted.
    assert (second.accepted, second.late, second.duplicates) == (1, 1, 1)
    assert state.counters == {
        "records": 5,
        "quarantined": 0,
        "late_dropped": 1,
        "duplicates_removed": 1,
        "events": 3,
    }
    bad = engine.process(state, [(1, 0, b"{not json"), (1, 1, None)])
    assert [q[0] for q in bad.quarantined] == ["not_json", "not_json"]
    assert bad.rows["quarantine"] == [{"reason": "not_json", "count": 2}]


def test_window_starts_tumbling_and_sliding():
    tumbling = Spec(10 * US, 10 * US, 0, US)
    assert tumbling.window_starts(25 * US) == [20 * US]
    assert tumbling.window_starts(20 * US) == [20 * US]
    assert tumbling.window_starts(-1) == [-10 * US]
    sliding = Spec(10 * US, 5 * US, 0, US)
    assert sliding.window_starts(27 * US) == [20 * US, 25 * US]
    assert sliding.window_starts(25 * US) == [20 * US, 25 * US]
    assert Spec(10 * US, 3 * US, 0, US).window_starts(10 * US) == [3 * US, 6 * US, 9 * US]


def test_durations_and_settings_are_checked():
    assert duration_us("10 seconds") == 10 * US
    assert duration_us("1 minute") == 60 * US
    assert duration_us("90s") == 90 * US
    assert duration_us("2 min") == 120 * US
    assert duration_us("500 milliseconds") == 500_000
    with pytest.raises(StreamJobError, match="not a duration"):
        duration_us("soon", "--watermark")
    base = StreamConfig.create(topic="t", store_url="sqlite:///x.db", bootstrap_servers="b:1")
    assert base.spec() == Spec(60 * US, 60 * US, 120 * US, 1800 * US)
    for bad, match in (
        ({"window": "1500 milliseconds"}, "whole seconds"),
        ({"slide": "2 minutes"}, "longer than"),
        ({"session_gap": "0 seconds"}, "at least 1 second"),
    ):
        with pytest.raises(StreamJobError, match=match):
            StreamConfig(**{**base.__dict__, **bad}).spec()


def test_default_checkpoints_are_per_topic_and_store():
    a = StreamConfig.create(topic="t", store_url="sqlite:///a.db", bootstrap_servers="b:1")
    b = StreamConfig.create(topic="t", store_url="redis://h:6379/0", bootstrap_servers="b:1")
    c = StreamConfig.create(topic="u", store_url="sqlite:///a.db", bootstrap_servers="b:1")
    assert len({a.checkpoint, b.checkpoint, c.checkpoint}) == 3
    assert a.checkpoint.parent == b.checkpoint.parent


def test_funnel_is_ordered_and_page_kinds_are_named():
    assert funnel_stage([(1, "a", 0), (2, "b", 1), (3, "c", 2)]) == 3
    assert funnel_stage([(3, "a", 0), (2, "b", 1), (4, "c", 2)]) == 1  # cart before the view
    assert funnel_stage([(1, "a", 1), (2, "b", 0), (3, "c", 2)]) == 1
    assert funnel_stage([(1, "b", 0), (1, "a", 1)]) == 1  # same time: the event id decides
    assert page_kind("page_view", "/") == "home"
    assert page_kind("page_view", "/product/P001") == "product"
    assert page_kind("page_view", "/category/books") == "category"
    assert page_kind("search", "/search?q=tea") == "search"
    assert page_kind("add_to_cart", "/product/P001") == "cart"
    assert page_kind("purchase", "/checkout") == "checkout"
    assert page_kind("error", "/product/P001") == "error"


def test_state_files_are_versioned_and_pruned(tmp_path: Path):
    files = StateFiles(tmp_path / "state")
    assert files.load(-1).batch_id == -1
    for batch in range(4):
        state = JobState(batch_id=batch, max_us=batch)
        files.save(state)
    files.prune(2)
    assert sorted(p.name for p in files.dir.iterdir()) == ["2", "3"]
    assert files.load(3).max_us == 3
    with pytest.raises(CheckpointMismatchError, match="--reset"):
        files.load(1)
    (files.dir / "3").write_bytes(b"clickstream-state v0\n...")
    with pytest.raises(CheckpointMismatchError, match="another version"):
        files.load(3)


def test_a_small_stream_without_anomalies_raises_none(tmp_path):
    small = build_stream(SimConfig(seed=4, count=2000, rate=12.0))
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    run_engine(small, Params(), [200], url)
    with open_store(url) as store:
        assert store.read("alerts") == []
        assert store.counters()["records"] == 2000


def test_reset_deletes_only_a_checkpoint_the_job_made(tmp_path):
    from clickstream.stream import StreamJob

    url = f"sqlite:///{tmp_path / 'serving.db'}"
    with open_store(url) as store:
        store.write_batch(JOB, 0, {"counters": [{"name": "records", "value": 1}]})
    mine = tmp_path / "ckpt"
    (mine / "spark").mkdir(parents=True)
    (mine / "job.json").write_text("{}")
    config = StreamConfig.create(topic="t", bootstrap_servers="b:1", store_url=url, checkpoint=mine)
    StreamJob(config).reset()
    assert not mine.exists()
    with open_store(url) as store:
        assert store.last_batch(JOB) is None and store.read("counters") == []
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    other = StreamConfig.create(
        topic="t", bootstrap_servers="b:1", store_url=url, checkpoint=precious
    )
    with pytest.raises(StreamJobError, match="not deleting it"):
        StreamJob(other).reset()
    assert (precious / "notes.txt").exists()


def test_query_failures_are_explained():
    from clickstream.stream import explain_failure

    config = StreamConfig.create(topic="t", store_url="sqlite:///x.db", bootstrap_servers="b:1")
    lost = Exception("[KAFKA_DATA_LOSS.START_OFFSET_RESET] Some data may have been lost ...")
    assert "--reset" in str(explain_failure(lost, config))
    timeout = Exception(
        "Lost task 0.0 in stage 0.0: org.apache.kafka.common.errors.TimeoutException: Timeout "
        "of 60000ms expired before the position for partition t-0 could be determined"
    )
    message = str(explain_failure(timeout, config))
    assert "did not answer" in message and "b:1" in message and "--reset" not in message
    ours = Exception("... clickstream.serving.StoreError: Redis at redis://h:1/0 is not reachable")
    assert "Redis at redis://h:1/0 is not reachable" in str(explain_failure(ours, config))


def test_absurd_event_times_are_quarantined_and_never_move_the_watermark():
    from datetime import UTC, datetime

    from clickstream.simulator import Simulator

    spec = Spec(10 * US, 10 * US, 30 * US, 30 * US)
    engine = Engine(spec)
    state = JobState()
    sim = SimConfig(seed=5, count=200, rate=12.0)
    values = [r.value for r in Simulator(sim).records()]
    template = events.parse_value(values[0])[0]
    for i, when in enumerate(
        ("9999-12-31T23:59:30Z", "2099-01-01T00:00:00Z", "0001-01-01T00:00:00Z")
    ):
        values.insert(50 * i + 5, events.to_json_bytes({**template, "event_time": when}))
    now = datetime(2026, 12, 1, tzinfo=UTC)
    result = engine.process(state, [(0, i, v) for i, v in enumerate(values)], now)
    assert result.invalid == 3 and result.accepted == sim.count
    assert state.quarantine == {events.TOO_FAR_AHEAD: 2, events.TOO_EARLY: 1}
    assert result.max_us < to_us(now)  # the watermark follows the real events only
    # The clock is the batch's: 80 years on, the record dated 2099 is an event like any other.
    later = engine.process(JobState(), [(0, 0, values[55])], datetime(2098, 12, 31, tzinfo=UTC))
    assert later.invalid == 0 and later.accepted == 1


def to_us(dt) -> int:
    from clickstream.stream import to_us as convert

    return convert(dt)
