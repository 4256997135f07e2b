"""The live dashboard: a Streamlit app that reads only the serving store.

Run it with `clickstream dashboard` (127.0.0.1:8501), or `streamlit run lib/clickstream/dashboard/app.py
-- --store URL`. The store URL comes from `--store`, else CLICKSTREAM_STORE, else the default
SQLite store in the state directory.

The page refreshes itself in place: the panels live in one `st.fragment(run_every=...)`, so only
they rerun (no page reload, no flicker, no `while True` loop: README, Troubleshooting); the store connection
is opened once per process (`st.cache_resource`); each refresh runs a fixed set of queries bounded
by the chosen time range (`clickstream.dashboard.data.load_snapshot`). The dashboard never talks
to Kafka or Spark (a producer and a consumer inside one Streamlit app stall each other).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clickstream.dashboard import data as dd
from clickstream.errors import ClickstreamError
from clickstream.redact import redact_text, redact_url
from clickstream.serve.store import (
    POSTGRES_SCHEMES,
    Store,
    StoreError,
    StoreMissingError,
    StoreVersionError,
    open_store,
)

REFRESH_CHOICES = (1, 2, 5, 10)  # seconds
CHART_HEIGHT = 300
PLOT_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
EVENT_COLOURS = {
    "page_view": "#4C78A8",
    "search": "#72B7B2",
    "add_to_cart": "#F58518",
    "remove_from_cart": "#B279A2",
    "purchase": "#54A24B",
    "error": "#E45756",
}


# -- where the data comes from -----------------------------------------------------------------
def store_url(argv: list[str] | None = None) -> str:
    """--store URL (after `--` with `streamlit run`), else CLICKSTREAM_STORE, else the default."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.store:
        return args.store
    from clickstream.config import get_settings

    return get_settings().default_store_url


@dataclass
class Connection:
    """A read-only store shared by every browser session of this process, one reader at a time."""

    store: Store
    lock: threading.Lock


@st.cache_resource(show_spinner=False)
def connect(url: str) -> Connection:
    # An exception (store not there yet) is not cached: the next refresh tries again.
    return Connection(open_store(url, readonly=True), threading.Lock())


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        import redis

        errors.append(redis.exceptions.RedisError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(errors)


def load(
    url: str,
    minutes: int,
    filters: dd.Filters,
    product_sort: str,
    previous: dd.Snapshot | None = None,
) -> dd.Snapshot:
    """One refresh's data, or a snapshot whose status explains why there is none.

    When `previous` was read with the same settings and no batch has been committed since, it
    is returned again (with its freshness brought up to date) after one tiny query; after new
    batches, only the windows they touched are re-read into what `previous` holds.
    """
    try:
        conn = connect(url)
        with conn.lock:
            if previous is not None and dd.change_marker(conn.store) == previous.marker:
                return dd.with_freshness(previous)
            snap = dd.load_snapshot(conn.store, minutes, filters, product_sort, previous=previous)
    except StoreMissingError:
        return dd.Snapshot(status=dd.Status("missing", dd.NO_DATA))
    except StoreVersionError as exc:
        connect.clear()
        return dd.Snapshot(status=dd.Status("version", str(exc)))
    except (StoreError, *_transient_errors()) as exc:
        connect.clear()  # reconnect on the next refresh (server restarted, file replaced)
        message = redact_text(f"Reading {url} failed: {exc}", url)
        return dd.Snapshot(status=dd.Status("error", message))
    if snap.status.state == "missing":
        connect.clear()  # e.g. the file was deleted: reopen once it is back
    return snap


@dataclass
class _Cached:
    key: tuple
    snap: dd.Snapshot
    at: float
    cost_s: float


MAX_DUTY = 0.25  # a long range is re-read at most this share of the time
PACED_FROM_MINUTES = 360  # ranges this long (6 and 24 hours) read ~10^5 rows per refresh


def refresh(url: str, minutes: int, filters: dd.Filters, product_sort: str) -> dd.Snapshot:
    """The data for this refresh of this browser session.

    Nothing new since the last refresh: one query (the newest batch) and the previous data.
    A new batch: the whole snapshot, a fixed set of queries bounded by the time range. The long
    ranges (6 and 24 hours), which take up to seconds to read, are re-read at most every
    cost/MAX_DUTY seconds, so the dashboard never keeps a CPU busy.
    """
    key = (url, minutes, filters, product_sort)
    cached: _Cached | None = st.session_state.get("_snapshot")
    now = time.monotonic()
    previous = None
    if cached and cached.key == key and cached.snap.status.ok:
        paced = minutes >= PACED_FROM_MINUTES and now - cached.at < cached.cost_s / MAX_DUTY
        if paced:
            return dd.with_freshness(cached.snap)
        previous = cached.snap
    snap = load(url, minutes, filters, product_sort, previous)
    if snap is not previous:
        st.session_state["_snapshot"] = _Cached(key, snap, now, time.monotonic() - now)
    return snap


def options(url: str) -> dict[str, list[str]]:
    try:
        conn = connect(url)
        with conn.lock:
            return dd.filter_options(conn.store)
    except (StoreError, *_transient_errors()):
        return {"category": [], "country": [], "device": []}


# -- figures -----------------------------------------------------------------------------------
# Figures are written as plain Plotly specs (dicts of lists) and wrapped without Plotly's
# property validation, which costs ten times more than the rest of building them; they come
# from this code, not from users, and the tests render every one of them.
def _figure(data: list[dict], layout: dict) -> go.Figure:
    spec = {"data": data, "layout": layout}
    try:
        return go.Figure(spec, _validate=False)
    except TypeError:  # pragma: no cover - a Plotly without the switch: validate
        return go.Figure(spec)


def _times(values) -> list[str]:
    """Datetimes -> 'YYYY-MM-DDTHH:MM:SS' text in UTC, which Plotly reads as dates."""
    return [pd.Timestamp(v).strftime("%Y-%m-%dT%H:%M:%S") for v in values]


def _list(values) -> list:
    return [None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in values]


def _layout(title: str | None = None, height: int = CHART_HEIGHT, **kw) -> dict:
    layout = {
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 36 if title else 24, "b": 10},
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        "uirevision": "keep",  # keep zoom and hidden traces across refreshes
        **kw,
    }
    if title:
        layout["title"] = {"text": title, "font": {"size": 14}}
    return layout


