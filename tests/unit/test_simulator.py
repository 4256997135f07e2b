"""The seeded simulator: contract, reproducibility, scenario knobs and ground truth."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clickstream import events
from clickstream.source import simulator
from clickstream.source.simulator import (
    GroundTruth,
    SimConfig,
    SimConfigError,
    Simulator,
    compute_ground_truth,
    simulate_to_file,
)

START = datetime(2026, 11, 28, tzinfo=UTC)
FLAT = {"daily_amplitude": 0.0}  # a constant rate makes shares easy to reason about


def generate(**settings_) -> list[simulator.SimRecord]:
    return list(Simulator(SimConfig(**settings_)).records())


def times(record: simulator.SimRecord) -> datetime:
    return events.parse_event_time(record.event["event_time"])


@pytest.fixture(scope="module")
def sample_records() -> list[simulator.SimRecord]:
    return list(Simulator(simulator.sample_config()).records())


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory) -> tuple:
    path = tmp_path_factory.mktemp("sample") / "clicks.jsonl.gz"
    return path, simulate_to_file(simulator.sample_config(), path)


# --- contract and realism -----------------------------------------------------------------


def test_every_generated_event_satisfies_the_contract(sample_records):
    for record in sample_records:
        if record.kind == "malformed":
            continue
        assert events.validate(record.event) is None
        assert record.value == events.to_json_bytes(record.event)
        assert events.parse_value(record.value) == (record.event, None)
        assert record.key == record.event["user_id"].encode()
        # The fast timestamp path agrees with the reference formatter.
        assert events.format_event_time(times(record)) == record.event["event_time"]


def test_counts_by_kind_are_exact(sample_records):
    kinds = Counter(r.kind for r in sample_records)
    assert len(sample_records) == 15_000
    assert kinds["duplicate"] == 20 and kinds["malformed"] == 12
    assert 20 <= kinds["late"] <= 90  # 0.3 % of ~15,000


def test_malformed_kinds_cycle_through_every_violation(sample_records):
    malformed = [r for r in sample_records if r.kind == "malformed"]
    reasons = [events.parse_value(r.value)[1] for r in malformed]
    expected = [simulator.MALFORMED_KINDS[i % 6] for i in range(len(malformed))]
    assert [events.reason_prefix(r) for r in reasons] == expected
    assert all(r.event is None and b"\n" not in r.value for r in malformed)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 40))
def test_every_malformed_record_is_rejected_for_its_kind(seed, n):
    records = generate(seed=seed, count=n + 5, malformed_count=n)
    malformed = [r for r in records if r.kind == "malformed"]
    assert len(malformed) == n
    for index, record in enumerate(malformed):
        reason = events.parse_value(record.value)[1]
        assert events.reason_prefix(reason) == simulator.MALFORMED_KINDS[index % 6]


def test_sessions_behave_like_visits(sample_records):
    genuine = [r.event for r in sample_records if r.kind in ("valid", "late")]
    first_seen: dict[str, dict] = {}
    for event in genuine:
        first = first_seen.setdefault(event["session_id"], event)
        if event is first:
            assert event["referrer"] in {"direct", "search", "social", "email", "ads"}
        else:
            assert event["referrer"] == "internal"
            assert event["user_id"] == first["user_id"]
    sessions = Counter(e["session_id"] for e in genuine)
    assert 3 < len(genuine) / len(sessions) < 40


def test_events_look_like_shopping(sample_records):
    catalogue = {p.product_id: p for p in simulator.load_catalogue()}
    genuine = [r.event for r in sample_records if r.kind in ("valid", "late")]
    types = Counter(e["event_type"] for e in genuine)
    assert types.most_common(1)[0][0] == "page_view"
    assert set(types) == set(events.EVENT_TYPES)
    assert types["add_to_cart"] > types["purchase"] > 0
    for event in genuine:
        if event["event_type"] == "error":
            assert event["status_code"] in (500, 503) and event["price"] is None
            continue
        assert event["status_code"] == 200
        if event["event_type"] in ("add_to_cart", "remove_from_cart", "purchase"):
            assert event["price"] == catalogue[event["product_id"]].price
        if event["page"].startswith("/product/"):
            assert event["product_id"] == event["page"].removeprefix("/product/")
        if event["event_type"] == "search":
            assert event["page"].startswith("/search?q=")
    views = Counter(e["product_id"] for e in genuine if e["page"].startswith("/product/"))
    top_five = sum(n for _, n in views.most_common(5))
    assert top_five > 0.3 * sum(views.values())  # a few hot products (Zipf-like)
    devices = Counter(e["device"] for e in genuine)
    assert devices["mobile"] > devices["desktop"] > devices["tablet"] > 0
    assert len({e["country"] for e in genuine}) >= 8


def test_a_long_silence_starts_a_new_session():
    # Very low traffic: a user's next event often comes more than 30 minutes later.
    records = generate(seed=3, count=2_000, users=3, rate=0.0005, **FLAT)
    last: dict[str, tuple[datetime, str]] = {}
    gaps = 0
    for record in records:
        user, now = record.event["user_id"], times(record)
        if user in last:
            previous, session = last[user]
            if now - previous > timedelta(minutes=30):
                gaps += 1
                assert record.event["session_id"] != session
        last[user] = (now, record.event["session_id"])
    assert gaps > 100
    by_session: dict[str, list[datetime]] = defaultdict(list)
    for record in records:
        by_session[record.event["session_id"]].append(times(record))
    for moments in by_session.values():
        assert all(
            b - a <= timedelta(minutes=30) for a, b in zip(moments, moments[1:], strict=False)
        )


# --- reproducibility ----------------------------------------------------------------------

knobs = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**63),
        "count": st.integers(1, 600),
        "users": st.integers(1, 50),
        "rate": st.floats(0.5, 500),
        "late_share": st.floats(0, 0.5),
        "late_delay_s": st.floats(0, 600),
        "duplicate_count": st.integers(0, 20),
        "malformed_count": st.integers(0, 20),
        "incidents": st.lists(
            st.tuples(st.floats(0, 50), st.floats(51, 100), st.floats(0, 1)), max_size=2
        ),
        "surges": st.lists(
            st.tuples(st.floats(0, 50), st.floats(51, 100), st.floats(0.1, 10)), max_size=2
        ),
    }
).filter(lambda k: k["duplicate_count"] + k["malformed_count"] < k["count"])


@settings(max_examples=40, deadline=None)
@given(knobs)
def test_same_seed_same_bytes_and_exact_counts(k):
    first = [(r.value, r.key, r.kind) for r in generate(**k)]
    second = [(r.value, r.key, r.kind) for r in generate(**k)]
    assert first == second
    kinds = Counter(kind for _, _, kind in first)
    assert len(first) == k["count"]
    assert kinds["duplicate"] == k["duplicate_count"]
    assert kinds["malformed"] == k["malformed_count"]


@settings(max_examples=25, deadline=None)
@given(knobs)
def test_duplicates_repeat_an_earlier_event_byte_for_byte(k):
    records = generate(**k)
    seen: dict[str, tuple[int, bytes]] = {}
    for index, record in enumerate(records):
        if record.kind == "malformed":
            continue
        event_id = record.event["event_id"]
        if record.kind == "duplicate":
            original_index, original_value = seen[event_id]
            assert record.value == original_value
            assert index - original_index <= 64 + k["duplicate_count"] + k["malformed_count"]
        else:
            assert event_id not in seen  # genuine events never reuse an id
            seen[event_id] = (index, record.value)


def test_another_seed_gives_other_data():
    assert generate(seed=1, count=50) != generate(seed=2, count=50)


def test_files_are_byte_identical_across_runs(tmp_path):
    config = SimConfig(seed=7, count=23_456, duplicate_count=5, malformed_count=6)
    steps: list[int] = []
    simulate_to_file(config, tmp_path / "a.jsonl.gz", progress=steps.append)
    assert steps == [10_000, 10_000, 3_456]
    simulate_to_file(config, tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert (tmp_path / "a.truth.json").read_bytes() == (tmp_path / "b.truth.json").read_bytes()
    assert not list(tmp_path.glob("*.part"))


# --- scenario knobs -----------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.01, 0.5), st.integers(1, 3_600_000))
def test_late_events_are_exactly_late_delay_behind_and_traffic_is_unchanged(seed, share, delay_ms):
    delay = delay_ms / 1000
    plain = generate(seed=seed, count=400)
    late = generate(seed=seed, count=400, late_share=share, late_delay_s=delay)
    assert len(plain) == len(late)
    for before, after in zip(plain, late, strict=True):
        if after.kind == "late":
            assert times(before) - times(after) == timedelta(milliseconds=delay_ms)
            assert {**after.event, "event_time": ""} == {**before.event, "event_time": ""}
        else:
            assert after.value == before.value


def test_late_share_matches_the_setting():
    records = generate(seed=11, count=40_000, late_share=0.1, late_delay_s=120)
    share = sum(r.kind == "late" for r in records) / len(records)
    assert share == pytest.approx(0.1, abs=0.01)


def test_injections_do_not_disturb_the_traffic():
    plain = [r.value for r in generate(seed=5, count=2_000)]
    mixed = generate(seed=5, count=2_030, duplicate_count=12, malformed_count=18)
    assert [r.value for r in mixed if r.kind == "valid"] == plain


def test_error_share_rises_only_during_incidents():
    config = SimConfig(seed=21, count=60_000, incidents=[(300, 600, 0.3)], **FLAT)
    records = list(Simulator(config).records())
    truth = compute_ground_truth(records, config)
    ((start, end, rate),) = truth.incidents
    assert (start, end, rate) == (
        START + timedelta(seconds=300),
        START + timedelta(seconds=600),
        0.3,
    )
    inside, outside = Counter(), Counter()
    for record in records:
        bucket = inside if start <= times(record) < end else outside
        bucket[record.event["event_type"] == "error"] += 1
    assert inside.total() > 10_000 and outside.total() > 30_000
    assert inside[True] / inside.total() == pytest.approx(0.3, abs=0.02)
    assert outside[True] / outside.total() == pytest.approx(0.005, abs=0.0015)


def test_surges_multiply_the_rate():
    records = generate(seed=8, count=30_000, surges=[(100, 200, 4.0)], **FLAT)
    surge_start = START + timedelta(seconds=100)
    per_second = Counter(int((times(r) - START).total_seconds()) for r in records)
    during = sum(per_second[s] for s in range(100, 200)) / 100
    before = sum(per_second[s] for s in range(0, 100)) / 100
    assert during / before == pytest.approx(4.0, rel=0.1)
    assert before == pytest.approx(50, rel=0.1)
    assert min(times(r) for r in records) < surge_start


def test_daily_rhythm_peaks_at_the_peak_hour():
    # A 600-second "day": the peak hour 18:00 falls at 450 s, the trough (06:00) at 150 s.
    records = generate(seed=9, count=30_000, day_length_s=600, daily_amplitude=0.5)
    offsets = Counter(int((times(r) - START).total_seconds()) // 60 for r in records)
    assert offsets[7] / offsets[2] == pytest.approx(3.0, rel=0.2)


# --- ground truth -------------------------------------------------------------------------


def recount(path, window_s: int, include_late: bool, late_ids: set[str]) -> dict:
    """Window counts recomputed from the file alone, with nothing from the simulator."""
    counts: Counter = Counter()
    seen: set[str] = set()
    with gzip.open(path, "rb") as handle:
        lines = handle.read().split(b"\n")[:-1]
    for line in lines:
        event, reason = events.parse_value(line)
        if reason or event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        if not include_late and event["event_id"] in late_ids:
            continue
        epoch = int(events.parse_event_time(event["event_time"]).timestamp() // 1)
        start = datetime.fromtimestamp(epoch - epoch % window_s, UTC)
        counts[(start, event["event_type"])] += 1
    return dict(counts)


@pytest.mark.parametrize("window_s", [1, 17, 60, 300])
def test_window_counts_equal_a_recount_of_the_file(sample_file, window_s):
    path, truth = sample_file
    late = set(truth.late_event_ids)
    assert truth.window_counts(window_s) == recount(path, window_s, True, late)
    assert truth.window_counts(window_s, include_late=False) == recount(path, window_s, False, late)


def test_truth_counts_match_the_file(sample_file):
    path, truth = sample_file
    parsed = [events.parse_value(line) for line in simulator.read_jsonl(path)]
    assert len(parsed) == truth.total == 15_000
    malformed = Counter(events.reason_prefix(reason) for _, reason in parsed if reason)
    assert malformed == truth.malformed_by_reason
    assert set(malformed) == set(simulator.MALFORMED_KINDS)
    ids = [event["event_id"] for event, reason in parsed if reason is None]
    assert len(ids) - len(set(ids)) == truth.duplicates == len(truth.duplicate_event_ids) == 20
    assert len(set(ids)) == truth.distinct_events
    assert set(truth.late_event_ids) <= set(ids)
    assert truth.counts["late"] == len(truth.late_event_ids)


def test_truth_file_round_trips(sample_file):
    path, truth = sample_file
    truth_path = path.with_name("clicks.truth.json")
    loaded = simulator.read_ground_truth(truth_path)
    assert loaded == truth
    assert GroundTruth.from_dict(json.loads(json.dumps(truth.to_dict()))) == truth
    assert SimConfig.from_dict(loaded.config) == simulator.sample_config()


def test_window_counts_reject_fractional_windows(sample_file):
    with pytest.raises(ValueError):
        sample_file[1].window_counts(0.5)


def test_truth_path_sits_beside_the_events_file(tmp_path):
    assert simulator.truth_path_for(tmp_path / "x.jsonl.gz") == tmp_path / "x.truth.json"
    assert simulator.truth_path_for("data/x.jsonl") == simulator.Path("data/x.truth.json")


def test_plain_jsonl_and_reader(tmp_path):
    records = generate(seed=4, count=100, malformed_count=10)
    assert simulator.write_jsonl(records, tmp_path / "x.jsonl") == 100
    assert list(simulator.read_jsonl(tmp_path / "x.jsonl")) == [r.value for r in records]


# --- shipped data and configuration ---------------------------------------------------------


def test_shipped_catalogue_is_the_generated_one(tmp_path):
    assert simulator.CATALOGUE_PATH.exists(), "run: clickstream data catalogue"
    written = simulator.write_catalogue(tmp_path / "catalogue.csv")
    assert written.read_bytes() == simulator.CATALOGUE_PATH.read_bytes()
    products = simulator.load_catalogue()
    assert products == tuple(simulator.generate_catalogue())
    assert [p.product_id for p in products] == [f"P{n:03d}" for n in range(1, 101)]
    assert len({p.category for p in products}) == 8
    assert all(p.price > 0 for p in products)
    assert simulator.load_catalogue(tmp_path / "missing.csv") == products


def test_shipped_sample_is_what_the_code_generates(sample_records):
    shipped = simulator.SAMPLE_PATH
    assert shipped.exists(), "run: clickstream data sample"
    assert list(simulator.read_jsonl(shipped)) == [r.value for r in sample_records]
    truth = simulator.read_ground_truth(simulator.truth_path_for(shipped))
    assert truth == compute_ground_truth(sample_records, simulator.sample_config())
    first, last = min(truth.per_second)[0], max(truth.per_second)[0]
    assert 240 <= last - first <= 420  # about five minutes of event time
    assert truth.incidents and truth.duplicates == 20 and truth.counts["malformed"] == 12


def test_data_commands_write_the_shipped_files_again(tmp_path):
    from click.testing import CliRunner

    from clickstream.cli import main

    out = CliRunner().invoke(main, ["data", "catalogue", "--output", str(tmp_path / "c.csv")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "c.csv").read_bytes() == simulator.CATALOGUE_PATH.read_bytes()
    sample = tmp_path / "s.jsonl.gz"
    out = CliRunner().invoke(main, ["data", "sample", "--output", str(sample)])
    assert out.exit_code == 0, out.output
    assert list(simulator.read_jsonl(sample)) == list(simulator.read_jsonl(simulator.SAMPLE_PATH))
    assert simulator.truth_path_for(sample).exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"count": -1},
        {"users": 0},
        {"rate": 0},
        {"late_share": 1.5},
        {"count": 10, "duplicate_count": 5, "malformed_count": 5},
        {"incidents": [(10, 5, 0.1)]},
        {"incidents": [(0, 5, 2.0)]},
        {"surges": [(0, 5, 0)]},
        {"start": "2026-11-28 00:00"},
        {"daily_amplitude": 1.0},
        {"surges": [("soon", 5, 2)]},
    ],
)
def test_bad_settings_raise_a_clear_error(bad):
    with pytest.raises(SimConfigError, match="Invalid simulator setting"):
        SimConfig(**bad)


def test_config_round_trips_through_a_dict():
    config = SimConfig(incidents=[(1, 2, 0.5)], surges=[[3, 4, 2]], late_share=0.1)
    assert SimConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.incidents == ((1.0, 2.0, 0.5),)
