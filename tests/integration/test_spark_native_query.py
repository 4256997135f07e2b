"""The streaming job's steps from Spark's own operators (`clickstream.process.pipeline`): the contract
checks as column expressions against `events.validate`, and records no clock could have made
(tests/integration/test_stream_job.py checks every metric against the ground truth)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from clickstream import events
from clickstream.ingest.kafka_io import ensure_topic, send_all
from clickstream.process import pipeline as P
from clickstream.source.simulator import SimConfig, Simulator, load_catalogue
from tests.stream_truth import Params, iso

PARAMS = Params()  # 10 s windows, 30 s watermark, 30 s session gap
MAX_PER_BATCH = 600  # ~50 s of event time per batch (the stream here has no late events)
CATEGORIES = {p.product_id: p.category for p in load_catalogue()}

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_contract_checks_in_spark_give_the_reasons_of_events_validate(spark):
    values: list[bytes | None] = [
        r.value for r in Simulator(SimConfig(seed=3, count=400, malformed_count=150)).records()
    ]
    good = json.loads(values[0])
    for change in (
        {"event_id": 1},
        {"event_id": ""},
        {"price": True},
        {"price": "1.5"},
        {"price": 10**30},
        {"status_code": 2**31},
        {"status_code": 1.0},
        {"status_code": None},
        {"device": ["x"]},
        {"event_type": "x" * 80},
        {"event_time": "2026-11-28T10:15:03+19:00"},
        {"event_time": "2026-02-30T10:15:03Z"},
        {"event_time": "2026-11-28T10:15:03.123456789+01:30"},
        {"event_time": "2026-11-28 10:15:03Z"},
        {"event_id": "123"},
        {"user_id": "true"},
        {"session_id": "{}"},
        {"page": "[1]"},
        {"device": "-1e5"},
        {"price": 12},
        {"price": None, "status_code": None},
    ):
        values.append(events.to_json_bytes({**good, **change}))
    values += [
        None,
        b"\xff\xfe",
        b"[1]",
        b"null",
        b"1e999",
        b'{"price":1e999}',
        b'{"event_id":"a","event_id":"b"}',
        events.to_json_bytes(good) + b' {"a": 1}',
        events.to_json_bytes(good) + b"}",
        b"{'event_id': 'single quotes'}",
        b'{"price": NaN}',
    ]
    values.append(json.dumps({**good, "event_id": "dup-key"})[:-1].encode() + b', "page": "/x"}')
    # A numeric field named with an escape, or named inside another field's text.
    no_price = {k: v for k, v in good.items() if k != "price"}
    for tail in (
        b', "pr\\u0069ce": "1.5"}',
        b', "pr\\u0069ce": 2.5}',
        b', "q": "\\"price\\""}',
        b', "price": null}',
        b', "price":null, "price": "x"}',
        b', "price": "x", "price":null}',
        b', "q": "price", "price": "x"}',
        b', "price" :null}',
    ):
        values.append(json.dumps(no_price)[:-1].encode() + tail)
    values.append(events.to_json_bytes({**no_price, "page": '/search?q="price"'}))
    values.append(events.to_json_bytes({**no_price, "page": "price"}))
    produced = datetime(2026, 11, 28, 12, tzinfo=UTC)
    df = spark.createDataFrame(
        [(v, 0, i, produced) for i, v in enumerate(values)],
        "value binary, partition int, offset long, timestamp timestamp",
    )
    got = {r.offset: r.reason for r in P.contract_checked(df).select("offset", "reason").collect()}
    want = {i: events.parse_value(v)[1] for i, v in enumerate(values)}
    assert got == want
    assert len(set(want.values())) > 10


def test_no_single_record_can_stop_the_job_or_move_its_watermark(spark, bootstrap, topic, tmp_path):
    """Events dated in year 9999, decades ahead and in year 1: the job (`clickstream stream`)
    survives, quarantines them, and counts every other event; its watermark stays real."""
    from clickstream.process.stream import JOB, run_available_now
    from clickstream.serve.store import open_store

    sim = SimConfig(seed=5, count=900, rate=12.0)
    records = [(r.key, r.value) for r in Simulator(sim).records()]
    now = datetime.now(UTC)
    absurd = {
        "9999-12-31T23:59:30Z": events.TOO_FAR_AHEAD,
        iso(int((now + timedelta(days=365 * 40)).timestamp()) * 1_000_000): events.TOO_FAR_AHEAD,
        "0001-01-01T00:00:00Z": events.TOO_EARLY,
        "1999-12-31T23:59:59Z": events.TOO_EARLY,
    }
    template = json.loads(records[10][1])
    for i, when in enumerate(absurd):
        bad = {**template, "event_id": f"absurd-{i}", "event_time": when}
        records.insert(100 + 200 * i, (bad["user_id"].encode(), events.to_json_bytes(bad)))
    ensure_topic(topic, partitions=3, bootstrap=bootstrap)
    assert send_all(records, topic, bootstrap) == len(records)

    store_url = f"sqlite:///{tmp_path / 'serving.db'}"
    summary = run_available_now(
        spark=spark,
        topic=topic,
        bootstrap_servers=bootstrap,
        store_url=store_url,
        checkpoint=tmp_path / "checkpoint",
        max_offsets_per_trigger=MAX_PER_BATCH,
        alerts_topic="",
        quarantine_topic="",
        **PARAMS.job_options(),
    )
    assert summary.records == len(records)
    with open_store(store_url) as store:
        quarantine = {r["reason"]: r["count"] for r in store.read("quarantine")}
        counters = store.counters()
        traffic = store.read("traffic")
        health = store.health(JOB, limit=1000)
    assert quarantine == {events.TOO_FAR_AHEAD: 2, events.TOO_EARLY: 2}
    assert counters["events"] == sim.count and counters["late_dropped"] == 0
    assert sum(r["count"] for r in traffic) == sim.count
    newest = max(json.loads(v)["event_time"] for _, v in records if b"absurd" not in v)
    assert all(h["watermark"] is None or h["watermark"] < newest for h in health)
    assert max(h["max_event_time"] or "" for h in health)[:19] == newest[:19]