def _axis(title: str, **kw) -> dict:
    return {"title": {"text": title}, **kw}


def _band(x0, x1, colour: str, label: str | None = None) -> tuple[dict, dict | None]:
    """A shaded event-time span (shape) and its label (annotation)."""
    x0, x1 = _times([x0, x1])
    shape = {
        "type": "rect",
        "xref": "x",
        "yref": "paper",
        "x0": x0,
        "x1": x1,
        "y0": 0,
        "y1": 1,
        "fillcolor": colour,
        "opacity": 0.12,
        "line": {"width": 0},
        "layer": "below",
    }
    note = None
    if label:
        note = {
            "x": x0,
            "xref": "x",
            "y": 1,
            "yref": "paper",
            "text": label,
            "showarrow": False,
            "xanchor": "left",
            "yanchor": "top",
            "font": {"size": 10},
        }
    return shape, note


def _time_axis(snap: dd.Snapshot) -> dict:
    """The range's event-time span, so every time chart shows the same minutes."""
    if snap.range is None:
        return _axis("event time (UTC)")
    end = snap.range.newest + pd.Timedelta(seconds=snap.range.window_s)
    start = pd.Timestamp(snap.range.since)
    if not snap.traffic.empty:  # a stream that began minutes ago: no empty half chart
        start = max(start, snap.traffic["window_start"].min())
    return _axis("event time (UTC)", type="date", range=_times([start, end]))


def _window_unit(snap: dd.Snapshot) -> str:
    """What one point of the range's series counts: a window, or a rollup's bucket."""
    if snap.range is not None and snap.range.grain_min:
        return f"{snap.range.grain_min} minutes"
    if snap.range is None or snap.range.window_s == 60:
        return "minute"
    return f"{snap.range.window_s:g} s window"


def fig_traffic(snap: dd.Snapshot) -> go.Figure:
    table = snap.traffic_by_type
    x = _times(table.index)
    data = [
        {
            "type": "scatter",
            "x": x,
            "y": _list(table[event_type]),
            "name": event_type,
            "mode": "lines",
            "stackgroup": "one",
            "line": {"width": 1, "color": EVENT_COLOURS.get(event_type)},
        }
        for event_type in table.columns
    ]
    shapes, notes = [], []
    h = snap.headline
    filling = h.current_window is not None and not h.current_complete
    if snap.range is not None and not snap.range.grain_min and filling:
        # the newest window, still filling: its count is not final yet
        end = pd.Timestamp(h.current_window) + pd.Timedelta(seconds=snap.range.window_s)
        shape, note = _band(h.current_window, end, "#888888", "filling")
        shapes.append(shape)
        notes.append(note)
    return _figure(
        data,
        _layout(
            xaxis=_time_axis(snap),
            yaxis=_axis(f"events per {_window_unit(snap)}"),
            shapes=shapes,
            annotations=notes,
        ),
    )


