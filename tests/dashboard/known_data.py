"""A serving store filled with known numbers, and the numbers the dashboard must show for it.

40 one-minute windows, 10:00 to 10:39 UTC. The job's newest event time is 10:39:30, so the
10:39 window is still filling and the headline reads the 10:38 window (compared with 10:37).
"""

from __future__ import annotations

import time

MINUTES = 40
START_HOUR = 10


def ws(m: int) -> str:
    return f"2026-11-28T{START_HOUR + m // 60:02d}:{m % 60:02d}:00Z"


def win(m: int) -> dict:
    return {"window_start": ws(m), "window_end": ws(m + 1)}


def page_views(m: int) -> int:
    return 100 + 2 * m  # 10:38 -> 176, 10:37 -> 174


def error_rate(m: int) -> float:
    return 0.03 if m == 38 else 0.01


PRODUCTS = (  # product_id, category, price
    ("P001", "books", 10.0),
    ("P002", "electronics", 250.0),
    ("P003", "books", 20.0),
    ("P004", "fashion", 40.0),
)


def product_row(m: int, pid: str, category: str, price: float) -> dict:
    n = int(pid[1:])
    purchases = 1 if (m + n) % 2 == 0 else 0
    return {
        **win(m),
        "product_id": pid,
        "category": category,
        "views": 10 * n,
        "carts": n,
        "purchases": purchases,
        "revenue": purchases * price,
    }


SEGMENTS = (  # country, device, category, count per window
    ("DE", "mobile", "books", 5),
    ("DE", "desktop", "electronics", 3),
    ("US", "mobile", "electronics", 7),
    ("FR", "tablet", "fashion", 2),
)

ALERTS = [
    {
        "alert_id": "a-open",
        "kind": "error_spike",
        "status": "open",
        "opened_at": ws(38),
        "closed_at": None,
        "peak": 0.03,
        "baseline": 0.01,
        "detail": "error rate 3.0% vs 1.0% baseline",
    },
    {
        "alert_id": "a-closed",
        "kind": "traffic_drop",
        "status": "closed",
        "opened_at": ws(20),
        "closed_at": ws(22),
        "peak": 40,
        "baseline": 140,
        "detail": "page views fell by 70%",
    },
]
QUARANTINE = [{"reason": "not_json", "count": 3}, {"reason": "missing_field:user_id", "count": 2}]
COUNTERS = [
    {"name": "late_dropped", "value": 4},
    {"name": "duplicates_removed", "value": 6},
    {"name": "events_total", "value": 12345},
]


def rows_for(m: int) -> dict[str, list[dict]]:
    return {
        "traffic": [
            {**win(m), "event_type": "page_view", "count": page_views(m)},
            {**win(m), "event_type": "search", "count": 20},
            {**win(m), "event_type": "purchase", "count": 5},
            {**win(m), "event_type": "error", "count": 2},
        ],
        "active_users": [{**win(m), "users": 50 + m}],
        "errors": [{**win(m), "events": 127 + 2 * m, "errors": 2, "error_rate": error_rate(m)}],
        "funnel": [{**win(m), "viewed": 40, "carted": 10, "purchased": 4}],
        "products": [product_row(m, *p) for p in PRODUCTS],
        "segments": [
            {**win(m), "country": c, "device": d, "category": k, "count": n}
            for c, d, k, n in SEGMENTS
        ],
        "sessions": [
            {
                "window_start": ws(m),
                "window_end": ws(m + 2),
                "user_id": f"u_{m:04d}",
                "session_id": f"s_{m:04d}",
                "duration_s": 60 + m,
                "events": 4,
            }
        ],
        "paths": [
            {**win(m), "from_page": "/", "to_page": "/product/P002", "count": 3},
            {**win(m), "from_page": "/product/P002", "to_page": "/cart", "count": 1},
        ],
    }


def fill(store, committed_at: float | None = None) -> None:
    """One batch per window, then one with alerts, quarantine and counters (batch 40)."""
    now = time.time() if committed_at is None else committed_at
    for m in range(MINUTES):
        store.write_batch(
            "clickstream",
            m,
            rows_for(m),
            health={
                "committed_at": now - (MINUTES - m),
                "input_rows": 160,
                "duration_ms": 900 + m,
                "input_rate": 40.0,
                "processing_rate": 180.0,
                "max_event_time": f"2026-11-28T10:{m:02d}:30Z",
                "watermark": ws(max(0, m - 2)),
                "lag": 10,
            },
        )
    store.write_batch(
        "clickstream",
        MINUTES,
        {"alerts": ALERTS, "quarantine": QUARANTINE, "counters": COUNTERS},
        health={
            "committed_at": now,
            "input_rows": 80,
            "duration_ms": 1234,
            "input_rate": 50.5,
            "processing_rate": 200.0,
            "max_event_time": "2026-11-28T10:39:30Z",
            "watermark": "2026-11-28T10:37:30Z",
            "lag": 7,
        },
    )


# What the dashboard must show for this store (default range: 30 minutes = 10:10 to 10:39).
EXPECTED = {
    "page_views_per_min": 176,
    "page_views_delta": 2,
    "current_events": page_views(39) + 20 + 5 + 2,  # 205
    "active_users": 88,
    "active_users_delta": 1,
    "error_rate": "3.00%",
    "error_rate_delta": "+2.00 pp",
    "funnel_30min": (1200, 300, 120),
    "funnel_5min": (200, 50, 20),
    "conversion": "10.0%",
    "top_product": "P002",  # by revenue: 250 x purchases in 30 windows
    "quarantined": 5,
    "late_dropped": 4,
    "duplicates": 6,
    "last_batch": 40,
    "batch_duration": "1,234 ms",
    "lag": 7,
}
