"""A seeded, reproducible clickstream generator, and the ground truth of what it generated.

Same seed and settings give byte-identical output: every random choice comes from
`random.Random` instances seeded from `SimConfig.seed`, and time is simulated, never read from
the clock. Regenerate the shipped data from the repository root with:

    clickstream data catalogue   # data/catalogue.csv
    clickstream data sample      # data/sample_clickstream.jsonl.gz + .truth.json

(`clickstream bench produce` reports the generation speed, beside the producers'.)
"""

from __future__ import annotations

import calendar
import csv
import gzip
import itertools
import json
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from clickstream import events
from clickstream.errors import ClickstreamError
from clickstream.times import iso

KINDS = ("valid", "late", "duplicate", "malformed")
MALFORMED_KINDS = (
    events.NOT_JSON,
    events.NOT_OBJECT,
    events.MISSING_FIELD,
    events.WRONG_TYPE,
    events.UNKNOWN_EVENT_TYPE,
    events.BAD_EVENT_TIME,
)
SESSION_GAP_S = 30 * 60
REPO_ROOT = Path(__file__).resolve().parents[3]
DATA_DIR = REPO_ROOT / "data"
CATALOGUE_PATH = DATA_DIR / "catalogue.csv"
SAMPLE_PATH = DATA_DIR / "sample_clickstream.jsonl.gz"

CATEGORIES = ("electronics", "books", "fashion", "home", "sports", "beauty", "toys", "grocery")
# category -> (adjectives, nouns, price range); nouns double as search terms.
_CATEGORY_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[float, float]]] = {
    "electronics": (
        ("Wireless", "Smart", "Portable", "Compact", "Pro"),
        ("Headphones", "Speaker", "Monitor", "Keyboard", "Charger", "Webcam"),
        (19.0, 399.0),
    ),
    "books": (
        ("Illustrated", "Complete", "Pocket", "Annotated", "Modern"),
        ("Cookbook", "Novel", "Atlas", "Guide", "Biography", "Anthology"),
        (7.0, 45.0),
    ),
    "fashion": (
        ("Classic", "Slim", "Organic", "Vintage", "Everyday"),
        ("Jacket", "Sneakers", "Scarf", "Jeans", "Hoodie", "Dress"),
        (15.0, 180.0),
    ),
    "home": (
        ("Ceramic", "Oak", "Linen", "Cast-Iron", "Minimal"),
        ("Lamp", "Mug", "Pan", "Blanket", "Vase", "Shelf"),
        (9.0, 220.0),
    ),
    "sports": (
        ("Trail", "Ultralight", "Pro", "Training", "Adjustable"),
        ("Running Shoes", "Yoga Mat", "Dumbbells", "Backpack", "Bottle", "Tent"),
        (12.0, 260.0),
    ),
    "beauty": (
        ("Hydrating", "Gentle", "Natural", "Daily", "Repair"),
        ("Serum", "Shampoo", "Face Cream", "Sunscreen", "Lip Balm", "Soap"),
        (5.0, 70.0),
    ),
    "toys": (
        ("Wooden", "Giant", "Magnetic", "Classic", "Junior"),
        ("Puzzle", "Building Set", "Robot", "Board Game", "Plush Bear", "Kite"),
        (8.0, 120.0),
    ),
    "grocery": (
        ("Organic", "Roasted", "Premium", "Fair-Trade", "Spiced"),
        ("Coffee", "Tea", "Olive Oil", "Chocolate", "Honey", "Granola"),
        (3.0, 35.0),
    ),
}
CATALOGUE_SIZE = 100
DEVICES = (("mobile", 0.58), ("desktop", 0.36), ("tablet", 0.06))
COUNTRIES = (
    ("US", 0.27),
    ("DE", 0.12),
    ("GB", 0.10),
    ("FR", 0.08),
    ("IN", 0.08),
    ("BR", 0.06),
    ("JP", 0.05),
    ("CA", 0.05),
    ("ES", 0.04),
    ("IT", 0.04),
    ("NL", 0.03),
    ("AU", 0.03),
    ("PL", 0.03),
    ("SE", 0.02),
)
REFERRERS = (("direct", 0.32), ("search", 0.30), ("social", 0.16), ("ads", 0.14), ("email", 0.08))


class SimConfigError(ClickstreamError, ValueError):
    """A simulator setting is out of range."""


class Product(NamedTuple):
    """One catalogue row."""

    product_id: str
    name: str
    category: str
    price: float


class SimRecord(NamedTuple):
    """One generated message: raw value and key as sent to Kafka, the event, and its kind."""

    value: bytes
    key: bytes | None
    event: dict | None
    kind: str


Interval = tuple[float, float, float]