def fig_funnel(snap: dd.Snapshot) -> go.Figure:
    df = snap.funnel
    data = [
        {
            "type": "funnel",
            "y": list(df["stage"]),
            "x": _list(df["sessions"]),
            "textinfo": "value+percent initial",
            "marker": {"color": ["#4C78A8", "#F58518", "#54A24B"]},
        }
    ]
    return _figure(data, _layout())


def fig_products(snap: dd.Snapshot) -> go.Figure:
    df = snap.products.iloc[::-1]
    col = snap.product_sort
    data = [
        {
            "type": "bar",
            "x": _list(df[col]),
            "y": [f"{p} ({c})" for p, c in zip(df["product_id"], df["category"], strict=True)],
            "orientation": "h",
            "marker": {"color": "#54A24B" if col in ("revenue", "purchases") else "#4C78A8"},
            "hovertemplate": "%{y}: %{x:,}<extra></extra>",
        }
    ]
    return _figure(data, _layout(xaxis=_axis(col)))


def fig_segments(snap: dd.Snapshot, by: str) -> go.Figure:
    df = dd.segment_breakdown(snap.segments, by).head(15)
    data = [
        {"type": "bar", "x": list(df[by]), "y": _list(df["count"]), "marker": {"color": "#72B7B2"}}
    ]
    return _figure(
        data,
        _layout(
            f"Events by {by} ({snap.filters.label()})",
            xaxis={"type": "category"},
            yaxis=_axis("events"),
        ),
    )


def fig_errors(snap: dd.Snapshot) -> go.Figure:
    df = snap.errors
    data = [
        {
            "type": "scatter",
            "x": _times(df["window_start"]),
            "y": _list(df["error_rate"] * 100),
            "name": "error rate",
            "mode": "lines+markers",
            "line": {"color": "#E45756"},
            "marker": {"size": 4},
        }
    ]
    shapes = []
    alerts = snap.alerts
    if not alerts.empty and snap.range is not None:
        since = pd.Timestamp(snap.range.since)
        end = pd.Timestamp(snap.range.newest) + pd.Timedelta(seconds=snap.range.window_s)
        closed = alerts["closed_at"].fillna(end)
        overlapping = alerts[(alerts["opened_at"] <= end) & (closed >= since)]
        for row in overlapping.itertuples():
            stop = row.closed_at if pd.notna(row.closed_at) else end
            shapes.append(_band(max(row.opened_at, since), min(stop, end), "#E45756")[0])
        opened = overlapping[overlapping["opened_at"] >= since]
        if not opened.empty:
            top = float((df["error_rate"] * 100).max()) if not df.empty else 1.0
            data.append(
                {
                    "type": "scatter",
                    "x": _times(opened["opened_at"]),
                    "y": [(top * 1.1) or 1.0] * len(opened),
                    "mode": "markers",
                    "name": "alert opened",
                    "marker": {"symbol": "triangle-down", "size": 13, "color": "#B00020"},
                    "text": [
                        f"{k}: {d if isinstance(d, str) else ''}"
                        for k, d in zip(opened["kind"], opened["detail"], strict=True)
                    ],
                    "hovertemplate": "%{text}<extra>alert</extra>",
                }
            )
    return _figure(data, _layout(xaxis=_time_axis(snap), yaxis=_axis("% of events"), shapes=shapes))


def fig_active_users(snap: dd.Snapshot) -> go.Figure:
    df = snap.active_users
    data = [
        {
            "type": "scatter",
            "x": _times(df["window_start"]),
            "y": _list(df["users"]),
            "mode": "lines",
            "line": {"color": "#4C78A8"},
        }
    ]
    return _figure(
        data,
        _layout(
            xaxis=_time_axis(snap),
            yaxis=_axis(
                f"peak distinct users per minute, per {_window_unit(snap)}"
                if snap.range is not None and snap.range.grain_min
                else f"distinct users per {_window_unit(snap)}"
            ),
        ),
    )


