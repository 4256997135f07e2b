"""Test streams for the streaming job, and what the serving store must hold after them.

`build_stream` turns a seeded simulation into the records a test sends: late events beyond the
watermark (the simulator's own), late events inside it (valid events moved a few seconds back),
duplicates, malformed records, error incidents and a surge. `expected_store` computes every
metric from those records directly, with plain whole-stream Python (sort, group, count), not
with the job's incremental engine or Spark, so the two are independent.

Lateness follows the watermark's definition record by record: an event is dropped when it is
older than the largest event time sent before it minus the delay. The job applies the same rule
per micro-batch, as Spark does, with two differences. The watermark moves between batches, and a
stateful operator drops rows by the watermark the batch before set, so the cut lags the newest
event by up to two batches. And the newest event time is taken over all partitions, which a
micro-batch does not read evenly (Spark splits `maxOffsetsPerTrigger` by each partition's
backlog, so one partition can run some seconds of event time ahead of another). The two
definitions agree whenever every event is clear of the watermark by more than two batches span
plus that skew, and the streams here are built that way: duplicates and slightly late events at
most ~5 s behind a 30 s watermark, and late events `late_delay_s` behind it, none of them
arriving in the first `settle_s` (before the job drops anything). With batches of 300 records
(~25 s of event time at 12 events/s) that is 120 s and 60 s, the defaults; with 600 records
(~50 s), 180 s and 120 s.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from clickstream import events
from clickstream.process import anomaly
from clickstream.serve.store import differences
from clickstream.source.simulator import SimConfig, Simulator, load_catalogue

US = 1_000_000


@dataclass(frozen=True)
class Params:
    """Event-time settings of a test run (seconds)."""

    window_s: int = 10
    slide_s: int | None = None
    watermark_s: int = 30
    gap_s: int = 30

    def job_options(self) -> dict:
        return {
            "window": f"{self.window_s} seconds",
            "slide": f"{self.slide_s} seconds" if self.slide_s else None,
            "watermark": f"{self.watermark_s} seconds",
            "session_gap": f"{self.gap_s} seconds",
        }

    def cli_args(self) -> list[str]:
        args = [
            "--window",
            f"{self.window_s} seconds",
            "--watermark",
            f"{self.watermark_s} seconds",
            "--session-gap",
            f"{self.gap_s} seconds",
        ]
        if self.slide_s:
            args += ["--slide", f"{self.slide_s} seconds"]
        return args


def stream_config(seed: int = 11, count: int = 4800, late_delay_s: float = 120.0) -> SimConfig:
    """~330 s of event time at 12 events/s: two error incidents and a surge after warm-up."""
    return SimConfig(
        seed=seed,
        count=count,
        rate=12.0,
        incidents=((80.0, 110.0, 0.3), (230.0, 260.0, 0.25)),
        surges=((150.0, 180.0, 3.0),),
        late_share=0.02,
        late_delay_s=late_delay_s,
        duplicate_count=25,
        malformed_count=30,
    )


def _us(event_time: str) -> int:
    dt = events.parse_event_time(event_time)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def build_stream(
    config: SimConfig | None = None,
    inside_every: int = 41,
    inside_s: float = 5.0,
    settle_s: float = 60.0,
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) records to send, in order. Late events that would arrive in the first
    `settle_s` (while the job drops nothing yet) are left out, with their duplicates; every
    `inside_every`-th valid event after that is moved `inside_s` seconds back (late, but inside
    the watermark)."""
    config = config or stream_config()
    records = list(Simulator(config).records())
    start = _us(config.start)
    settle = round(settle_s * US)
    delay = round(config.late_delay_s * US)
    duplicated = {r.event["event_id"] for r in records if r.kind == "duplicate"}
    removed: set[str] = set()
    out: list[tuple[bytes | None, bytes]] = []
    valid_seen = 0
    for r in records:
        if r.kind == "late" and _us(r.event["event_time"]) + delay - start < settle:
            removed.add(r.event["event_id"])
            continue
        if r.kind == "duplicate" and r.event["event_id"] in removed:
            continue
        value = r.value
        if r.kind == "valid":
            valid_seen += 1
            t = _us(r.event["event_time"])
            if (
                t - start >= settle
                and valid_seen % inside_every == 0
                and r.event["event_id"] not in duplicated
            ):
                moved = dict(r.event)
                moved["event_time"] = events.format_event_time(
                    datetime.fromtimestamp(t / US, UTC) - timedelta(seconds=inside_s)
                )
                value = events.to_json_bytes(moved)
        out.append((r.key, value))
    return out