@dataclass(frozen=True)
class SimConfig:
    """What to generate. Scenario knobs are off by default; offsets are seconds of event time."""

    seed: int = 42
    count: int = 10_000  # records emitted, injected duplicates and malformed ones included
    start: str = "2026-11-28T00:00:00Z"
    users: int = 500
    rate: float = 50.0  # mean events per second of event time, over a whole day
    day_length_s: float = 86_400.0  # shorten to compress the daily rhythm
    daily_amplitude: float = 0.5  # 0 switches the daily rhythm off
    peak_hour: float = 18.0
    think_time_s: float = 10.0  # mean seconds between one user's events, sets concurrency
    base_error_rate: float = 0.005
    incidents: tuple[Interval, ...] = ()  # (start_offset_s, end_offset_s, error_rate)
    surges: tuple[Interval, ...] = ()  # (start_offset_s, end_offset_s, rate multiplier)
    late_share: float = 0.0
    late_delay_s: float = 0.0
    duplicate_count: int = 0
    malformed_count: int = 0

    def __post_init__(self) -> None:
        # Accept lists (from JSON or a notebook) but store tuples so the config stays hashable.
        try:
            incidents = tuple(tuple(map(float, i)) for i in self.incidents)
            surges = tuple(tuple(map(float, s)) for s in self.surges)
        except (TypeError, ValueError):
            raise SimConfigError(
                "Invalid simulator setting: incidents and surges are lists of "
                "(start_offset_s, end_offset_s, value) numbers"
            ) from None
        object.__setattr__(self, "incidents", incidents)
        object.__setattr__(self, "surges", surges)
        for problem in _config_problems(self):
            raise SimConfigError(f"Invalid simulator setting: {problem}")

    @property
    def start_time(self) -> datetime:
        """The start as a UTC datetime."""
        return events.parse_event_time(self.start)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        data = asdict(self)
        data["incidents"] = [list(i) for i in self.incidents]
        data["surges"] = [list(s) for s in self.surges]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimConfig:
        """Inverse of `to_dict`."""
        return cls(**data)


def _config_problems(cfg: SimConfig) -> Iterator[str]:
    try:
        events.parse_event_time(cfg.start)
    except ValueError:
        yield f"start={cfg.start!r} must be ISO-8601 with Z or an offset, e.g. 2026-11-28T00:00:00Z"
    checks = [
        (cfg.count >= 0, f"count={cfg.count} must be >= 0"),
        (cfg.users >= 1, f"users={cfg.users} must be >= 1"),
        (cfg.rate > 0, f"rate={cfg.rate} must be > 0"),
        (cfg.day_length_s > 0, f"day_length_s={cfg.day_length_s} must be > 0"),
        (0 <= cfg.daily_amplitude < 1, f"daily_amplitude={cfg.daily_amplitude} must be in [0, 1)"),
        (cfg.think_time_s > 0, f"think_time_s={cfg.think_time_s} must be > 0"),
        (0 <= cfg.base_error_rate <= 1, f"base_error_rate={cfg.base_error_rate} not in [0, 1]"),
        (0 <= cfg.late_share <= 1, f"late_share={cfg.late_share} must be in [0, 1]"),
        (cfg.late_delay_s >= 0, f"late_delay_s={cfg.late_delay_s} must be >= 0"),
        (cfg.duplicate_count >= 0, f"duplicate_count={cfg.duplicate_count} must be >= 0"),
        (cfg.malformed_count >= 0, f"malformed_count={cfg.malformed_count} must be >= 0"),
    ]
    yield from (message for ok, message in checks if not ok)
    injected = cfg.duplicate_count + cfg.malformed_count
    if injected > cfg.count or (cfg.duplicate_count and injected >= cfg.count):
        yield (
            f"count={cfg.count} leaves no room for {cfg.duplicate_count} duplicates and "
            f"{cfg.malformed_count} malformed records (duplicates need at least one real event)"
        )
    for interval in cfg.incidents:
        if len(interval) != 3 or not interval[0] < interval[1] or not 0 <= interval[2] <= 1:
            yield f"incident {interval} must be (start_offset_s, end_offset_s, error_rate 0..1)"
    for interval in cfg.surges:
        if len(interval) != 3 or not interval[0] < interval[1] or not interval[2] > 0:
            yield f"surge {interval} must be (start_offset_s, end_offset_s, multiplier > 0)"


# --- catalogue ---------------------------------------------------------------------------


def generate_catalogue() -> list[Product]:
    """The catalogue, generated deterministically (independent of any simulation seed)."""
    rng = random.Random("clickstream-catalogue-v1")
    products, names = [], set()
    for number in range(1, CATALOGUE_SIZE + 1):
        category = CATEGORIES[(number - 1) % len(CATEGORIES)]
        adjectives, nouns, (low, high) = _CATEGORY_WORDS[category]
        name = f"{rng.choice(adjectives)} {rng.choice(nouns)}"
        while name in names:  # unique names read better in dashboards
            name = f"{rng.choice(adjectives)} {rng.choice(nouns)}"
        names.add(name)
        price = max(0.99, round(rng.uniform(low, high)) - 0.01)
        products.append(Product(f"P{number:03d}", name, category, round(price, 2)))
    return products