def fig_sessions(snap: dd.Snapshot) -> go.Figure:
    bands = snap.sessions.bands
    if bands is not None:  # a rollup: sessions per band of length
        data = [
            {
                "type": "bar",
                "x": [dd.fmt_age(b) + "+" for b in bands["duration_bin"]],
                "y": _list(bands["sessions"]),
                "marker": {"color": "#B279A2"},
            }
        ]
        return _figure(
            data,
            _layout(
                "Session length",
                xaxis=_axis("length (bands)", type="category"),
                yaxis=_axis("sessions"),
                bargap=0.05,
            ),
        )
    data = [
        {
            "type": "histogram",
            "x": _list(snap.sessions.durations),
            "nbinsx": 30,
            "marker": {"color": "#B279A2"},
        }
    ]
    return _figure(
        data,
        _layout("Session length", xaxis=_axis("seconds"), yaxis=_axis("sessions"), bargap=0.05),
    )


def fig_health(snap: dd.Snapshot) -> go.Figure:
    df = snap.health.batches
    data = []
    if not df.empty:
        x = _times(df["committed_at"])
        for col, name in (("input_rate", "input rate"), ("processing_rate", "processing rate")):
            data.append(
                {"type": "scatter", "x": x, "y": _list(df[col]), "name": name, "mode": "lines"}
            )
    return _figure(
        data,
        _layout(
            xaxis=_axis(f"commit time (UTC), last {len(df)} batches", type="date"),
            yaxis=_axis("rows/s"),
        ),
    )


def build_figures(snap: dd.Snapshot) -> dict[str, go.Figure]:
    """Every figure of one refresh (the benchmark times this too)."""
    if not snap.status.ok:
        return {"health": fig_health(snap)}
    return {
        "traffic": fig_traffic(snap),
        "funnel": fig_funnel(snap),
        "products": fig_products(snap),
        "segments": fig_segments(snap, "country"),
        "errors": fig_errors(snap),
        "active_users": fig_active_users(snap),
        "sessions": fig_sessions(snap),
        "health": fig_health(snap),
    }


def chart(name: str, snap: dd.Snapshot, build, *args) -> None:
    """Show figure `name`; it is rebuilt only when the data (or `args`) changed since the last
    refresh, since building Plotly figures costs more than reading the store."""
    cache = st.session_state.setdefault("_figures", {})
    key = (snap.serial, args)
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, build(snap, *args))
    st.plotly_chart(hit[1], key=f"{name}_chart", config=PLOT_CONFIG, theme="streamlit")


# -- panels ------------------------------------------------------------------------------------
def _int(value) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _pct(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}%}"


def _hm(when) -> str:
    return "–" if when is None else pd.Timestamp(when).strftime("%H:%M")


def render_freshness(snap: dd.Snapshot, paused: bool, refresh_ms: float | None = None) -> None:
    h = snap.health
    parts = []
    if snap.range is not None:
        first = snap.range.since
        if not snap.traffic.empty:
            first = max(pd.Timestamp(first), snap.traffic["window_start"].min())
        parts.append(
            f"event time {_hm(first)}–{_hm(snap.headline.current_window)} UTC "
            f"(newest window {_hm(snap.range.newest)})"
        )
    if h.has_batches:
        parts.append(f"batch {h.batch_id} of `{h.job}`")
    if refresh_ms is not None:
        parts.append(f"last refresh {refresh_ms:.0f} ms")
    if paused:
        parts.append("**paused**: switch off *Pause* in the sidebar to resume")
    line = " · ".join(parts)
    if h.has_batches and h.stale:
        st.warning(
            f"Data is {h.freshness}. Is the streaming job still running? {line}",
            icon=":material/schedule:",
        )
    elif h.has_batches:
        st.caption(f":green[●] {h.freshness.capitalize()} · {line}")
    else:
        st.caption(f"No batch information in the store · {line}")


