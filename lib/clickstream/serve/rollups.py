"""Rollups: every windowed metric also kept at coarser grains, so long ranges read few rows.

The job writes one-minute windows (its window length). A day of them is ~1,440 windows per
metric key, a week ~10,000, and a chart is about 1,000 pixels wide. So the store keeps each
windowed metric at two more grains too, as tables of their own (`traffic_5m`, `traffic_30m`,
...), and the dashboard reads the coarsest grain that still draws about 300 points or more
across the chosen range (`grain_for`).

How they stay exact: `rollup_rows` is called by every store inside the transaction that applies
a batch. For each grain it finds the buckets the batch touched and recomputes them whole from
the grain below (the fine windows, then the 5-minute rollup), reading them through the store
itself. A bucket is thus always an aggregate of what the grain below holds, written with the
batch and its (job, batch_id) ledger row: exactly-once, like the metrics themselves.

What each rollup holds per bucket (`ROLLUPS`):
- counts and sums (traffic, segments, products, funnel, paths, errors): the exact sum;
- `errors.error_rate`: errors / events of the bucket (not an average of rates);
- `active_users.users`: the *peak* per-window distinct users. Distinct users cannot be summed
  (a user active in two minutes would count twice), so the coarse grain says so;
- `sessions`: sessions per bucket of their start and per band of length (`SESSION_BANDS`), with
  their events and summed lengths: counts and means stay exact, the median comes from bands.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache

from clickstream.serve.schema import (
    GRAINS_MIN,
    METRICS,
    ROLLUPS,
    SESSION_BANDS,
    Rollup,
    normalise,
    table_name,
)
from clickstream.times import epoch_seconds, iso

MIN_POINTS = 250  # the dashboard reads the coarsest grain giving at least this many points


def epoch(value) -> int:
    """Epoch seconds of a time (ISO text, as the stores hold them, or a datetime)."""
    return _epoch_of(value) if isinstance(value, str) else _epoch_of(iso(value))


@lru_cache(maxsize=65536)  # a batch names the same few windows thousands of times
def _epoch_of(text: str) -> int:
    return int(epoch_seconds(text))


def bucket(value, grain_min: int) -> int:
    """Epoch seconds of the start of the `grain_min`-minute bucket holding `value`."""
    t = epoch(value)
    return t - t % (grain_min * 60)


def session_band(duration_s) -> int:
    """The lower bound of the band of SESSION_BANDS a session length falls in."""
    d = max(0.0, float(duration_s or 0))
    return SESSION_BANDS[bisect_right(SESSION_BANDS, d) - 1]


def grains_for(window_s: float) -> tuple[int, ...]:
    """The rollup grains that are whole multiples of the job's window length."""
    w = int(window_s)
    return tuple(g for g in GRAINS_MIN if w and g * 60 > w and (g * 60) % w == 0)


def grain_for(minutes: float, window_s: float) -> int | None:
    """The coarsest grain giving at least MIN_POINTS points over `minutes` (None: the job's
    own windows)."""
    best = None
    for g in grains_for(window_s):
        if minutes / g >= MIN_POINTS:
            best = g
    return best


def _as_source(name: str, row: Mapping) -> dict:
    """A session as the sessions rollup's input: one session in its band of length."""
    return {
        "window_start": row["window_start"],
        "duration_bin": session_band(row.get("duration_s")),
        "sessions": 1,
        "events": row.get("events") or 0,
        "duration_s": row.get("duration_s") or 0,
    }


def aggregate(spec: Rollup, grain_min: int, rows: Iterable[Mapping], base: bool) -> list[dict]:
    """The rollup rows of `rows` (of the grain below), one per bucket and group."""
    out: dict[tuple, dict] = {}
    for row in rows:
        src = _as_source(spec.metric, row) if base and spec.metric == "sessions" else row
        start = bucket(src["window_start"], grain_min)
        key = (start, *(src.get(c) for c in spec.group))
        acc = out.get(key)
        if acc is None:
            acc = out[key] = {
                "window_start": iso(start),
                "window_end": iso(start + grain_min * 60),
                **{c: src.get(c) for c in spec.group},
                **dict.fromkeys(spec.sums, 0),
                **dict.fromkeys(spec.maxes),
            }
        for c in spec.sums:
            acc[c] += src.get(c) or 0
        for c in spec.maxes:
            v = src.get(c)
            if v is not None and (acc[c] is None or v > acc[c]):
                acc[c] = v
    if spec.ratio:
        col, num, den = spec.ratio
        for acc in out.values():
            acc[col] = acc[num] / acc[den] if acc[den] else None
    for acc in out.values():  # sums of floats (revenue) keep cents, not float noise
        for c in spec.sums:
            if isinstance(acc[c], float):
                acc[c] = round(acc[c], 6)
    return [out[k] for k in sorted(out, key=_sort_key)]