def write_catalogue(path: str | Path = CATALOGUE_PATH) -> Path:
    """Write the generated catalogue as CSV (product_id, name, category, price)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(Product._fields)
        for product in generate_catalogue():
            writer.writerow((*product[:3], f"{product.price:.2f}"))
    return path


@lru_cache(maxsize=8)
def load_catalogue(path: str | Path | None = None) -> tuple[Product, ...]:
    """Read data/catalogue.csv (or `path`); without the file, generate the same rows in memory."""
    path = Path(path) if path is not None else CATALOGUE_PATH
    if not path.exists():
        return tuple(generate_catalogue())
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return tuple(
        Product(r["product_id"], r["name"], r["category"], float(r["price"])) for r in rows
    )


# --- generation --------------------------------------------------------------------------


def _lookup_table(weights: list[float], size: int) -> list[int]:
    """A table whose uniform sampling draws index i with probability ~ weights[i] (fast)."""
    total = sum(weights)
    table, cumulative, index = [], 0.0, 0
    for slot in range(size):
        target = (slot + 0.5) / size * total
        while cumulative + weights[index] < target:
            cumulative += weights[index]
            index += 1
        table.append(index)
    return table


def _weighted_table(pairs: tuple[tuple[str, float], ...], size: int = 1024) -> list[str]:
    table = _lookup_table([weight for _, weight in pairs], size)
    return [pairs[i][0] for i in table]


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit ints, so distinct inputs stay distinct."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class _Session:
    """One user's visit: where they are, what is in the cart, what is being checked out."""

    __slots__ = (
        "user",
        "session_id",
        "referrer",
        "last_t",
        "page",
        "product",
        "category",
        "cart",
        "checkout",
    )

    def __init__(self, user: int) -> None:
        self.user, self.session_id, self.referrer = user, "", ""
        self.last_t = -math.inf  # forces a fresh session id on the first event
        self.page, self.product, self.category = "", -1, -1
        self.cart: list[int] = []
        self.checkout: list[int] = []