def render_headline(snap: dd.Snapshot) -> None:
    h = snap.headline
    c1, c2, c3, c4, c5 = st.columns(5)
    when = f"window {_hm(h.headline_window)} UTC, vs the one before"
    c1.metric(
        "Page views / min",
        _int(h.page_views_per_min),
        None if h.page_views_delta is None else f"{h.page_views_delta:+,.0f}",
        help=f"Page views in the last complete window ({when}).",
        border=True,
    )
    c2.metric(
        "Current window",
        _int(h.current_events),
        help=(
            f"Events so far in the newest window ({_hm(h.current_window)} UTC)"
            + ("" if h.current_complete else ", which is still filling")
        ),
        border=True,
    )
    c3.metric(
        "Active users",
        _int(h.active_users),
        None if h.active_users_delta is None else f"{h.active_users_delta:+,}",
        help=f"Distinct users in the last complete window ({when}).",
        border=True,
    )
    c4.metric(
        "Conversion",
        _pct(h.conversion),
        help="Sessions that purchased / sessions that viewed a product, whole time range.",
        border=True,
    )
    c5.metric(
        "Error rate",
        _pct(h.error_rate, 2),
        None if h.error_rate_delta is None else f"{h.error_rate_delta * 100:+.2f} pp",
        delta_color="inverse",
        help=f"Error events / events in the last complete window ({when}).",
        border=True,
    )


def render_open_alerts(snap: dd.Snapshot) -> None:
    if snap.open_alerts.empty:
        st.success("No open alerts.", icon=":material/check_circle:")
        return
    for row in snap.open_alerts.itertuples():
        numbers = ""
        if pd.notna(row.peak) and pd.notna(row.baseline):
            numbers = f" (peak {float(row.peak):.3g} vs baseline {float(row.baseline):.3g})"
        detail = f": {row.detail}" if isinstance(row.detail, str) and row.detail else ""
        st.error(
            f"**Open alert: {row.kind}**{detail}{numbers}, since {dd.fmt_time(row.opened_at)}",
            icon=":material/notifications_active:",
        )


def render_products(snap: dd.Snapshot) -> None:
    st.subheader("Top products")
    st.radio(
        "Sort by",
        dd.PRODUCT_SORTS,
        key="product_sort",
        horizontal=True,
        label_visibility="collapsed",
    )
    if snap.filters.category:
        st.caption(f"Category: {snap.filters.category}")
    chart("products", snap, fig_products)
    st.dataframe(
        snap.products,
        hide_index=True,
        column_config={
            "revenue": st.column_config.NumberColumn("revenue", format="%.2f"),
            "conversion": st.column_config.NumberColumn("conversion", format="percent"),
        },
        key="products_table",
    )


def render_funnel(snap: dd.Snapshot) -> None:
    st.subheader("Conversion funnel (sessions)")
    chart("funnel", snap, fig_funnel)
    f = snap.funnel.set_index("stage")["sessions"]
    c1, c2, c3 = st.columns(3)
    c1.metric("Viewed", _int(f.iloc[0]))
    c2.metric("Carted", _int(f.iloc[1]))
    c3.metric("Purchased", _int(f.iloc[2]))


def render_segments(snap: dd.Snapshot) -> None:
    st.subheader("Segments")
    by = st.radio(
        "Break down by",
        ("country", "device", "category"),
        key="segment_by",
        horizontal=True,
        label_visibility="collapsed",
    )
    chart("segments", snap, fig_segments, by)
    st.caption(f"{snap.segments.total:,} events in the range for {snap.filters.label()}.")


def render_errors(snap: dd.Snapshot) -> None:
    st.subheader("Error rate and alerts")
    chart("errors", snap, fig_errors)
    st.caption(f"Error rate over the whole range: {_pct(snap.error_rate, 2)}")


def render_sessions(snap: dd.Snapshot) -> None:
    st.subheader("Sessions")
    s = snap.sessions
    c1, c2, c3 = st.columns(3)
    c1.metric("Sessions", _int(s.count))
    c2.metric(
        "Median length",
        "–" if s.median_duration_s is None else dd.fmt_age(s.median_duration_s),
        help="Within its band of length, at a long range (read from the sessions rollup)."
        if s.bands is not None
        else None,
    )
    c3.metric("Events / session", "–" if s.mean_events is None else f"{s.mean_events:.1f}")
    if s.count:
        chart("sessions", snap, fig_sessions)
    else:
        st.caption(
            "No session in this range has ended yet: a session is written once the watermark "
            "passes its last event plus the session gap."
        )


def render_paths(snap: dd.Snapshot) -> None:
    st.subheader("Top page transitions")
    st.dataframe(snap.paths, hide_index=True, key="paths_table")


