"""The Streamlit app over a store filled with known data, on SQLite, Redis and PostgreSQL.

AppTest runs the real script (lib/clickstream/dashboard/app.py) in this process, fragments included;
the store URL reaches it through CLICKSTREAM_STORE, as with `clickstream dashboard --store`.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clickstream.dashboard import app as dashboard
from clickstream.local.broker import free_port
from clickstream.serve.store import open_store
from tests.dashboard import known_data
from tests.dashboard.known_data import EXPECTED

APP = str(Path(dashboard.__file__))


def run_app(url: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("CLICKSTREAM_STORE", url)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str):
    found = [m for m in at.metric if m.label == label]
    assert found, f"no metric {label!r} among {[m.label for m in at.metric]}"
    return found[0]


def table(at: AppTest, column: str):
    """The first table (st.dataframe) with this column."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a {column!r} column")


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture
def filled(store_url):
    with open_store(store_url) as store:
        known_data.fill(store)
    return store_url


def test_headline_numbers(filled, monkeypatch):
    at = run_app(filled, monkeypatch)
    pv = metric(at, "Page views / min")
    assert pv.value == f"{EXPECTED['page_views_per_min']:,}"
    assert pv.delta == f"+{EXPECTED['page_views_delta']}"
    assert metric(at, "Current window").value == str(EXPECTED["current_events"])
    users = metric(at, "Active users")
    assert (users.value, users.delta) == (str(EXPECTED["active_users"]), "+1")
    err = metric(at, "Error rate")
    assert (err.value, err.delta) == (EXPECTED["error_rate"], EXPECTED["error_rate_delta"])
    assert metric(at, "Conversion").value == EXPECTED["conversion"]


def test_funnel_products_and_segments(filled, monkeypatch):
    at = run_app(filled, monkeypatch)
    viewed, carted, purchased = EXPECTED["funnel_30min"]
    assert metric(at, "Viewed").value == f"{viewed:,}"
    assert metric(at, "Carted").value == f"{carted:,}"
    assert metric(at, "Purchased").value == f"{purchased:,}"
    products = table(at, "revenue")
    assert products.iloc[0]["product_id"] == EXPECTED["top_product"]
    assert products.iloc[0]["revenue"] == pytest.approx(15 * 250.0)
    assert list(products["product_id"]) == ["P002", "P004", "P003", "P001"]
    # 30 windows of 17 segment events each
    assert "510 events in the range for all." in texts(at.caption)
    paths = table(at, "from_page")
    assert (paths.iloc[0]["from_page"], paths.iloc[0]["count"]) == ("/", 90)


def test_alerts_quarantine_and_health(filled, monkeypatch):
    at = run_app(filled, monkeypatch)
    errors = texts(at.error)
    assert "Open alert: error_spike" in errors
    assert "error rate 3.0% vs 1.0% baseline" in errors
    assert "traffic_drop" not in errors  # closed: listed under recent alerts only
    recent = table(at, "alert_id")
    assert list(recent["alert_id"]) == ["a-open", "a-closed"]
    assert metric(at, "Quarantined records").value == str(EXPECTED["quarantined"])
    assert metric(at, "Late events dropped").value == str(EXPECTED["late_dropped"])
    assert metric(at, "Duplicates removed").value == str(EXPECTED["duplicates"])
    reasons = table(at, "reason")
    assert dict(zip(reasons["reason"], reasons["count"], strict=True)) == {
        "not_json": 3,
        "missing_field:user_id": 2,
    }
    assert metric(at, "Last batch").value == f"#{EXPECTED['last_batch']}"
    assert metric(at, "Batch duration").value == EXPECTED["batch_duration"]
    assert metric(at, "Input / processing rate").value == "50 / 200"
    assert metric(at, "Consumer lag").value == str(EXPECTED["lag"])
    freshness = metric(at, "Freshness").value
    assert freshness.endswith(" s") and int(freshness.split()[0]) < 30
    assert "old" in texts(at.caption) and not at.warning