class Simulator:
    """Generates `config.count` records; `records()` can be called repeatedly, same output."""

    def __init__(self, config: SimConfig, catalogue: Iterable[Product] | None = None) -> None:
        self.config = config
        self.catalogue = tuple(catalogue) if catalogue is not None else load_catalogue()
        if not self.catalogue:
            raise SimConfigError("The product catalogue is empty: regenerate data/catalogue.csv")

    def records(self) -> Iterator[SimRecord]:
        """Yield every record in emission order."""
        cfg = self.config
        if cfg.count == 0:
            return
        base = self._base_records()
        if not cfg.duplicate_count and not cfg.malformed_count:
            for _ in range(cfg.count):
                yield next(base)
            return
        yield from self._interleave(base)

    def _interleave(self, base: Iterator[SimRecord]) -> Iterator[SimRecord]:
        """Mix duplicates and malformed records into the stream at seeded random positions."""
        cfg = self.config
        # Its own RNG, so switching injections on leaves the underlying traffic unchanged.
        rng = random.Random(f"{cfg.seed}:inject")
        dups, bad, recent = cfg.duplicate_count, cfg.malformed_count, deque(maxlen=64)
        for remaining in range(cfg.count, 0, -1):
            base_left = remaining - dups - bad
            dup_weight = dups if recent else 0  # a duplicate needs an original before it
            pick = rng.random() * (base_left + dup_weight + bad)
            if pick < base_left:
                record = next(base)
                recent.append(record)
                yield record
            elif pick < base_left + dup_weight:
                dups -= 1
                original = recent[int(rng.random() * len(recent))]
                yield original._replace(event=dict(original.event), kind="duplicate")
            else:
                index = cfg.malformed_count - bad
                bad -= 1
                yield _malformed(index, recent[-1] if recent else None, rng, cfg)

    def _base_records(self) -> Iterator[SimRecord]:
        """The endless stream of genuine events (on time or late), in arrival order."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:traffic")
        late_rng = random.Random(f"{cfg.seed}:late")
        world = _World(self.catalogue, cfg, rng)
        start_ms = int(cfg.start_time.timestamp() * 1000)
        late_share, late_ms = cfg.late_share, round(cfg.late_delay_s * 1000)
        id_offset, t = rng.getrandbits(64), 0.0
        random_draw, log, rate_at = rng.random, math.log, world.rate_at
        seconds: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS." (formatted once)
        new_record = tuple.__new__  # skips NamedTuple's Python-level __new__ in this hot loop
        for sequence in itertools.count():
            lam = rate_at(t)
            t -= log(1.0 - random_draw()) / lam  # exponential gap: a Poisson process
            ms = start_ms + int(t * 1000)
            kind = "valid"
            if late_share and late_rng.random() < late_share:
                ms -= late_ms
                kind = "late"
            second, milli = divmod(ms, 1000)
            prefix = seconds.get(second) or _second_prefix(seconds, second)
            event_id = f"{_mix64((id_offset + sequence) & 0xFFFFFFFFFFFFFFFF):016x}"
            session = world.pick_session(lam, t)
            event, value = world.next_event(session, t, event_id, f"{prefix}{milli:03d}Z")
            yield new_record(SimRecord, (value, world.user_keys[session.user], event, kind))


def _second_prefix(cache: dict[int, str], second: int) -> str:
    if len(cache) > 4096:  # late events revisit old seconds; keep the cache bounded anyway
        cache.clear()
    moment = datetime.fromtimestamp(second, UTC)
    prefix = cache[second] = f"{moment:%Y-%m-%dT%H:%M:%S}."
    return prefix


class _World:
    """Users, sessions and the catalogue: decides who acts next and what they do."""

    def __init__(self, catalogue: tuple[Product, ...], cfg: SimConfig, rng: random.Random):
        self.cfg, self.rng = cfg, rng
        self.catalogue = catalogue
        self.product_pages = [f"/product/{p.product_id}" for p in catalogue]
        self.product_ids = [p.product_id for p in catalogue]
        self.prices = [p.price for p in catalogue]
        self.categories = sorted({p.category for p in catalogue})
        self.category_pages = [f"/category/{c}" for c in self.categories]
        self.search_pages = [
            [f"/search?q={n.lower().replace(' ', '+')}" for n in _CATEGORY_WORDS[c][1]]
            if c in _CATEGORY_WORDS
            else [f"/search?q={c}"]
            for c in self.categories
        ]
        self._build_popularity(rng)
        self._build_users(rng)
        # Index -1 (no product) lands on the trailing "null".
        self.product_json = [f'"{p}"' for p in self.product_ids] + ["null"]
        self.price_json = [json.dumps(p) for p in self.prices] + ["null"]
        texts = [*self.product_ids, *self.product_pages, *self.category_pages, *self.user_ids]
        texts += [page for pages in self.search_pages for page in pages]
        texts += [*self.devices, *self.countries, *self.referrers]
        self.fast_json = all(json.dumps(s, ensure_ascii=False) == f'"{s}"' for s in texts)
        self.pool: list[_Session] = []
        self.offline = list(range(cfg.users))
        self.max_online = max(1.0, 0.6 * cfg.users)
        start = cfg.start_time
        day_fraction = (start.hour * 3600 + start.minute * 60 + start.second) / 86_400
        self.mean_rate, self.amplitude, self.surges = cfg.rate, cfg.daily_amplitude, cfg.surges
        self.omega = 2 * math.pi / cfg.day_length_s
        self.phase = 2 * math.pi * (day_fraction - cfg.peak_hour / 24)

    def _build_popularity(self, rng: random.Random) -> None:
        # Zipf-like popularity over a seeded ranking: a few hot products, a long tail.
        ranking = list(range(len(self.catalogue)))
        rng.shuffle(ranking)
        weight = [0.0] * len(ranking)
        for rank, index in enumerate(ranking):
            weight[index] = 1.0 / (rank + 1) ** 1.1
        self.popular = _lookup_table(weight, 4096)
        members = [
            [i for i, p in enumerate(self.catalogue) if p.category == c] for c in self.categories
        ]
        self.in_category = [
            [m[j] for j in _lookup_table([weight[i] for i in m], 512)] for m in members
        ]
        self.category_of = [self.categories.index(p.category) for p in self.catalogue]
        category_weight = [sum(weight[i] for i in m) for m in members]
        self.popular_category = _lookup_table(category_weight, 512)

    def _build_users(self, rng: random.Random) -> None:
        devices, countries = _weighted_table(DEVICES), _weighted_table(COUNTRIES)
        width = max(4, len(str(self.cfg.users)))
        self.user_ids = [f"u_{n:0{width}d}" for n in range(1, self.cfg.users + 1)]
        self.user_keys = [u.encode() for u in self.user_ids]
        self.devices = [devices[int(rng.random() * len(devices))] for _ in self.user_ids]
        self.countries = [countries[int(rng.random() * len(countries))] for _ in self.user_ids]
        self.referrers = _weighted_table(REFERRERS)

    def rate_at(self, t: float) -> float:
        """Events per second at offset t: base rate x daily rhythm x any surge."""
        lam = self.mean_rate * (1.0 + self.amplitude * math.cos(self.omega * t + self.phase))
        for start, end, multiplier in self.surges:
            if start <= t < end:
                lam *= multiplier
        return lam

    def error_rate_at(self, t: float) -> float:
        """Share of events that fail at offset t: the base rate, or an incident's."""
        rate = self.cfg.base_error_rate
        for start, end, incident_rate in self.cfg.incidents:
            if start <= t < end:
                rate = max(rate, incident_rate)
        return rate

    def pick_session(self, lam: float, t: float) -> _Session:
        """Pick who acts: a returning session, or a user arriving (keeps ~lam*think_time online)."""
        rng, pool = self.rng, self.pool
        online = len(pool)
        target = min(self.max_online, lam * self.cfg.think_time_s)
        if self.offline and (online == 0 or rng.random() * online < 0.08 * target):
            session = self._arrive()
        else:
            session = pool[int(rng.random() * online)]
        if t - session.last_t > SESSION_GAP_S:
            # Sessions end after 30 minutes of inactivity, as sessionization downstream assumes.
            self._restart(session)
        session.last_t = t
        return session

    def _arrive(self) -> _Session:
        offline, rng = self.offline, self.rng
        slot = int(rng.random() * len(offline))
        user = offline[slot]
        offline[slot] = offline[-1]
        offline.pop()
        session = _Session(user)
        self.pool.append(session)
        return session

    def _restart(self, session: _Session) -> None:
        rng = self.rng
        session.session_id = f"s_{rng.getrandbits(48):012x}"
        session.referrer = self.referrers[int(rng.random() * len(self.referrers))]
        session.page, session.product, session.category = "", -1, -1
        session.cart, session.checkout = [], []

    def _leave(self, session: _Session) -> None:
        pool = self.pool
        index = pool.index(session)
        pool[index] = pool[-1]
        pool.pop()
        self.offline.append(session.user)

    def next_event(
        self, session: _Session, t: float, event_id: str, event_time: str
    ) -> tuple[dict, bytes]:
        """The session's next event, and its serialized value."""
        rng = self.rng
        landing = session.page == ""
        referrer = session.referrer if landing else "internal"
        if rng.random() < self.error_rate_at(t):
            # The request failed: the user stays where they were and is likelier to give up.
            session.page = session.page or "/"
            event_type, page, product, priced = "error", session.page, session.product, False
            status, leave_chance = (503 if rng.random() < 0.6 else 500), 0.2
        else:
            event_type, page, product, leave_chance = self._act(session, landing)
            priced, status = product >= 0, 200
        user = session.user
        event = {
            "event_id": event_id,
            "event_time": event_time,
            "user_id": self.user_ids[user],
            "session_id": session.session_id,
            "event_type": event_type,
            "page": page,
            "product_id": self.product_ids[product] if product >= 0 else None,
            "price": self.prices[product] if priced else None,
            "device": self.devices[user],
            "country": self.countries[user],
            "referrer": referrer,
            "status_code": status,
        }
        if self.fast_json:
            # Same bytes as events.to_json_bytes (tested), at a fraction of the cost: every
            # string here is known to need no JSON escaping.
            value = (
                f'{{"event_id":"{event_id}","event_time":"{event_time}",'
                f'"user_id":"{event["user_id"]}","session_id":"{session.session_id}",'
                f'"event_type":"{event_type}","page":"{page}",'
                f'"product_id":{self.product_json[product]},'
                f'"price":{self.price_json[product] if priced else "null"},'
                f'"device":"{event["device"]}","country":"{event["country"]}",'
                f'"referrer":"{referrer}","status_code":{status}}}'
            ).encode()
        else:
            value = events.to_json_bytes(event)
        if rng.random() < leave_chance:
            self._leave(session)
        return event, value

    def _act(self, session: _Session, landing: bool) -> tuple[str, str, int, float]:
        """Choose a normal action: (event_type, page, product index or -1, chance to leave)."""
        rng = self.rng
        roll = rng.random()
        if session.checkout:
            return self._purchase(session)
        if landing:
            if roll < 0.55:
                return self._view_home(session)
            if roll < 0.75:
                return self._view_category(session, rng)
            return self._view_product(session, rng)
        if roll < 0.12:
            if session.product < 0:
                return self._view_product(session, rng)
            session.cart.append(session.product)
            return "add_to_cart", session.page, session.product, 0.02
        if roll < 0.19:
            if not session.cart:
                return self._view_product(session, rng)
            return self._cart_action(session, rng, remove=roll < 0.15)
        if roll < 0.32:
            return self._search(session, rng)
        if roll < 0.48:
            return self._view_category(session, rng)
        if roll < 0.96:
            return self._view_product(session, rng)
        return self._view_home(session)

    def _cart_action(
        self, session: _Session, rng: random.Random, remove: bool
    ) -> tuple[str, str, int, float]:
        cart = session.cart
        session.page, session.product = ("/cart" if remove else "/checkout"), -1
        if remove:
            product = cart.pop(int(rng.random() * len(cart)))
            return "remove_from_cart", "/cart", product, 0.08
        # Checkout buys the whole cart: one purchase event per item, over the next turns.
        session.checkout, session.cart = cart[::-1], []
        return self._purchase(session)

    def _purchase(self, session: _Session) -> tuple[str, str, int, float]:
        product = session.checkout.pop()
        session.page, session.product = "/checkout", -1
        return "purchase", "/checkout", product, 0.0 if session.checkout else 0.5

    def _search(self, session: _Session, rng: random.Random) -> tuple[str, str, int, float]:
        category = self.popular_category[int(rng.random() * 512)]
        terms = self.search_pages[category]
        session.page, session.product = terms[int(rng.random() * len(terms))], -1
        session.category = category
        return "search", session.page, -1, 0.05

    def _view_home(self, session: _Session) -> tuple[str, str, int, float]:
        session.page, session.product, session.category = "/", -1, -1
        return "page_view", "/", -1, 0.06

    def _view_category(self, session: _Session, rng: random.Random) -> tuple[str, str, int, float]:
        category = self.popular_category[int(rng.random() * 512)]
        session.page, session.product = self.category_pages[category], -1
        session.category = category
        return "page_view", session.page, -1, 0.06

    def _view_product(self, session: _Session, rng: random.Random) -> tuple[str, str, int, float]:
        if session.category >= 0:
            product = self.in_category[session.category][int(rng.random() * 512)]
        else:
            product = self.popular[int(rng.random() * 4096)]
        session.page, session.product = self.product_pages[product], product
        session.category = self.category_of[product]
        return "page_view", session.page, product, 0.05