def render_quality(snap: dd.Snapshot) -> None:
    st.subheader("Data quality")
    q = snap.quality
    c1, c2, c3 = st.columns(3)
    c1.metric("Quarantined records", _int(q.quarantined), help="Records that broke the contract")
    c2.metric("Late events dropped", _int(q.late_dropped), help="Behind the watermark")
    c3.metric("Duplicates removed", _int(q.duplicates), help="Same event_id seen again")
    if not snap.quarantine.empty:
        st.dataframe(snap.quarantine, hide_index=True, key="quarantine_table")
    others = {
        k: v
        for k, v in q.counters.items()
        if k not in ("late_dropped", "duplicates", "duplicates_removed")
    }
    if others:
        with st.expander("All counters"):
            st.dataframe(
                pd.DataFrame({"counter": list(others), "value": list(others.values())}),
                hide_index=True,
            )


def render_health(snap: dd.Snapshot) -> None:
    st.subheader("Pipeline health")
    h = snap.health
    if not h.has_batches:
        st.caption("The streaming job has not committed a batch yet.")
        return
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Last batch", f"#{h.batch_id}", help=f"job {h.job}, {dd.fmt_time(h.committed_at)}")
    c2.metric("Batch duration", "–" if h.duration_ms is None else f"{h.duration_ms:,.0f} ms")
    c3.metric(
        "Input / processing rate",
        f"{_int(h.input_rate)} / {_int(h.processing_rate)}",
        help="Rows per second arriving vs rows per second the job processes. Processing below "
        "input for long means the job falls behind.",
    )
    c4.metric(
        "Consumer lag",
        _int(h.lag),
        help="Records in the topic beyond what the last batch read: how far the job is behind.",
    )
    c5.metric(
        "Freshness",
        "stale" if h.stale else dd.fmt_age(h.age_s or 0),
        help=h.freshness,
    )
    st.caption(
        f"Newest event time {dd.fmt_time(h.max_event_time)}, watermark {dd.fmt_time(h.watermark)}."
    )
    chart("health", snap, fig_health)


def render_recent_alerts(snap: dd.Snapshot) -> None:
    st.subheader("Recent alerts")
    if snap.alerts.empty:
        st.caption("No alerts so far.")
        return
    st.dataframe(snap.alerts.head(dd.RECENT_ALERTS), hide_index=True, key="alerts_table")


def render_empty(snap: dd.Snapshot, url: str) -> None:
    s = snap.status
    if s.state in ("missing", "empty"):
        st.info(s.message, icon=":material/hourglass_empty:")
    elif s.state == "version":
        st.warning(s.message, icon=":material/warning:")
    else:
        st.error(s.message, icon=":material/error:")
    st.caption(f"Reading {redact_url(url)}; checking again every refresh.")
    if snap.health.has_batches:
        render_health(snap)
    if snap.quality.quarantined or snap.quality.counters:
        render_quality(snap)


def render(snap: dd.Snapshot, url: str, paused: bool, refresh_ms: float | None = None) -> None:
    if not snap.status.ok:
        render_empty(snap, url)
        return
    render_freshness(snap, paused, refresh_ms)
    render_headline(snap)
    render_open_alerts(snap)
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Traffic by event type")
        chart("traffic", snap, fig_traffic)
    with right:
        render_funnel(snap)
    left, right = st.columns([3, 2])
    with left:
        render_products(snap)
    with right:
        render_segments(snap)
    left, right = st.columns(2)
    with left:
        render_errors(snap)
    with right:
        st.subheader("Active users")
        chart("active_users", snap, fig_active_users)
        if snap.range is not None and snap.range.grain_min:
            st.caption(
                f"Each point is a {snap.range.grain_min}-minute bucket: its peak of per-minute "
                "distinct users (distinct users do not add up across minutes)."
            )
    left, right = st.columns(2)
    with left:
        render_sessions(snap)
    with right:
        render_paths(snap)
    render_quality(snap)
    render_health(snap)
    render_recent_alerts(snap)


# -- serving it --------------------------------------------------------------------------------
def streamlit_command(
    url: str, port: int = 8501, host: str = "127.0.0.1", base_url_path: str = ""
) -> list[str]:
    """The `streamlit run` command line for this app: headless, no usage statistics."""
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(Path(__file__).resolve()),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
    if base_url_path:
        cmd += ["--server.baseUrlPath", base_url_path]
    if redact_url(url) != url:
        # A URL with a password goes in CLICKSTREAM_STORE only (`serve` sets it): a command
        # line is readable by every user of the machine.
        return cmd
    return [*cmd, "--", "--store", url]