def _sort_key(key: tuple) -> tuple:
    return tuple("" if v is None else v for v in key)


Reader = Callable[..., list[dict]]  # Store.read(name, since=..., until=...)


def rollup_rows(read: Reader, rows: Mapping[str, Iterable[Mapping]]) -> dict[str, list[dict]]:
    """The rollup rows a batch of metric rows changes: every bucket it touched, recomputed
    whole from the grain below.

    The grain below is what `read` returns with the batch's own rows (or the rollup rows just
    computed) in place of the stored rows of their keys, so `read` may or may not see the batch
    yet: SQLite and PostgreSQL call this inside the batch's transaction, Redis before the
    MULTI/EXEC that writes the batch and its rollups together.
    """
    out: dict[str, list[dict]] = {}
    for name, items in rows.items():
        spec = ROLLUPS.get(name)
        items = [dict(r) for r in items]
        if spec is None or not items:
            continue
        m = METRICS[name]
        fresh = [normalise(m, r) for r in items]
        if name == "sessions":  # session windows: rolled up by their start
            grains = GRAINS_MIN
        else:
            grains, fresh = grains_for(_window_length(fresh)), tiling(fresh)
        source = m
        for g in grains:
            if not fresh:
                break
            touched = sorted({bucket(r["window_start"], g) for r in fresh})
            lo, hi = touched[0], touched[-1] + g * 60
            stored = read(source.name, since=iso(lo), until=iso(hi))
            mine = {tuple(r[k] for k in source.key) for r in fresh}
            stored = [r for r in stored if tuple(r[k] for k in source.key) not in mine] + fresh
            wanted = set(touched)
            if source is m and name != "sessions":
                stored = tiling(stored)
            inside = [r for r in stored if bucket(r["window_start"], g) in wanted]
            rolled = aggregate(spec, g, inside, base=source is m)
            out[table_name(name, g)] = rolled
            source, fresh = spec.table(g), rolled
    return out


def _window_length(rows: list[Mapping]) -> float:
    if not rows or not rows[0].get("window_end"):
        return 0.0
    return float(epoch(rows[0]["window_end"]) - epoch(rows[0]["window_start"]))


def tiling(rows: list[dict]) -> list[dict]:
    """The windows that tile time without overlap. Sliding windows (`--slide`) overlap, and
    summing them would count an event once per window holding it: of those, the rollups sum
    the windows starting at a whole multiple of their length. Tumbling windows all tile."""
    length = int(_window_length(rows))
    if not length or not rows[0].get("window_end"):
        return rows
    return [r for r in rows if epoch(r["window_start"]) % length == 0]


def rollup_differences(store, limit: int = 3) -> str:
    """How the store's rollups differ from the sums of their finer windows, recomputed here
    from everything the store holds ('' when every rollup is exact)."""
    out = []
    for name, spec in ROLLUPS.items():
        fine = store.read(name)
        if name != "sessions":
            fine = tiling(fine)
        grains = GRAINS_MIN if name == "sessions" else grains_for(_window_length(fine) or 60)
        source_rows, source, base = fine, name, True
        for g in grains:
            want = aggregate(spec, g, source_rows, base=base)
            got = store.read(table_name(name, g))
            if _comparable(got) != _comparable(want):
                extra = [r for r in _comparable(got) if r not in _comparable(want)]
                missing = [r for r in _comparable(want) if r not in _comparable(got)]
                out.append(
                    f"{table_name(name, g)}: {len(got)} rows, expected {len(want)} from "
                    f"{source}; unexpected {extra[:limit]}; missing {missing[:limit]}"
                )
            # Each grain against the one below it, as the store holds it.
            source_rows, source, base = got, table_name(name, g), False
    return "\n".join(out)


def _comparable(rows: list[dict]) -> list[dict]:
    """Rows with floats rounded (stores hand sums back as REAL or double precision)."""
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