# --- malformed records -------------------------------------------------------------------

_WRONG_TYPES: tuple[tuple[str, Any], ...] = (
    ("price", "19.99"),
    ("status_code", "200"),
    ("user_id", 42),
    ("event_time", 1795824903120),
)
_UNKNOWN_TYPES = ("clicked", "PageView", "view", "checkout")


def _bad_time(event_time: str, variant: int) -> str:
    date, clock = event_time[:10], event_time[11:-1]
    bad = (
        f"{date} {clock}",  # no "T", no zone
        event_time[:-1],  # no zone: ambiguous, so rejected
        f"{date[8:10]}/{date[5:7]}/{date[:4]} {clock}",
        f"{date[:5]}13{date[7:]}T{clock}Z",  # month 13
        "yesterday",
    )
    return bad[variant % len(bad)]


def _malformed_value(kind: str, event: dict, variant: int) -> bytes:
    """Break `event` in the way named by `kind` (one of MALFORMED_KINDS)."""
    if kind == events.NOT_JSON:
        text = events.to_json_bytes(event).decode()
        options = (
            text[: len(text) // 2].encode(),  # truncated mid-object
            f"GET {event['page']} HTTP/1.1 user={event['user_id']}".encode(),
            repr(event).encode(),  # a Python dict repr is not JSON
        )
        return options[variant % len(options)]
    if kind == events.NOT_OBJECT:
        return events.to_json_bytes([event] if variant % 2 == 0 else list(event.values()))
    if kind == events.MISSING_FIELD:
        event.pop(events.REQUIRED_FIELDS[variant % len(events.REQUIRED_FIELDS)])
    elif kind == events.WRONG_TYPE:
        name, value = _WRONG_TYPES[variant % len(_WRONG_TYPES)]
        event[name] = value
    elif kind == events.UNKNOWN_EVENT_TYPE:
        event["event_type"] = _UNKNOWN_TYPES[variant % len(_UNKNOWN_TYPES)]
    else:
        event["event_time"] = _bad_time(event["event_time"], variant)
    return events.to_json_bytes(event)


def _fallback_event(cfg: SimConfig) -> dict:
    """A plausible event to break when no genuine one has been generated yet."""
    return {
        "event_id": "",
        "event_time": events.format_event_time(cfg.start_time),
        "user_id": "u_0001",
        "session_id": "s_000000000000",
        "event_type": "page_view",
        "page": "/",
        "product_id": None,
        "price": None,
        "device": "mobile",
        "country": "US",
        "referrer": "direct",
        "status_code": 200,
    }


def _malformed(
    index: int, template: SimRecord | None, rng: random.Random, cfg: SimConfig
) -> SimRecord:
    """The index-th malformed record; kinds cycle so every kind of violation appears."""
    kinds = len(MALFORMED_KINDS)
    kind, variant = MALFORMED_KINDS[index % kinds], index // kinds
    event = dict(template.event) if template is not None else _fallback_event(cfg)
    event["event_id"] = f"{rng.getrandbits(64):016x}"
    # Unparseable garbage usually comes from a foreign producer that sets no key.
    key = None if kind == events.NOT_JSON or template is None else template.key
    return SimRecord(_malformed_value(kind, event, variant), key, None, "malformed")


# --- ground truth ------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """What a run generated: counts by kind, late and duplicate ids, reasons, per-second counts."""

    config: dict[str, Any]
    counts: dict[str, int]
    incidents: list[tuple[datetime, datetime, float]]
    surges: list[tuple[datetime, datetime, float]]
    late_event_ids: list[str] = field(default_factory=list)
    duplicate_event_ids: list[str] = field(default_factory=list)
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    # (epoch second, event_type) -> [on-time count, late count]; each event_id counted once.
    per_second: dict[tuple[int, str], list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every record emitted."""
        return sum(self.counts.values())

    @property
    def duplicates(self) -> int:
        """Extra copies of earlier events."""
        return self.counts.get("duplicate", 0)

    @property
    def distinct_events(self) -> int:
        """Genuine events, each event_id once (on time and late)."""
        return self.counts.get("valid", 0) + self.counts.get("late", 0)

    def window_counts(
        self, window_s: int = 60, include_late: bool = True
    ) -> dict[tuple[datetime, str], int]:
        """Events per (window start, event_type) in epoch-aligned tumbling windows, as Spark's."""
        if int(window_s) != window_s or window_s < 1:
            raise ValueError(f"window_s={window_s} must be a whole number of seconds >= 1")
        window_s = int(window_s)
        totals: dict[tuple[int, str], int] = {}
        for (second, event_type), (on_time, late) in self.per_second.items():
            key = (second - second % window_s, event_type)
            totals[key] = totals.get(key, 0) + on_time + (late if include_late else 0)
        return {
            (datetime.fromtimestamp(start, UTC), event_type): n
            for (start, event_type), n in sorted(totals.items())
            if n
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `from_dict` restores an equal object."""
        return {
            "config": self.config,
            "counts": dict(sorted(self.counts.items())),
            "incidents": [_interval_dict(i, "error_rate") for i in self.incidents],
            "surges": [_interval_dict(s, "multiplier") for s in self.surges],
            "late_event_ids": self.late_event_ids,
            "duplicate_event_ids": self.duplicate_event_ids,
            "malformed_by_reason": dict(sorted(self.malformed_by_reason.items())),
            "events_per_second": [
                [iso(second), event_type, on_time, late]
                for (second, event_type), (on_time, late) in sorted(self.per_second.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundTruth:
        """Inverse of `to_dict`."""
        return cls(
            config=data["config"],
            counts=dict(data["counts"]),
            incidents=[_interval_tuple(i, "error_rate") for i in data["incidents"]],
            surges=[_interval_tuple(s, "multiplier") for s in data["surges"]],
            late_event_ids=list(data["late_event_ids"]),
            duplicate_event_ids=list(data["duplicate_event_ids"]),
            malformed_by_reason=dict(data["malformed_by_reason"]),
            per_second={
                (_epoch_second(second), event_type): [on_time, late]
                for second, event_type, on_time, late in data["events_per_second"]
            },
        )

    def write(self, path: str | Path) -> Path:
        """Write as JSON, one list item per line so diffs stay readable."""
        return write_ground_truth(self, path)


def _interval_dict(interval: tuple[datetime, datetime, float], name: str) -> dict[str, Any]:
    start, end, value = interval
    return {
        "start": events.format_event_time(start),
        "end": events.format_event_time(end),
        name: value,
    }


def _interval_tuple(data: dict[str, Any], name: str) -> tuple[datetime, datetime, float]:
    start, end = events.parse_event_time(data["start"]), events.parse_event_time(data["end"])
    return start, end, float(data[name])


def _epoch_second(event_time: str) -> int:
    return calendar.timegm(events.parse_event_time(event_time).utctimetuple())


def _absolute(
    cfg: SimConfig, intervals: tuple[Interval, ...]
) -> list[tuple[datetime, datetime, float]]:
    start = cfg.start_time
    return [
        (start + timedelta(seconds=a), start + timedelta(seconds=b), v) for a, b, v in intervals
    ]


class GroundTruthBuilder:
    """Accumulates a `GroundTruth` one record at a time (so files can be written in one pass)."""

    def __init__(self, config: SimConfig) -> None:
        self.truth = GroundTruth(
            config=config.to_dict(),
            counts=dict.fromkeys(KINDS, 0),
            incidents=_absolute(config, config.incidents),
            surges=_absolute(config, config.surges),
        )
        self._seconds: dict[str, int] = {}

    def add(self, record: SimRecord) -> None:
        """Account for one record."""
        truth, kind = self.truth, record.kind
        truth.counts[kind] += 1
        if kind == "duplicate":
            truth.duplicate_event_ids.append(record.event["event_id"])
        elif kind == "malformed":
            reason = events.parse_value(record.value)[1] or "accepted"
            prefix = events.reason_prefix(reason)
            truth.malformed_by_reason[prefix] = truth.malformed_by_reason.get(prefix, 0) + 1
        else:
            event = record.event
            late = kind == "late"
            if late:
                truth.late_event_ids.append(event["event_id"])
            key = (self._second(event["event_time"]), event["event_type"])
            slot = truth.per_second.get(key)
            if slot is None:
                slot = truth.per_second[key] = [0, 0]
            slot[late] += 1

    def _second(self, event_time: str) -> int:
        if not event_time.endswith("Z"):
            return _epoch_second(event_time)
        # UTC times within one second share a prefix: parse each second once.
        prefix = event_time[:19]
        second = self._seconds.get(prefix)
        if second is None:
            second = self._seconds[prefix] = _epoch_second(prefix + "Z")
        return second

    def result(self) -> GroundTruth:
        """The accumulated truth."""
        return self.truth


def compute_ground_truth(records: Iterable[SimRecord], config: SimConfig) -> GroundTruth:
    """The ground truth of `records`, computed from the records alone (plus the config)."""
    builder = GroundTruthBuilder(config)
    for record in records:
        builder.add(record)
    return builder.result()


# --- files -------------------------------------------------------------------------------


def truth_path_for(path: str | Path) -> Path:
    """Where a replay file's ground truth lives: x.jsonl.gz -> x.truth.json."""
    path = Path(path)
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return path.with_name(f"{name}.truth.json")


def write_jsonl(records: Iterable[SimRecord | bytes], path: str | Path) -> int:
    """Write one raw value per line (gzip for a .gz suffix); return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: a crash never leaves a truncated file behind.
    partial = path.with_name(path.name + ".part")
    written, batch = 0, []
    with partial.open("wb") as raw, _compressor(raw, path) as out:
        for record in records:
            batch.append(record if isinstance(record, bytes) else record.value)
            if len(batch) >= 8192:
                out.write(b"\n".join(batch) + b"\n")
                written, batch = written + len(batch), []
        if batch:
            out.write(b"\n".join(batch) + b"\n")
            written += len(batch)
    partial.replace(path)
    return written


def _compressor(raw: BinaryIO, path: Path) -> AbstractContextManager[BinaryIO]:
    if path.suffix == ".gz":
        # mtime=0 and no file name in the header make the bytes depend on content alone;
        # level 6 is ~4x faster than the default 9 for ~7 % more bytes.
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
    return nullcontext(raw)


def read_jsonl(path: str | Path) -> Iterator[bytes]:
    """Yield each raw value of a JSONL file (gzip for a .gz suffix), without its newline."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for line in handle:
            yield line.rstrip(b"\n")


def _dump_json(data: dict[str, Any]) -> str:
    """Deterministic JSON with top-level keys and list items on their own lines."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"    {json.dumps(item, sort_keys=True)}" for item in value)
            lines.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_ground_truth(truth: GroundTruth, path: str | Path) -> Path:
    """Write `truth` as JSON to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump_json(truth.to_dict()), encoding="utf-8")
    return path


def read_ground_truth(path: str | Path) -> GroundTruth:
    """Read a ground-truth JSON file written by `write_ground_truth`."""
    return GroundTruth.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def simulate_to_file(
    config: SimConfig, output_path: str | Path, progress: Callable[[int], Any] | None = None
) -> GroundTruth:
    """Generate `config` into a JSONL(.gz) file and write `<stem>.truth.json` beside it.

    `progress`, if given, is called with the number of records added since its last call
    (so `tqdm(total=config.count).update` fits).
    """
    builder = GroundTruthBuilder(config)

    def tee() -> Iterator[SimRecord]:
        for index, record in enumerate(Simulator(config).records(), 1):
            builder.add(record)
            if progress is not None and index % _PROGRESS_EVERY == 0:
                progress(_PROGRESS_EVERY)
            yield record

    write_jsonl(tee(), output_path)
    if progress is not None and config.count % _PROGRESS_EVERY:
        progress(config.count % _PROGRESS_EVERY)
    truth = builder.result()
    write_ground_truth(truth, truth_path_for(output_path))
    return truth


_PROGRESS_EVERY = 10_000


# --- command line ------------------------------------------------------------------------


def sample_config() -> SimConfig:
    """The shipped sample: ~5 minutes, 15,000 records, one incident, late, duplicate, malformed."""
    return SimConfig(
        seed=42,
        count=15_000,
        incidents=((150.0, 180.0, 0.25),),
        late_share=0.003,
        late_delay_s=90.0,
        duplicate_count=20,
        malformed_count=12,
    )
