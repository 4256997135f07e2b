"""The check of notebook 08's panel exercise (`clickstream.course.live_dashboard`).

It renders the learner's panel for real, in Streamlit's headless AppTest: it must accept the
reference answer, say "not attempted yet" for an untouched exercise, and name the usual
mistakes in one sentence. The "notebook's store" here is a SQLite file with known numbers and
one alert; no broker, no Spark.
"""

from __future__ import annotations

import pytest
import streamlit as st

from clickstream.course.checks import CORRECT, ExerciseError
from clickstream.course.live_dashboard import (
    ALERT_COLUMNS,
    attempt,
    check_incidents_panel,
    fill_known_store,
    render_panel,
)
from clickstream.serve.store import open_store

ALERT = {
    "alert_id": "error_spike:2026-11-28T10:01:00Z",
    "kind": "error_spike",
    "status": "closed",
    "opened_at": "2026-11-28T10:01:00Z",
    "closed_at": "2026-11-28T10:02:00Z",
    "peak": 0.025,
    "baseline": 0.01,
    "detail": "error rate 2.5% vs baseline 1.00%",
}


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    """Three windows (peak error rate 2.5%) and one alert."""
    url = f"sqlite:///{tmp_path_factory.mktemp('panel') / 'store.db'}"
    fill_known_store(url)
    with open_store(url) as store:
        store.write_batch("known", 1, {"alerts": [ALERT]})
    return url


def render_incidents(snap) -> None:
    """The reference answer."""
    st.subheader("Incidents")
    left, right = st.columns(2)
    left.metric("Alerts", len(snap.alerts))
    right.metric("Peak error rate", f"{snap.errors['error_rate'].max():.1%}")
    st.dataframe(snap.alerts[ALERT_COLUMNS], hide_index=True)


def wrong(panel, store_url) -> str:
    with pytest.raises(ExerciseError) as info:
        check_incidents_panel(panel, store_url)
    message = str(info.value)
    assert message.count(". ") == 0, f"more than one sentence: {message}"
    return message


def test_the_reference_panel_is_correct(store_url, capsys):
    check_incidents_panel(render_incidents, store_url)
    out = capsys.readouterr().out
    assert out.startswith(CORRECT)
    assert "1 alert(s) and a peak error rate of 2.5%" in out
    assert "0 alerts and 2.5% on a store with no alert" in out


def test_an_untouched_exercise_is_not_attempted_yet(store_url, capsys):
    def exercise_3():
        raise NotImplementedError("Exercise 3: an Incidents panel")

    assert attempt(exercise_3, check_incidents_panel, store_url) is None
    assert "not attempted yet: Exercise 3" in capsys.readouterr().out


def test_render_panel_shows_what_the_page_would(store_url):
    from clickstream.dashboard import data as dd

    with open_store(store_url, readonly=True) as store:
        snap = dd.load_snapshot(store)
    at = render_panel(render_incidents, snap)
    assert not at.exception
    assert [h.value for h in at.subheader] == ["Incidents"]
    assert [(m.label, m.value) for m in at.metric] == [
        ("Alerts", "1"),
        ("Peak error rate", "2.5%"),
    ]
    assert list(at.dataframe[0].value["kind"]) == ["error_spike"]


def test_not_a_panel_function(store_url):
    assert "expected the panel function" in wrong(42, store_url)
    assert "take one argument" in wrong(lambda: None, store_url)


def test_a_panel_that_raises_is_named_with_its_error(store_url):
    def first_alert_only(snap):
        render_incidents(snap)
        st.caption(snap.alerts.iloc[0]["detail"])  # there is none on the known store

    message = wrong(first_alert_only, store_url)
    assert "on a store with three windows and no alert, the panel raised" in message
    assert "IndexError" in message or "out-of-bounds" in message


def test_missing_subheader_and_metrics(store_url):
    def no_title(snap):
        left, right = st.columns(2)
        left.metric("Alerts", len(snap.alerts))

    assert "no subheader 'Incidents'" in wrong(no_title, store_url)

    def no_peak(snap):
        st.subheader("Incidents")
        left, right = st.columns(2)
        left.metric("Alerts", len(snap.alerts))

    assert "no metric labelled 'Peak error rate'" in wrong(no_peak, store_url)


def test_wrong_numbers(store_url):
    def open_only(snap):
        st.subheader("Incidents")
        left, right = st.columns(2)
        left.metric("Alerts", len(snap.open_alerts))
        right.metric("Peak error rate", f"{snap.errors['error_rate'].max():.1%}")

    assert "'Alerts' shows '0' but the snapshot holds 1 alert" in wrong(open_only, store_url)

    def raw_rate(snap):
        st.subheader("Incidents")
        left, right = st.columns(2)
        left.metric("Alerts", len(snap.alerts))
        right.metric("Peak error rate", snap.errors["error_rate"].max())

    assert "expected '2.5%'" in wrong(raw_rate, store_url)


def test_layout_and_table(store_url):
    def stacked(snap):
        st.subheader("Incidents")
        st.metric("Alerts", len(snap.alerts))
        st.metric("Peak error rate", f"{snap.errors['error_rate'].max():.1%}")

    assert "not side by side" in wrong(stacked, store_url)

    def no_table(snap):
        st.subheader("Incidents")
        left, right = st.columns(2)
        left.metric("Alerts", len(snap.alerts))
        right.metric("Peak error rate", f"{snap.errors['error_rate'].max():.1%}")

    assert "shows no table" in wrong(no_table, store_url)

    def every_column(snap):
        no_table(snap)
        st.dataframe(snap.alerts)

    assert "the table's columns are" in wrong(every_column, store_url)
