"""Every chart the dashboard draws is a valid Plotly figure carrying the store's numbers.

The app builds its figures without Plotly's (slow) property validation, so here each one is
validated in full: a misspelt property fails this test instead of silently drawing nothing.
"""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from clickstream.dashboard import app as db
from clickstream.dashboard import data as dd
from clickstream.serve.store import open_store
from tests.dashboard import known_data


@pytest.fixture
def snapshot(tmp_path):
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    with open_store(url) as store:
        known_data.fill(store)
        return dd.load_snapshot(store, minutes=30)


def test_every_figure_is_valid_plotly(snapshot):
    figures = db.build_figures(snapshot)
    assert set(figures) == {
        "traffic",
        "funnel",
        "products",
        "segments",
        "errors",
        "active_users",
        "sessions",
        "health",
    }
    for name, fig in figures.items():
        go.Figure(fig.to_dict())  # full validation; raises on any unknown property
        assert fig.to_json(), name
    for by in ("country", "device", "category"):
        go.Figure(db.fig_segments(snapshot, by).to_dict())


def test_figures_carry_the_numbers(snapshot):
    traffic = db.fig_traffic(snapshot)
    page_views = next(t for t in traffic.data if t.name == "page_view")
    assert list(page_views.y) == [known_data.page_views(m) for m in range(10, 40)]
    assert traffic.layout.shapes[0].x0 == "2026-11-28T10:39:00"  # the window still filling
    funnel = db.fig_funnel(snapshot)
    assert list(funnel.data[0].x) == list(known_data.EXPECTED["funnel_30min"])
    products = db.fig_products(snapshot)
    assert products.data[0].y[-1] == "P002 (electronics)"  # largest bar on top
    errors = db.fig_errors(snapshot)
    markers = next(t for t in errors.data if t.name == "alert opened")
    assert list(markers.x) == ["2026-11-28T10:38:00", "2026-11-28T10:20:00"]
    assert markers.text[0].startswith("error_spike: error rate 3.0%")
    spans = sorted((s.x0, s.x1) for s in errors.layout.shapes)  # open until the range ends
    assert spans == [
        ("2026-11-28T10:20:00", "2026-11-28T10:22:00"),
        ("2026-11-28T10:38:00", "2026-11-28T10:40:00"),
    ]
    segments = db.fig_segments(snapshot, "device")
    assert dict(zip(segments.data[0].x, segments.data[0].y, strict=True)) == {
        "mobile": 360,
        "desktop": 90,
        "tablet": 60,
    }


def test_figures_of_an_empty_range():
    snap = dd.Snapshot(status=dd.Status("ok"))
    for fig in db.build_figures(snap).values():
        go.Figure(fig.to_dict())