def check_url(url: str) -> None:
    """Raise a StoreError for a URL no store can have (a missing store is fine: it may come)."""
    parsed = urlparse(url)
    if not (
        url.startswith("sqlite:///")
        or parsed.scheme in ("redis", "rediss")
        or parsed.scheme in POSTGRES_SCHEMES
    ):
        raise StoreError(
            f"Unsupported store URL {redact_url(url)!r}: use sqlite:///relative.db, "
            "sqlite:////absolute/path.db, redis://host:port/db or postgresql://user@host:port/db "
            "(the one `clickstream stream` writes to)."
        )


def check_port(host: str, port: int) -> None:
    """Raise a ClickstreamError naming the fix when `host:port` cannot be listened on."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the server does, so a port in TIME_WAIT after a restart is not reported as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ClickstreamError(
                f"Cannot serve the dashboard on {host}:{port} ({exc.strerror}): another program "
                f"(maybe another dashboard) holds the port. Stop it, or pick another with "
                f"`clickstream dashboard --port {port + 1}`."
            ) from None


def serve(
    url: str | None = None,
    port: int = 8501,
    host: str = "127.0.0.1",
    base_url_path: str = "",
    echo=print,
) -> None:
    """Run the dashboard in the foreground (this process becomes Streamlit's) until Ctrl-C."""
    url = url or store_url([])
    check_url(url)
    check_port(host, port)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    echo(
        f"Dashboard on http://{shown}:{port}{base_url_path} reading {redact_url(url)} "
        "(Ctrl-C stops it)"
    )
    cmd = streamlit_command(url, port, host, base_url_path)
    env = {**os.environ, "CLICKSTREAM_STORE": url}
    sys.stdout.flush()
    if os.name == "posix":
        os.execve(sys.executable, cmd, env)  # signals (Ctrl-C, SIGTERM) go straight to Streamlit
    else:  # pragma: no cover
        import subprocess

        try:
            raise SystemExit(subprocess.call(cmd, env=env))
        except KeyboardInterrupt:
            raise SystemExit(130) from None


# -- the page ----------------------------------------------------------------------------------
def sidebar(url: str) -> tuple[int, dd.Filters, bool, int]:
    sb = st.sidebar
    sb.header("Clickstream live")
    sb.caption(f"Store: `{redact_url(url)}`")
    label = sb.selectbox(
        "Time range (event time)",
        list(dd.TIME_RANGES),
        index=list(dd.TIME_RANGES).index(dd.DEFAULT_RANGE),
        key="time_range",
        help="Ends at the newest window in the store.",
    )
    sb.subheader("Filters")
    sb.caption("Apply to the segment and product panels.")
    opts = options(url)
    if any(opts.values()):
        st.session_state["_filters_built_with_data"] = True
    chosen = {}
    for name, title in (
        ("category", "Product category"),
        ("country", "Country"),
        ("device", "Device"),
    ):
        value = sb.selectbox(title, ["All", *opts[name]], key=name)
        chosen[name] = None if value == "All" else value
    sb.subheader("Live updates")
    paused = sb.toggle("Pause", key="paused", help="Stop refreshing; the page keeps its data.")
    every = sb.select_slider(
        "Refresh every", REFRESH_CHOICES, value=1, key="refresh_s", format_func=lambda s: f"{s} s"
    )
    return dd.TIME_RANGES[label], dd.Filters(**chosen), paused, every


def main() -> None:
    st.set_page_config(
        page_title="Clickstream live", page_icon=":material/monitoring:", layout="wide"
    )
    url = store_url()
    minutes, filters, paused, every = sidebar(url)
    st.title("Clickstream analytics, live")

    @st.fragment(run_every=None if paused else every)
    def live() -> None:
        started = time.perf_counter()
        sort = st.session_state.get("product_sort", "revenue")
        snap = refresh(url, minutes, filters, sort)
        if snap.status.ok and not st.session_state.get("_filters_built_with_data"):
            # The data arrived after the page was built: rebuild it once so the filters list
            # the categories, countries and devices now in the store.
            st.session_state["_filters_built_with_data"] = True
            st.rerun()
        render(snap, url, paused, st.session_state.get("_refresh_ms"))
        st.session_state["_refresh_ms"] = (time.perf_counter() - started) * 1000

    live()


if __name__ == "__main__":
    main()