def test_time_range_filters_and_pause(filled, monkeypatch):
    at = run_app(filled, monkeypatch)
    at.selectbox(key="time_range").set_value("5 minutes").run()
    assert not at.exception
    viewed, carted, purchased = EXPECTED["funnel_5min"]
    assert [metric(at, s).value for s in ("Viewed", "Carted", "Purchased")] == [
        str(viewed),
        str(carted),
        str(purchased),
    ]
    assert "85 events in the range for all." in texts(at.caption)

    assert at.selectbox(key="category").options == ["All", "books", "electronics", "fashion"]
    at.selectbox(key="category").set_value("books").run()
    products = table(at, "revenue")
    assert set(products["category"]) == {"books"}
    assert list(products["product_id"]) == ["P003", "P001"]
    assert "25 events in the range for category=books." in texts(at.caption)
    at.selectbox(key="country").set_value("DE").run()
    assert "25 events in the range for category=books, country=DE." in texts(at.caption)
    at.selectbox(key="category").set_value("All").run()
    at.selectbox(key="device").set_value("desktop").run()
    assert "15 events in the range for country=DE, device=desktop." in texts(at.caption)

    at.radio(key="product_sort").set_value("views").run()
    assert list(table(at, "revenue")["product_id"])[0] == "P004"

    at.toggle(key="paused").set_value(True).run()
    assert not at.exception
    assert "paused" in texts(at.caption)
    assert metric(at, "Page views / min").value == "176"  # still shows the data


def test_stale_data_is_called_stale(store_url, monkeypatch):
    with open_store(store_url) as store:
        known_data.fill(store, committed_at=time.time() - 600)
    at = run_app(store_url, monkeypatch)
    warning = texts(at.warning)
    assert "stale since" in warning and "Is the streaming job still running?" in warning
    assert metric(at, "Freshness").value == "stale"


def assert_no_data_state(at: AppTest) -> None:
    info = texts(at.info)
    assert "No data yet: is the streaming job running?" in info
    assert "clickstream stream" in info
    assert not at.exception
    assert "Page views / min" not in [m.label for m in at.metric]


def test_missing_sqlite_store(tmp_path, monkeypatch):
    at = run_app(f"sqlite:///{tmp_path / 'nothing-here.db'}", monkeypatch)
    assert_no_data_state(at)


def test_missing_redis_store(redis_url, monkeypatch):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    assert_no_data_state(run_app(redis_url, monkeypatch))


def test_empty_store(store_url, monkeypatch):
    with open_store(store_url) as store:
        store.write_batch("clickstream", 0, {}, health={"input_rows": 0, "duration_ms": 5})
    at = run_app(store_url, monkeypatch)
    assert_no_data_state(at)
    # The job is alive, so its health is shown under the empty state.
    assert metric(at, "Last batch").value == "#0"


def test_old_version_store(store_url, monkeypatch):
    with open_store(store_url) as store:
        known_data.fill(store)
    if store_url.startswith("sqlite"):
        path = store_url[len("sqlite:///") :]
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    elif store_url.startswith("postgresql"):
        import psycopg

        from clickstream.serve.postgres import split_url

        conninfo, schema = split_url(store_url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"UPDATE {schema}.meta SET value = '0' WHERE key = 'schema_version'")
    else:
        import redis

        redis.Redis.from_url(store_url).hset("cs:meta", "schema_version", 0)
    at = run_app(store_url, monkeypatch)
    warning = texts(at.warning)
    assert "schema version 0" in warning and "clickstream stream --reset" in warning
    assert "Page views / min" not in [m.label for m in at.metric]


def test_unreachable_redis_is_an_error_message_not_a_traceback(monkeypatch):
    at = run_app(f"redis://127.0.0.1:{free_port()}/0", monkeypatch)
    assert "not reachable" in texts(at.error)


def test_store_appearing_later_is_picked_up(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'later.db'}"
    at = run_app(url, monkeypatch)
    assert_no_data_state(at)
    assert at.selectbox(key="category").options == ["All"]
    with open_store(url) as store:
        known_data.fill(store)
    at.run()  # what the next automatic refresh does
    assert not at.exception
    assert metric(at, "Page views / min").value == "176"
    assert at.selectbox(key="category").options == ["All", "books", "electronics", "fashion"]


def test_a_new_batch_is_shown_on_the_next_refresh(filled, monkeypatch):
    at = run_app(filled, monkeypatch)
    assert metric(at, "Page views / min").value == "176"
    at.run()  # no new batch: the same numbers (one small query, see dashboard.refresh)
    assert metric(at, "Page views / min").value == "176"
    with open_store(filled) as store:
        store.write_batch(
            "clickstream",
            41,
            known_data.rows_for(40),
            health={"max_event_time": "2026-11-28T10:40:30Z", "duration_ms": 900},
        )
    at.run()
    assert not at.exception
    pv = metric(at, "Page views / min")
    assert (pv.value, pv.delta) == (str(known_data.page_views(39)), "+2")  # 10:39, now complete
    assert metric(at, "Current window").value == str(known_data.page_views(40) + 27)
    assert metric(at, "Last batch").value == "#41"