# -- the expected store -------------------------------------------------------------------------
def iso(us: int) -> str:
    return datetime.fromtimestamp(us // US, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def windows_of(t: int, size: int, slide: int) -> list[int]:
    first = (t - size) // slide * slide + slide  # smallest multiple of slide above t - size
    return [s for s in range(first, t + 1, slide) if s <= t < s + size]


def step_of(event: dict) -> str:
    kind = event["event_type"]
    if kind != "page_view":
        return {
            "search": "search",
            "add_to_cart": "cart",
            "remove_from_cart": "cart",
            "purchase": "checkout",
            "error": "error",
        }[kind]
    page = event["page"]
    if page in ("/", ""):
        return "home"
    for prefix, name in (
        ("/product/", "product"),
        ("/category/", "category"),
        ("/search", "search"),
        ("/cart", "cart"),
        ("/checkout", "checkout"),
    ):
        if page.startswith(prefix):
            return name
    return "other"


@dataclass
class Truth:
    rows: dict[str, list[dict]]
    accepted: list[tuple[int, dict]]
    invalid: list[tuple[str, bytes]]
    final_watermark: int


def classify(records: list[tuple[bytes | None, bytes]], watermark_s: int):
    """(accepted [(t, event)], invalid [(reason, value)], late count, duplicate count, max t)."""
    delay = watermark_s * US
    accepted, invalid = [], []
    late = dups = 0
    newest = None
    seen: set[str] = set()
    for _, value in records:
        event, reason = events.parse_value(value)
        if reason is not None:
            invalid.append((reason, value))
            continue
        t = _us(event["event_time"])
        too_late = newest is not None and t < newest - delay
        newest = t if newest is None else max(newest, t)
        if too_late:
            late += 1
        elif event["event_id"] in seen:
            dups += 1
        else:
            seen.add(event["event_id"])
            accepted.append((t, event))
    return accepted, invalid, late, dups, newest


def expected_store(
    records: list[tuple[bytes | None, bytes]],
    params: Params,
    detector: anomaly.DetectorConfig | None = None,
) -> Truth:
    """Every metric the job must have written after reading `records`, sorted as reads are.

    Sessions, and the page paths within them, count once the watermark has passed the
    session's end (Spark's session windows in append mode)."""
    size = params.window_s * US
    slide = (params.slide_s or params.window_s) * US
    gap = params.gap_s * US
    accepted, invalid, late, dups, newest = classify(records, params.watermark_s)
    final_wm = newest - params.watermark_s * US
    categories = {p.product_id: p.category for p in load_catalogue()}

    def category(e: dict) -> str:
        if e.get("product_id"):
            return categories.get(e["product_id"], "-")
        if e["page"].startswith("/category/"):
            return e["page"][len("/category/") :] or "-"
        return "-"

    traffic, segments, users = Counter(), Counter(), defaultdict(set)
    products: dict = defaultdict(lambda: [0, 0, 0, 0])
    funnel_steps: dict = defaultdict(lambda: defaultdict(list))
    for t, e in accepted:
        for s in windows_of(t, size, slide):
            traffic[(s, e["event_type"])] += 1
            segments[(s, e.get("country") or "-", e.get("device") or "-", category(e))] += 1
            users[s].add(e["user_id"])
            kind, pid = e["event_type"], e.get("product_id")
            if pid and kind in ("page_view", "add_to_cart", "purchase"):
                p = products[(s, pid)]
                p[("page_view", "add_to_cart", "purchase").index(kind)] += 1
                if kind == "purchase" and e.get("price") is not None:
                    p[3] += round(e["price"] * 100)
            stage = {"add_to_cart": 1, "purchase": 2}.get(kind, 0 if kind == "page_view" else None)
            if stage is not None and (kind != "page_view" or pid):
                funnel_steps[s][(e["user_id"], e["session_id"])].append((t, e["event_id"], stage))
    windows = sorted(users)
    bounds = {s: {"window_start": iso(s), "window_end": iso(s + size)} for s in windows}
    rows: dict[str, list[dict]] = {}
    rows["traffic"] = [
        {**bounds[s], "event_type": k, "count": n} for (s, k), n in sorted(traffic.items())
    ]
    rows["segments"] = [
        {**bounds[s], "country": c, "device": d, "category": g, "count": n}
        for (s, c, d, g), n in sorted(segments.items())
    ]
    rows["products"] = [
        {
            **bounds[s],
            "product_id": pid,
            "category": categories.get(pid, "-"),
            "views": v,
            "carts": c,
            "purchases": p,
            "revenue": cents / 100,
        }
        for (s, pid), (v, c, p, cents) in sorted(products.items())
    ]
    rows["active_users"] = [{**bounds[s], "users": len(users[s])} for s in windows]
    funnel = []
    for s in windows:
        reached = Counter()
        for steps in funnel_steps[s].values():
            stage = 0
            for _, _, code in sorted(steps):
                if code == stage:
                    stage += 1
            for k in range(1, stage + 1):
                reached[k] += 1
        funnel.append(
            {**bounds[s], "viewed": reached[1], "carted": reached[2], "purchased": reached[3]}
        )
    rows["funnel"] = funnel
    rows["errors"] = []
    for s in windows:
        n = sum(v for (w, _), v in traffic.items() if w == s)
        bad = traffic.get((s, "error"), 0)
        rows["errors"].append({**bounds[s], "events": n, "errors": bad, "error_rate": bad / n})
    # Sessions and paths, per (user, session id) in (time, id) order.
    by_session: dict = defaultdict(list)
    for t, e in accepted:
        by_session[(e["user_id"], e["session_id"])].append((t, e["event_id"], e))
    sessions, paths = [], Counter()
    for (user, sid), items in by_session.items():
        items.sort(key=lambda x: (x[0], x[1]))
        runs = [[items[0]]]
        for prev, cur in zip(items, items[1:], strict=False):
            if cur[0] - prev[0] < gap:
                runs[-1].append(cur)
            else:
                runs.append([cur])
        for run in runs:
            sessions.append((user, sid, run))
            if run[-1][0] + gap > final_wm:
                continue  # still open: its paths are not final yet
            for prev, cur in zip(run, run[1:], strict=False):
                for s in windows_of(cur[0], size, slide):
                    paths[(s, step_of(prev[2]), step_of(cur[2]))] += 1
    rows["sessions"] = sorted(
        (
            {
                "window_start": iso(run[0][0]),
                "window_end": iso(run[-1][0] + gap),
                "user_id": user,
                "session_id": sid,
                "duration_s": (run[-1][0] - run[0][0]) / US,
                "events": len(run),
            }
            for user, sid, run in sessions
            if run[-1][0] + gap <= final_wm
        ),
        key=lambda r: (r["window_start"], r["window_end"], r["user_id"], r["session_id"]),
    )
    rows["paths"] = [
        {
            "window_start": iso(s),
            "window_end": iso(s + size),
            "from_page": a,
            "to_page": b,
            "count": n,
        }
        for (s, a, b), n in sorted(paths.items())
    ]
    # Alerts: the detector over every closed window, from the first one with data.
    series = []
    if windows:
        s = windows[0]
        while s + size <= final_wm:
            n = sum(v for (w, _), v in traffic.items() if w == s)
            series.append((s, s + size, n, traffic.get((s, "error"), 0)))
            s += slide
    alerts = anomaly.detect(series, detector)
    rows["alerts"] = sorted((a.row() for a in alerts), key=lambda r: r["alert_id"])
    reasons = Counter(reason for reason, _ in invalid)
    rows["quarantine"] = [{"reason": r, "count": n} for r, n in sorted(reasons.items())]
    rows["counters"] = sorted(
        (
            {"name": "records", "value": len(records)},
            {"name": "quarantined", "value": len(invalid)},
            {"name": "late_dropped", "value": late},
            {"name": "duplicates_removed", "value": dups},
            {"name": "events", "value": len(accepted)},
        ),
        key=lambda r: r["name"],
    )
    return Truth(rows=rows, accepted=accepted, invalid=invalid, final_watermark=final_wm)


def store_rows(store) -> dict[str, list[dict]]:
    """Everything the job wrote, metric by metric, as `expected_store` lays it out."""
    return store.contents()


diff = differences  # how two stores differ, one line per metric
