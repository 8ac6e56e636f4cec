"""The admin's demand view under load: whether the search log adds to search latency, and
what the admin page refreshing every 5 s does to searches at 100 a second (the demand view
issue's benchmark).

- The servers under test run as deployed (`percolert serve`, each its own process) against
  the node of ELASTICSEARCH_URL (default the dev node, http://127.0.0.1:9200), with indices
  of a prefix of their own (`percolert setup` first, deleted at the end): the sample catalog
  (`data/products.ndjson`), the default watches (`data/default_watches.json`), shoppers'
  watches of words and of products, and a search log history written straight to its days'
  indices (`--log-days` days of `--log-per-day` search entries, Zipf-distributed texts, ~10 %
  with no result, with alert, visit and presence entries beside), so that the 7-day window
  aggregates a real volume. Rate limits off; one session secret, so that the shoppers'
  cookies are good on every server.
- Three servers: the search log off (`PERCOLERT_SEARCH_LOG_DAYS=0`), on (the view cached
  10 s, the default), and on with the cache off (`PERCOLERT_INSIGHTS_CACHE_SECONDS=0`).
- Four variants, each a turn of open-loop searches at `--rate` (100/s) for `--seconds`: `off`
  (log off), `on` (log on), `page` (log on, and every 5 s the admin page's requests:
  `GET /api/admin/insights?since=24h`, `?since=1h`, `?since=7d` and `GET /api/admin/live`,
  at once), `page-nocache` (the same on the server whose view is not cached: every refresh
  runs the aggregations). The variants run in turns, the order rotated each turn (ABCD BCDA
  CDAB...), so that the machine's noise falls on all of them alike; every turn sends the
  same searches (texts, shoppers and moments), so the comparisons are of equal work.
- Timed on the client: each search from the moment it was due (open loop: a slow answer
  delays no later search, and the time it waited counts), p50/p90/p99/max per turn; each
  admin request's own time. Per turn: CPU seconds of the server, of the Elasticsearch node
  (when its process is visible), of this client and of the rest of the machine (other
  work on a shared machine: the turns' noise), the server's own clocks (/metrics: its
  search time, event-loop lags, the search log written and dropped) and the search log's
  query time in Elasticsearch.
- Afterwards, the searches the log counted against those the log-on servers answered.

    python bench/insights_load.py --quick             # 2 turns of 15 s, a small log
    python bench/insights_load.py --report            # 6 turns of 40 s, 7 x 300k entries

`--report [PATH]` writes docs/benchmarks/insights-load.{json,md} (or PATH and the Markdown
beside it); without it the numbers are only printed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import httpx
import msgspec
import psutil

from bench.rig import REPORT_DIR, ROOT, Server, cpu_seconds, node_process, percentiles
from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.insights import searchlog
from percolert.insights.activity import Entry
from percolert.watches.store import WatchStore
from percolert.web.middleware.sessions import COOKIE_NAME
from tests.conftest import SAMPLE_CATALOG, delete_indices

DEV_NODE = "http://127.0.0.1:9200"
ADMIN_TOKEN = "bench-insights-admin-token-0123456789abcdef"
SESSION_SECRET = "bench-insights-session-secret-0123456789abcdef"
DEFAULT_WATCHES = ROOT / "data" / "default_watches.json"
RATE = 100.0
# The admin page as the issue asks it simulated: every PAGE_EVERY_SECONDS, these at once.
PAGE_EVERY_SECONDS = 5.0
PAGE_REQUESTS = (
    ("insights 24h", "/api/admin/insights?since=24h"),
    ("insights 1h", "/api/admin/insights?since=1h"),
    ("insights 7d", "/api/admin/insights?since=7d"),
    ("live", "/api/admin/live"),
)
CACHE_SECONDS = 10.0
# A search (admin request) not answered within this long is an error.
SEARCH_TIMEOUT_SECONDS = 10.0
ADMIN_TIMEOUT_SECONDS = 60.0
# Connections the load client keeps open to a server: far more than 100/s ever needs.
CONNECTIONS = 128
# Searches of texts the catalog has nothing for: this share of the load, and of the history.
NO_RESULT_SHARE = 0.1
# The history's texts: the load's, and word pairs of the catalog up to this many (a long tail).
HISTORY_TEXTS = 20_000
ZIPF_EXPONENT = 1.0
# The history beside its search entries: alerts, visits (shares of the search entries), and
# one presence entry per instance a minute.
ALERT_SHARE, VISIT_SHARE = 0.05, 0.01
HISTORY_INSTANCES = ("shop-a:8000:1a2b3c", "shop-b:8000:4d5e6f")
BULK_CHUNK = 10_000
# Pause between turns: what a turn left in flight (the view's aggregations) ends first.
SETTLE_SECONDS = 3.0
# Things the catalog does not sell: searches with no result.
NOT_SOLD = (
    "lawn mower",
    "garden hose",
    "sofa bed",
    "winter tyres",
    "dog food",
    "coffee table",
    "baby stroller",
    "yoga mat",
    "office chair",
    "paint roller",
    "camping tent",
    "snow boots",
    "wine glasses",
    "bike helmet",
    "aquarium pump",
    "guitar strings",
    "bed sheets",
    "fishing rod",
    "hair dryer",
    "espresso beans",
    "running shoes",
    "lego castle",
    "vacuum flask",
    "ski goggles",
    "cat litter",
)
# Words of product names nobody searches for alone beside a brand.
_FILLERS = frozenset({"with", "for", "and", "the", "edition", "gen", "inch", "model", "month"})
_WORD = re.compile(r"[a-z][a-z0-9+-]*|[0-9]+[a-z][a-z0-9]*")


@dataclass(frozen=True)
class Variant:
    key: str
    name: str
    server: str  # which of SERVERS answers it
    page: bool  # the admin page refreshing every PAGE_EVERY_SECONDS


VARIANTS = (
    Variant("off", "log off", "log-off", page=False),
    Variant("on", "log on", "log-on", page=False),
    Variant("page", "log on + page every 5 s (cached 10 s)", "log-on", page=True),
    Variant("page-nocache", "log on + page every 5 s, cache off", "log-on-nocache", page=True),
)
SERVERS = {
    "log-off": {"PERCOLERT_SEARCH_LOG_DAYS": "0"},
    "log-on": {
        "PERCOLERT_SEARCH_LOG_DAYS": "30",
        "PERCOLERT_INSIGHTS_CACHE_SECONDS": f"{CACHE_SECONDS:g}",
    },
    "log-on-nocache": {"PERCOLERT_SEARCH_LOG_DAYS": "30", "PERCOLERT_INSIGHTS_CACHE_SECONDS": "0"},
}
# The equal-work comparisons the report leads with: (label, variant, its reference).
COMPARISONS = (
    ("search log on vs off", "on", "off"),
    ("page every 5 s (cached 10 s) vs none", "page", "on"),
    ("page every 5 s, cache off vs none", "page-nocache", "on"),
)


# -- The pure parts: schedule, texts, history, statistics -------------------------------------


def send_offsets(rate: float, seconds: float) -> list[float]:
    """Open loop: search i is due `i / rate` seconds after the start, whenever the answers
    before it come."""
    return [number / rate for number in range(round(rate * seconds))]


def page_ticks(seconds: float, every: float = PAGE_EVERY_SECONDS) -> list[float]:
    """When the admin page refreshes within a turn of `seconds`: at once, then every `every`."""
    return [tick * every for tick in range(math.ceil(seconds / every))]


def turn_order(keys: Sequence[str], turns: int) -> list[tuple[int, str]]:
    """(turn, variant) in the order they run: every variant once a turn, the order rotated
    by one each turn (ABCD BCDA CDAB ...), so that no variant always follows the same one."""
    order = []
    for turn in range(turns):
        shift = turn % len(keys)
        order += [(turn, key) for key in [*keys[shift:], *keys[:shift]]]
    return order


def zipf_cumulative(count: int, exponent: float = ZIPF_EXPONENT) -> list[float]:
    """Cumulative weights of ranks 1..count, rank r weighing 1 / r**exponent."""
    return list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, count + 1)))


def catalog_products(path: Path = SAMPLE_CATALOG) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def load_texts(products: Sequence[dict[str, Any]], seed: int = 7) -> list[str]:
    """What shoppers type for the catalog, most searched first: brands, categories, the first
    one to three words of each product's name, a brand with a word of its product's name, and
    a misspelling of every seventh of them (two letters swapped). Their popularity is shuffled
    (seeded), not the catalog's order."""
    found: dict[str, None] = {}
    for product in products:
        words = [w for w in _words(str(product["product_name"])) if w not in _FILLERS]
        brand = " ".join(_words(str(product["brand"])))
        for text in (
            brand,
            str(product["category"]).replace("-", " "),
            *(" ".join(words[:length]) for length in (1, 2, 3)),
            *(f"{brand} {word}" for word in words[1:4] if len(word) > 2 and word != brand),
        ):
            if text:
                found.setdefault(text, None)
    texts = list(found)
    for text in texts[::7]:
        if len(text) >= 5 and text[2].isalpha() and text[3].isalpha() and text[2] != text[3]:
            found.setdefault(text[:2] + text[3] + text[2] + text[4:], None)
    ranked = list(found)
    random.Random(seed).shuffle(ranked)
    return ranked


def history_texts(
    load: Sequence[str], products: Sequence[dict[str, Any]], count: int, seed: int = 3
) -> list[str]:
    """The search log history's texts, most searched first: the load's, then pairs of the
    catalog's words drawn at random (the long tail of what shoppers type), `count` in all."""
    chosen = random.Random(seed)
    found = dict.fromkeys(load)
    vocabulary = sorted({word for p in products for word in _words(str(p["product_name"]))})
    pairs = len(vocabulary) * (len(vocabulary) - 1)
    while len(found) < min(count, len(load) + pairs):
        first, second = chosen.sample(vocabulary, 2)
        found.setdefault(f"{first} {second}", None)
    return list(found)[:count]


class Planned(msgspec.Struct, frozen=True, array_like=True):
    offset: float  # seconds after the turn's start the search is due
    text: str
    session: int  # which shopper (an index into the cookies)


def plan_searches(
    texts: Sequence[str],
    no_result: Sequence[str],
    sessions: int,
    rate: float,
    seconds: float,
    *,
    seed: int,
    no_result_share: float = NO_RESULT_SHARE,
) -> list[Planned]:
    """The searches of a turn: due at `rate` a second, texts Zipf-distributed over `texts`
    (`no_result_share` of them from `no_result`, Zipf-distributed too), shoppers uniformly
    among `sessions`. The same seed, the same searches."""
    chosen = random.Random(seed)
    found_weights = zipf_cumulative(len(texts))
    none_weights = zipf_cumulative(len(no_result))
    planned = []
    for offset in send_offsets(rate, seconds):
        if chosen.random() < no_result_share:
            text = chosen.choices(no_result, cum_weights=none_weights)[0]
        else:
            text = chosen.choices(texts, cum_weights=found_weights)[0]
        planned.append(Planned(offset, text, chosen.randrange(sessions)))
    return planned


@dataclass(frozen=True)
class HistoryWatch:
    watch_id: str
    label: str
    default: bool


def history(
    now_ms: int,
    *,
    days: float,
    searches_per_day: int,
    texts: Sequence[str],
    no_result: Sequence[str],
    watches: Sequence[HistoryWatch],
    seed: int = 11,
) -> Iterator[Entry]:
    """A search log of `days` days before `now_ms`, as the writer (activity.py) would have
    left it: search entries (one per text counted over a second; Zipf-distributed texts, the
    most searched counted several times; `NO_RESULT_SHARE` of them with no result), alert
    entries (ALERT_SHARE of that, per watch, Zipf-distributed), visits (VISIT_SHARE) and
    each instance's presence once a minute. Moments uniform over the days, not in order."""
    chosen = random.Random(seed)
    span = round(days * 86_400_000)
    start = now_ms - span
    searches = round(days * searches_per_day)
    text_weights = zipf_cumulative(len(texts))
    none_weights = zipf_cumulative(len(no_result))
    for _ in range(searches):
        at = start + chosen.randrange(span)
        if chosen.random() < NO_RESULT_SHARE:
            text, results = chosen.choices(no_result, cum_weights=none_weights)[0], 0
        else:
            rank = bisect.bisect_left(text_weights, chosen.random() * text_weights[-1])
            text, results = texts[min(rank, len(texts) - 1)], chosen.randint(1, 60)
            # A popular text is searched several times in the second it is counted over.
            if rank < 20:
                yield Entry(
                    kind="search",
                    at=at,
                    text=text,
                    count=1 + int(chosen.expovariate(1 / 6)),
                    results=results,
                )
                continue
        yield Entry(kind="search", at=at, text=text, count=1, results=results)
    if watches:
        watch_weights = zipf_cumulative(len(watches))
        for _ in range(round(searches * ALERT_SHARE)):
            watch = chosen.choices(watches, cum_weights=watch_weights)[0]
            alerts = 1 + int(chosen.expovariate(1 / 3))
            yield Entry(
                kind="alert",
                at=start + chosen.randrange(span),
                watch_id=watch.watch_id,
                label=watch.label,
                default=watch.default,
                alerts=alerts,
                shoppers=alerts * chosen.randint(0, 12),
                instance=chosen.choice(HISTORY_INSTANCES),
            )
        for _ in range(round(searches * VISIT_SHARE)):
            watch = chosen.choices(watches, cum_weights=watch_weights)[0]
            yield Entry(
                kind="visit",
                at=start + chosen.randrange(span),
                watch_id=watch.watch_id,
                default=watch.default,
                count=1,
            )
    for minute in range(span // 60_000):
        for instance in HISTORY_INSTANCES:
            shoppers = chosen.randint(40, 400)
            yield Entry(
                kind="presence",
                at=start + minute * 60_000,
                shoppers=shoppers,
                sockets=shoppers + chosen.randint(0, shoppers // 4),
                instance=instance,
            )


def median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return round(value / reference, 3)


def ranges_overlap(first: Sequence[float], second: Sequence[float]) -> bool:
    """Whether two variants' per-turn values overlap: a difference within the spread of the
    turns (the machine's noise), not a measured one."""
    return bool(first and second) and min(first) <= max(second) and min(second) <= max(first)


# -- The load client --------------------------------------------------------------------------


class _Answer(msgspec.Struct):
    total: int = 0


_answer = msgspec.json.Decoder(_Answer)


@dataclass
class Load:
    """What one run of the client saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    no_results: int = 0  # answers with total 0
    new_cookies: int = 0  # answers that set a cookie: the shopper's was not taken
    late_ms_max: float = 0.0  # how late the client sent its latest search
    admin_ms: dict[str, list[float]] = field(default_factory=dict)
    admin_errors: Counter[str] = field(default_factory=Counter)


async def _page(base: str, start: float, seconds: float, load: Load) -> None:
    """The admin page: its requests at once, every PAGE_EVERY_SECONDS."""
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(
        base, headers=headers, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:

        async def one(label: str, path: str) -> None:
            sent = loop.time()
            try:
                async with http.get(path) as response:
                    await response.read()
                    if response.status == 200:
                        load.admin_ms.setdefault(label, []).append((loop.time() - sent) * 1000)
                    else:
                        load.admin_errors[f"{label}: {response.status}"] += 1
            except TimeoutError:
                load.admin_errors[f"{label}: timeout"] += 1
            except aiohttp.ClientError as error:
                load.admin_errors[f"{label}: {type(error).__name__}"] += 1

        page: list[asyncio.Task[None]] = []
        for tick in page_ticks(seconds):
            await asyncio.sleep(max(0.0, start + tick - loop.time()))
            page += [asyncio.create_task(one(label, path)) for label, path in PAGE_REQUESTS]
        await asyncio.gather(*page)


async def drive(base: str, plan: Sequence[Planned], cookies: Sequence[str], *, page: bool) -> Load:
    """Send `plan`'s searches to `base` when each is due (open loop), with `page` the admin
    page's refreshes beside; what the client saw."""
    load = Load()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=SEARCH_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(
        base, connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:

        async def one(due: float, planned: Planned) -> None:
            headers = {"Cookie": f"{COOKIE_NAME}={cookies[planned.session]}"}
            try:
                async with http.get(
                    "/api/search", params={"q": planned.text}, headers=headers
                ) as response:
                    body = await response.read()
                    if response.status != 200:
                        load.errors[str(response.status)] += 1
                        return
                    load.latencies_ms.append((loop.time() - due) * 1000)
                    if "Set-Cookie" in response.headers:
                        load.new_cookies += 1
                    if _answer.decode(body).total == 0:
                        load.no_results += 1
            except TimeoutError:
                load.errors["timeout"] += 1
            except aiohttp.ClientError as error:
                load.errors[type(error).__name__] += 1

        start = loop.time() + 0.1
        tasks: list[asyncio.Task[None]] = []
        seconds = plan[-1].offset + 1 / RATE if plan else 0.0
        admin = asyncio.create_task(_page(base, start, seconds, load)) if page else None
        for planned in plan:
            due = start + planned.offset
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                load.late_ms_max = max(load.late_ms_max, -delay * 1000)
            tasks.append(asyncio.create_task(one(due, planned)))
        await asyncio.gather(*tasks)
        if admin is not None:
            await admin
    return load


async def make_sessions(base: str, count: int) -> list[str]:
    """`count` shoppers' session cookies, each from `POST /api/session` as the page asks."""
    limit = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(base, cookie_jar=aiohttp.DummyCookieJar()) as http:

        async def one() -> str:
            async with limit, http.post("/api/session", json={}) as response:
                if response.status != 204 or COOKIE_NAME not in response.cookies:
                    raise SystemExit(f"POST /api/session: {response.status} {response.headers}")
                return response.cookies[COOKIE_NAME].value

        return list(await asyncio.gather(*(one() for _ in range(count))))


# -- Setup (not timed) ------------------------------------------------------------------------


def _cli(settings: Settings, *args: str) -> None:
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": settings.elasticsearch_url,
        "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    command = [sys.executable, "-m", "percolert.cli", *args]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"percolert {shlex.join(args)} failed:\n{done.stdout}\n{done.stderr}")


async def shopper_watches(
    settings: Settings,
    products: Sequence[dict[str, Any]],
    texts: Sequence[str],
    words: int,
    of_products: int,
    seed: int = 5,
) -> tuple[list[HistoryWatch], int]:
    """Shoppers' watches of words (`words`, Zipf-distributed over the load's texts, some with
    a category or a price) and of products (`of_products`, some with a price): what the
    view's watched terms, products and restock queue aggregate. Returns the default watches
    and a sample of the others (what alerts went through, in the history) and how many."""
    chosen = random.Random(seed)
    client = es.create_client(settings)
    try:
        names = {str(p["sku"]): str(p["product_name"]) for p in products}

        async def product_name(sku: str) -> str | None:
            return names.get(sku)

        alias = indices.alias_for(settings, "watches")
        store = WatchStore(
            client, alias, TextNormalizer(), max_per_user=1_000, product_name=product_name
        )
        weights = zipf_cumulative(len(texts))
        specs: list[tuple[str | None, WatchSpec]] = []
        for number in range(words):
            terms = chosen.choices(texts, cum_weights=weights)[0]
            price = float(chosen.choice((50, 100, 200, 500, 1000))) if number % 5 == 0 else None
            specs.append((f"bench-shopper-{number:06d}", WatchSpec(terms=terms, max_price=price)))
        stored = await store.add_many(specs)
        operations: list[dict[str, Any]] = []
        # The most watched products first: a Zipf distribution over the catalog, shuffled.
        skus = sorted(names)
        chosen.shuffle(skus)
        sku_weights = zipf_cumulative(len(skus))
        for number in range(of_products):
            sku = chosen.choices(skus, cum_weights=sku_weights)[0]
            price = float(chosen.randint(20, 900)) if number % 3 == 0 else None
            spec = WatchSpec(sku=sku, max_price=price)
            watch_id, document = await store.prepare_product(f"bench-shopper-{number:06d}", spec)
            operations += [{"index": {"_index": alias, "_id": watch_id}}, document]
        if operations:
            response = await client.bulk(operations=operations, refresh=True)
            if response["errors"]:
                raise SystemExit(f"product watches refused: {response['items'][0]}")
        watches = [
            HistoryWatch(watch.id, watch.terms, default=True) for watch in await store.defaults()
        ]
        for owner, spec in specs[:300]:
            watches.append(HistoryWatch(store.prepare(owner, spec)[0], spec.terms, default=False))
        return watches, stored + of_products
    finally:
        await client.close()


async def write_history(settings: Settings, entries: Iterator[Entry]) -> int:
    """The entries in bulk into their days' indices (made from the template first, refreshed
    only at the end); how many."""
    client = es.create_client(settings)
    encoder = msgspec.json.Encoder()
    day_names: dict[int, str] = {}
    written = 0
    try:
        await searchlog.ensure_template(client, settings)

        async def send(body: bytes) -> None:
            response = await client.bulk(
                operations=cast(Any, body),
                filter_path=["errors", "items.*.status", "items.*.error"],
            )
            if response.body.get("errors"):
                failed = [item for item in response.body["items"] if "error" in item["index"]]
                raise SystemExit(f"the history's bulk refused {len(failed)}: {failed[0]}")

        pending: set[asyncio.Task[None]] = set()
        while chunk := list(itertools.islice(entries, BULK_CHUNK)):
            body = bytearray()
            for entry in chunk:
                day = entry.at // 86_400_000
                name = day_names.get(day)
                if name is None:
                    name = day_names[day] = searchlog.index_at(settings, entry.at)
                    await searchlog.create_day(client, name)
                    await client.indices.put_settings(
                        index=name, settings={"index": {"refresh_interval": "-1"}}
                    )
                body += b'{"index":{"_index":%s}}\n' % encoder.encode(name)
                body += encoder.encode(entry)
                body += b"\n"
            if len(pending) >= 2:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(send(bytes(body))))
            written += len(chunk)
        for task in pending:
            await task
        names = ",".join(sorted(day_names.values()))
        if names:
            # The template's refresh interval again (the servers write to today's index).
            await client.indices.put_settings(
                index=names, settings={"index": {"refresh_interval": "1s"}}
            )
            await client.indices.refresh(index=names)
        return written
    finally:
        await client.close()


def log_stats(node_url: str, settings: Settings) -> dict[str, float]:
    """The search log's documents, size, and Elasticsearch's query clocks over it."""
    answer = httpx.get(
        f"{node_url}/{searchlog.pattern(settings)}/_stats/docs,store,search,request_cache",
        timeout=30,
    ).json()
    total = answer.get("_all", {}).get("primaries", {})
    every = answer.get("_all", {}).get("total", {})
    return {
        "docs": float(total.get("docs", {}).get("count", 0)),
        "store_mb": round(total.get("store", {}).get("size_in_bytes", 0) / 2**20, 1),
        "indices": float(len(answer.get("indices", {}))),
        "query_ms": float(every.get("search", {}).get("query_time_in_millis", 0)),
        "queries": float(every.get("search", {}).get("query_total", 0)),
        "cache_hits": float(every.get("request_cache", {}).get("hit_count", 0)),
        "cache_misses": float(every.get("request_cache", {}).get("miss_count", 0)),
    }


def merges_settled(node_url: str, settings: Settings, seconds: float = 120.0) -> None:
    """Wait (at most `seconds`) until Elasticsearch merges nothing of the freshly written
    log: a merge running through the first turns would fall on one variant."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = httpx.get(
            f"{node_url}/{searchlog.pattern(settings)}/_stats/merge", timeout=30
        ).json()
        if not answer["_all"]["total"]["merges"]["current"]:
            return
        time.sleep(1.0)


def logged_searches(node_url: str, settings: Settings, since_ms: int) -> int:
    """The searches the log counted from `since_ms` on (the sum of its search entries)."""
    answer = httpx.post(
        f"{node_url}/{searchlog.pattern(settings)}/_search",
        json={
            "size": 0,
            "query": {
                "bool": {
                    "filter": [{"term": {"kind": "search"}}, {"range": {"at": {"gte": since_ms}}}]
                }
            },
            "aggs": {"n": {"sum": {"field": "count"}}},
        },
        timeout=60,
    ).json()
    return int(answer["aggregations"]["n"]["value"] or 0)


_METRICS = (
    "percolert_search_seconds_sum",
    "percolert_search_seconds_count",
    'percolert_search_seconds_bucket{le="0.1"}',
    "percolert_search_log_",
    "percolert_event_loop_lag_seconds_count",
    'percolert_event_loop_lag_seconds_bucket{le="0.025"}',
    'percolert_event_loop_lag_seconds_bucket{le="0.1"}',
    "percolert_elasticsearch_errors_total",
)


def server_metrics(url: str) -> dict[str, float]:
    """The server's clocks and counters this benchmark reads, from its /metrics (this
    machine may read them without the token)."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(_METRICS):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _metric_changes(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    change = {name: value - before.get(name, 0.0) for name, value in after.items()}
    searches = change.get("percolert_search_seconds_count", 0.0)
    lags = change.get("percolert_event_loop_lag_seconds_count", 0.0)
    return {
        "search_ms_mean": round(
            1000 * change.get("percolert_search_seconds_sum", 0.0) / max(searches, 1.0), 2
        ),
        "searches_over_100ms": searches
        - change.get('percolert_search_seconds_bucket{le="0.1"}', 0.0),
        "lags_over_25ms": lags
        - change.get('percolert_event_loop_lag_seconds_bucket{le="0.025"}', 0.0),
        "lags_over_100ms": lags
        - change.get('percolert_event_loop_lag_seconds_bucket{le="0.1"}', 0.0),
        "log_written": change.get("percolert_search_log_written_total", 0.0),
        "log_dropped": change.get("percolert_search_log_dropped_total", 0.0),
        "log_write_failures": change.get("percolert_search_log_write_failures_total", 0.0),
        "elasticsearch_errors": sum(
            value
            for name, value in change.items()
            if name.startswith("percolert_elasticsearch_errors_total")
        ),
    }


# -- What is measured -------------------------------------------------------------------------


@dataclass
class Turn:
    variant: str
    turn: int
    searches: int  # sent
    answered: int
    errors: dict[str, int]
    search_ms: dict[str, float]  # from when each was due: p50, p90, p99, max
    search_ms_mean: float
    no_results: int
    new_cookies: int
    late_ms_max: float
    admin_ms: dict[str, list[float]]
    admin_errors: dict[str, int]
    server_cpu_seconds: float
    elasticsearch_cpu_seconds: float | None
    client_cpu_seconds: float
    # The machine's CPU seconds besides: the other servers, and whatever else runs on it.
    others_cpu_seconds: float
    server: dict[str, float]  # its own clocks and counters (_metric_changes)
    log_query_ms: float  # Elasticsearch's query time over the search log
    log_queries: float
    load_average: float  # one minute, at the turn's end


@dataclass
class VariantResult:
    key: str
    name: str
    turns: int
    searches: int
    errors: int
    # Medians over the turns of each turn's percentile, and each turn's.
    p50_ms: float | None
    p99_ms: float | None
    p50_turns: list[float]
    p99_turns: list[float]
    max_ms: float | None  # the slowest of all its searches
    pooled_ms: dict[str, float]  # every search of every turn together
    server_cpu_seconds: float | None  # median per turn
    server_cpu_ms_per_search: float | None
    elasticsearch_cpu_seconds: float | None  # median per turn
    server_search_ms_mean: float | None  # the server's own clock, median per turn
    lags_over_100ms: float
    log_written: float
    log_dropped: float
    log_query_ms_per_turn: float | None
    admin: dict[str, dict[str, float]]  # request -> count and percentiles (ms)
    admin_errors: dict[str, int]


@dataclass
class Comparison:
    label: str
    variant: str
    reference: str
    p50_ratio: float | None
    p99_ratio: float | None
    p99_ms: float | None
    reference_p99_ms: float | None
    within_spread: bool  # the per-turn p99s overlap: no difference beyond the turns' noise
    server_cpu_ratio: float | None
    elasticsearch_cpu_ratio: float | None


@dataclass
class Report:
    command: str
    commit: str
    cores: int | None
    node: str
    node_version: str
    load_average_start: list[float]
    rate: float
    seconds: float
    turns: int
    order: list[str]
    sessions: int
    texts: int  # distinct texts the load searches
    page_requests: list[str]
    page_every_seconds: float
    cache_seconds: float
    log_days: float
    log_per_day: int
    log_entries_written: int  # the history
    log_docs_before: int  # in the log when the turns began
    log_docs_after: int
    log_store_mb: float
    log_indices: int
    watches: dict[str, int]
    setup_seconds: float
    load_average_end: list[float] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    variants: list[VariantResult] = field(default_factory=list)
    turn_results: list[Turn] = field(default_factory=list)
    # The searches the log-on servers answered (warm-ups included) and those the log counted.
    log_answered: int = 0
    log_counted: int = 0
    log_dropped: float = 0.0
    log_write_failures: float = 0.0
    # The log's growth under this load: entries written a second by a log-on server.
    log_entries_per_second: float | None = None
    request_cache_hits: float = 0.0
    request_cache_misses: float = 0.0
    client_cpu_percent: float | None = None
    zero_result_share: float | None = None  # of the load's answered searches


def summarize_variant(
    variant: Variant, turns: Sequence[Turn], pooled: list[float]
) -> VariantResult:
    """A variant over its turns: medians of the per-turn figures, pooled percentiles."""
    p50s = [turn.search_ms["p50"] for turn in turns if turn.search_ms]
    p99s = [turn.search_ms["p99"] for turn in turns if turn.search_ms]
    searches = sum(turn.answered for turn in turns)
    cpu = median([turn.server_cpu_seconds for turn in turns])
    admin_ms: dict[str, list[float]] = {}
    admin_errors: Counter[str] = Counter()
    for turn in turns:
        for label, values in turn.admin_ms.items():
            admin_ms.setdefault(label, []).extend(values)
        admin_errors.update(turn.admin_errors)
    per_turn = max(1, len(turns))
    return VariantResult(
        key=variant.key,
        name=variant.name,
        turns=len(turns),
        searches=searches,
        errors=sum(sum(turn.errors.values()) for turn in turns),
        p50_ms=median(p50s),
        p99_ms=median(p99s),
        p50_turns=p50s,
        p99_turns=p99s,
        max_ms=max((turn.search_ms["max"] for turn in turns if turn.search_ms), default=None),
        pooled_ms=percentiles(pooled),
        server_cpu_seconds=cpu,
        server_cpu_ms_per_search=(
            round(1000 * cpu * len(turns) / searches, 3) if cpu is not None and searches else None
        ),
        elasticsearch_cpu_seconds=median(
            [
                turn.elasticsearch_cpu_seconds
                for turn in turns
                if turn.elasticsearch_cpu_seconds is not None
            ]
        ),
        server_search_ms_mean=median([turn.server["search_ms_mean"] for turn in turns]),
        lags_over_100ms=sum(turn.server["lags_over_100ms"] for turn in turns),
        log_written=sum(turn.server["log_written"] for turn in turns),
        log_dropped=sum(turn.server["log_dropped"] for turn in turns),
        log_query_ms_per_turn=round(sum(turn.log_query_ms for turn in turns) / per_turn, 1),
        admin={
            label: {"count": float(len(values)), **percentiles(values)}
            for label, values in admin_ms.items()
        },
        admin_errors=dict(admin_errors),
    )


def compare(results: dict[str, VariantResult]) -> list[Comparison]:
    comparisons = []
    for label, key, reference_key in COMPARISONS:
        if key not in results or reference_key not in results:
            continue
        variant, reference = results[key], results[reference_key]
        comparisons.append(
            Comparison(
                label=label,
                variant=key,
                reference=reference_key,
                p50_ratio=ratio(variant.p50_ms, reference.p50_ms),
                p99_ratio=ratio(variant.p99_ms, reference.p99_ms),
                p99_ms=variant.p99_ms,
                reference_p99_ms=reference.p99_ms,
                within_spread=ranges_overlap(variant.p99_turns, reference.p99_turns),
                server_cpu_ratio=ratio(variant.server_cpu_seconds, reference.server_cpu_seconds),
                elasticsearch_cpu_ratio=ratio(
                    variant.elasticsearch_cpu_seconds, reference.elasticsearch_cpu_seconds
                ),
            )
        )
    return comparisons


def run_turn(
    variant: Variant,
    turn: int,
    server: Server,
    plan: Sequence[Planned],
    cookies: Sequence[str],
    *,
    node: psutil.Process | None,
    node_url: str,
    settings: Settings,
) -> tuple[Turn, list[float]]:
    me = psutil.Process()
    metrics_before = server_metrics(server.url)
    log_before = log_stats(node_url, settings)
    before = (
        cpu_seconds(server.ps),
        cpu_seconds(node) if node is not None else 0.0,
        cpu_seconds(me),
        machine_busy_seconds(),
    )
    load = asyncio.run(drive(server.url, plan, cookies, page=variant.page))
    after = (
        cpu_seconds(server.ps),
        cpu_seconds(node) if node is not None else 0.0,
        cpu_seconds(me),
        machine_busy_seconds(),
    )
    spent = [later - earlier for later, earlier in zip(after, before, strict=True)]
    log_after = log_stats(node_url, settings)
    result = Turn(
        variant=variant.key,
        turn=turn,
        searches=len(plan),
        answered=len(load.latencies_ms),
        errors=dict(load.errors),
        search_ms=percentiles(load.latencies_ms),
        search_ms_mean=round(statistics.fmean(load.latencies_ms), 2) if load.latencies_ms else 0,
        no_results=load.no_results,
        new_cookies=load.new_cookies,
        late_ms_max=round(load.late_ms_max, 2),
        admin_ms={label: [round(v, 1) for v in values] for label, values in load.admin_ms.items()},
        admin_errors=dict(load.admin_errors),
        server_cpu_seconds=round(spent[0], 2),
        elasticsearch_cpu_seconds=round(spent[1], 2) if node is not None else None,
        client_cpu_seconds=round(spent[2], 2),
        others_cpu_seconds=round(max(0.0, spent[3] - spent[0] - spent[1] - spent[2]), 2),
        server=_metric_changes(metrics_before, server_metrics(server.url)),
        log_query_ms=log_after["query_ms"] - log_before["query_ms"],
        log_queries=log_after["queries"] - log_before["queries"],
        load_average=round(os.getloadavg()[0], 2),
    )
    return result, load.latencies_ms


def machine_busy_seconds() -> float:
    """CPU seconds the machine has spent busy, over all its cores."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _commit() -> str:
    """The checkout's commit (its working tree may differ: others edit it meanwhile)."""
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown"


def measure(
    node_url: str,
    scratch: Path,
    *,
    rate: float = RATE,
    seconds: float = 40.0,
    turns: int = 6,
    sessions: int = 2_000,
    log_days: float = 7.0,
    log_per_day: int = 300_000,
    word_watches: int = 3_000,
    product_watches: int = 600,
    warmup_seconds: float = 10.0,
    variants: Sequence[Variant] = VARIANTS,
    command: str = "",
) -> Report:
    """Set up, run the turns, clean up; the report."""
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        elasticsearch_url=node_url,
        index_prefix=f"bench-insights-{run}",
        elasticsearch_timeout=120.0,
    )
    products = catalog_products()
    texts = load_texts(products)
    no_result = list(NOT_SOLD)
    servers: dict[str, Server] = {}
    begun = time.perf_counter()
    try:
        print(f"setup: indices {settings.index_prefix}-*, catalog, watches", flush=True)
        _cli(settings, "setup")
        _cli(settings, "ingest", "--plain", str(SAMPLE_CATALOG))
        _cli(settings, "watches", "seed", str(DEFAULT_WATCHES))
        watches, stored = asyncio.run(
            shopper_watches(settings, products, texts, word_watches, product_watches)
        )
        defaults = sum(1 for watch in watches if watch.default)
        history_end_ms = math.floor(time.time() * 1000) - 60_000
        print(
            f"  {defaults} default and {stored:,} shoppers' watches; writing {log_days:g} days "
            f"x {log_per_day:,} search entries of history",
            flush=True,
        )
        written_at = time.perf_counter()
        entries = history(
            history_end_ms,
            days=log_days,
            searches_per_day=log_per_day,
            texts=history_texts(texts, products, HISTORY_TEXTS),
            no_result=no_result,
            watches=watches,
        )
        written = asyncio.run(write_history(settings, entries))
        print(f"  {written:,} entries in {time.perf_counter() - written_at:.0f} s", flush=True)
        merges_settled(node_url, settings)
        for name in sorted({variant.server for variant in variants}):
            servers[name] = Server(
                "percolert",
                node_url,
                scratch,
                name=f"percolert-{name}",
                extra_env={
                    "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
                    "PERCOLERT_ADMIN_TOKEN": ADMIN_TOKEN,
                    "PERCOLERT_SECRET": SESSION_SECRET,
                    "PERCOLERT_RATE_LIMITS": "off",
                    **SERVERS[name],
                },
            )
        first = next(iter(servers.values()))
        cookies = asyncio.run(make_sessions(first.url, sessions))
        plan = plan_searches(texts, no_result, sessions, rate, seconds, seed=1)
        warm = plan_searches(texts, no_result, sessions, rate, warmup_seconds, seed=2)
        answered: Counter[str] = Counter()
        for name, server in servers.items():
            page = name != "log-off"
            load = asyncio.run(drive(server.url, warm, cookies, page=page))
            if name != "log-off":
                answered[name] += len(load.latencies_ms)
            print(
                f"  warm-up {name}: {len(load.latencies_ms)} answered, errors "
                f"{dict(load.errors)}, new cookies {load.new_cookies}, admin "
                f"{ {k: round(max(v)) for k, v in load.admin_ms.items()} } ms (max), "
                f"admin errors {dict(load.admin_errors)}",
                flush=True,
            )
        setup_seconds = round(time.perf_counter() - begun, 1)
        time.sleep(2.0)  # the warm-ups' log written and refreshed
        stats = log_stats(node_url, settings)
        report = Report(
            command=command,
            commit=_commit(),
            cores=psutil.cpu_count(),
            node=node_url,
            node_version=httpx.get(node_url, timeout=10).json()["version"]["number"],
            load_average_start=[round(load, 2) for load in os.getloadavg()],
            rate=rate,
            seconds=seconds,
            turns=turns,
            order=[],
            sessions=sessions,
            texts=len(texts) + len(no_result),
            page_requests=[path for _, path in PAGE_REQUESTS],
            page_every_seconds=PAGE_EVERY_SECONDS,
            cache_seconds=CACHE_SECONDS,
            log_days=log_days,
            log_per_day=log_per_day,
            log_entries_written=written,
            log_docs_before=int(stats["docs"]),
            log_docs_after=0,
            log_store_mb=stats["store_mb"],
            log_indices=int(stats["indices"]),
            watches={"default": defaults, "shoppers": stored},
            setup_seconds=setup_seconds,
        )
        by_key = {variant.key: variant for variant in variants}
        node = node_process(node_url)
        latencies: dict[str, list[float]] = {variant.key: [] for variant in variants}
        cpu_before, wall_before = cpu_seconds(psutil.Process()), time.monotonic()
        for turn, key in turn_order([variant.key for variant in variants], turns):
            variant = by_key[key]
            report.order.append(key)
            result, values = run_turn(
                variant,
                turn,
                servers[variant.server],
                plan,
                cookies,
                node=node,
                node_url=node_url,
                settings=settings,
            )
            report.turn_results.append(result)
            latencies[key] += values
            if variant.server != "log-off":
                answered[variant.server] += result.answered
            admin = {
                label: f"{percentiles(values).get('p50', 0):.0f}/{max(values):.0f}"
                for label, values in result.admin_ms.items()
            }
            print(
                f"turn {turn + 1} {key:>12}: p50 {result.search_ms.get('p50')} p99 "
                f"{result.search_ms.get('p99')} max {result.search_ms.get('max')} ms, "
                f"{result.answered}/{result.searches} answered, errors {result.errors}, "
                f"server CPU {result.server_cpu_seconds} s, ES CPU "
                f"{result.elasticsearch_cpu_seconds} s, loop lags>100ms "
                f"{result.server['lags_over_100ms']:g}, log written "
                f"{result.server['log_written']:g} dropped {result.server['log_dropped']:g}"
                + (f", admin p50/max ms {admin}" if admin else "")
                + f", load {result.load_average}",
                flush=True,
            )
            time.sleep(SETTLE_SECONDS)
        wall = time.monotonic() - wall_before
        report.client_cpu_percent = round(
            100 * (cpu_seconds(psutil.Process()) - cpu_before) / wall, 1
        )
        time.sleep(3.0)  # the last second's searches written and refreshed
        httpx.post(f"{node_url}/{searchlog.pattern(settings)}/_refresh", timeout=60)
        report.log_counted = logged_searches(node_url, settings, history_end_ms)
        report.log_answered = sum(answered.values())
        final = log_stats(node_url, settings)
        report.log_docs_after = int(final["docs"])
        report.request_cache_hits = final["cache_hits"] - stats["cache_hits"]
        report.request_cache_misses = final["cache_misses"] - stats["cache_misses"]
        for name, server in servers.items():
            if name != "log-off":
                metrics = server_metrics(server.url)
                report.log_dropped += metrics.get("percolert_search_log_dropped_total", 0.0)
                report.log_write_failures += metrics.get(
                    "percolert_search_log_write_failures_total", 0.0
                )
    except BaseException:
        for server in servers.values():
            print(f"the {server.name} server's log:\n{server.tail_of_log()}", flush=True)
        raise
    finally:
        for server in servers.values():
            server.stop()
        asyncio.run(delete_indices(settings))
    results = {
        variant.key: summarize_variant(
            variant,
            [turn for turn in report.turn_results if turn.variant == variant.key],
            latencies[variant.key],
        )
        for variant in variants
    }
    report.variants = list(results.values())
    report.comparisons = compare(results)
    log_on = [turn for turn in report.turn_results if turn.variant == "on"]
    if log_on:
        report.log_entries_per_second = round(
            sum(turn.server["log_written"] for turn in log_on) / (len(log_on) * seconds), 1
        )
    answered_all = sum(turn.answered for turn in report.turn_results)
    if answered_all:
        no_results = sum(turn.no_results for turn in report.turn_results)
        report.zero_result_share = round(no_results / answered_all, 3)
    report.load_average_end = [round(load, 2) for load in os.getloadavg()]
    return report


# -- The report -------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def verdict_lines(report: Report) -> list[str]:
    lines = []
    for comparison in report.comparisons:
        spread = (
            "within the turn-to-turn spread (the per-turn p99s overlap)"
            if comparison.within_spread
            else "beyond the turn-to-turn spread (the per-turn p99s do not overlap)"
        )
        lines.append(
            f"- **{comparison.label}**: search p99 {_times(comparison.p99_ratio)} "
            f"({_ms(comparison.p99_ms)} vs {_ms(comparison.reference_p99_ms)} ms, medians of "
            f"the per-turn p99s), p50 {_times(comparison.p50_ratio)}; {spread}. Server CPU "
            f"{_times(comparison.server_cpu_ratio)}, Elasticsearch CPU "
            f"{_times(comparison.elasticsearch_cpu_ratio)}."
        )
    return lines


def summary_lines(report: Report) -> list[str]:
    rows = [
        "| variant | turns | searches | errors | p50 (ms) | p99 (ms) | p99 per turn (ms) "
        "| max (ms) | server search (ms, mean) | server CPU (s/turn) | ES CPU (s/turn) "
        "| loop lags > 100 ms | log written / dropped |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for result in report.variants:
        per_turn = ", ".join(f"{value:.1f}" for value in result.p99_turns)
        rows.append(
            f"| {result.name} | {result.turns} | {result.searches:,} | {result.errors} "
            f"| {_ms(result.p50_ms)} | {_ms(result.p99_ms)} | {per_turn} | {_ms(result.max_ms)} "
            f"| {_ms(result.server_search_ms_mean)} | {_ms(result.server_cpu_seconds)} "
            f"| {_ms(result.elasticsearch_cpu_seconds)} | {result.lags_over_100ms:g} "
            f"| {result.log_written:,.0f} / {result.log_dropped:,.0f} |"
        )
    return rows


def admin_lines(report: Report) -> list[str]:
    rows = [
        "| variant | request | answered | p50 (ms) | p90 (ms) | max (ms) | errors |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for result in report.variants:
        for label, _ in PAGE_REQUESTS:
            if label not in result.admin:
                continue
            figures = result.admin[label]
            errors = {key: value for key, value in result.admin_errors.items() if label in key}
            rows.append(
                f"| {result.name} | {label} | {figures['count']:.0f} | {_ms(figures.get('p50'))} "
                f"| {_ms(figures.get('p90'))} | {_ms(figures.get('max'))} "
                f"| {sum(errors.values()) or ''} |"
            )
    return rows


def turn_lines(report: Report) -> list[str]:
    rows = [
        "| # | variant | answered | errors | p50 | p90 | p99 | max (ms) | server CPU (s) "
        "| ES CPU (s) | client CPU (s) | others' CPU (s) | log query (ms) "
        "| loop lags > 25 / 100 ms | client late (ms, max) | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for number, turn in enumerate(report.turn_results, 1):
        ms = turn.search_ms
        rows.append(
            f"| {number} | {turn.variant} | {turn.answered:,} | {sum(turn.errors.values())} "
            f"| {_ms(ms.get('p50'))} | {_ms(ms.get('p90'))} | {_ms(ms.get('p99'))} "
            f"| {_ms(ms.get('max'))} | {turn.server_cpu_seconds:.1f} "
            f"| {_ms(turn.elasticsearch_cpu_seconds)} | {turn.client_cpu_seconds:.1f} "
            f"| {turn.others_cpu_seconds:.1f} | {turn.log_query_ms:,.0f} "
            f"| {turn.server['lags_over_25ms']:g} / {turn.server['lags_over_100ms']:g} "
            f"| {turn.late_ms_max:.1f} | {turn.load_average} |"
        )
    return rows


def log_lines(report: Report) -> list[str]:
    missing = report.log_answered - report.log_counted
    per_day = (
        f"; under this load a log-on server wrote {report.log_entries_per_second:,.1f} entries a "
        f"second (searches counted by text each second), "
        f"{report.log_entries_per_second * 86_400:,.0f} a day at 100 searches/s all day"
        if report.log_entries_per_second is not None
        else ""
    )
    return [
        f"Search log: {report.log_entries_written:,} history entries written before the turns "
        f"({report.log_days:g} days x {report.log_per_day:,} search entries, with alert, visit "
        f"and presence entries beside), {report.log_docs_before:,} documents in "
        f"{report.log_indices} day indices ({report.log_store_mb:,.1f} MB) when the turns "
        f"began, {report.log_docs_after:,} at the end{per_day}.",
        "",
        f"Searches the log-on servers answered (warm-ups included): {report.log_answered:,}; "
        f"counted in the log: {report.log_counted:,}"
        + (
            " (every one)."
            if missing == 0
            else f" ({missing:+,} {'missing' if missing > 0 else 'more than answered'})."
        )
        + f" Entries dropped (/metrics): {report.log_dropped:g}; failed writes: "
        f"{report.log_write_failures:g}. Elasticsearch's request cache over the log during "
        f"the run: {report.request_cache_hits:,.0f} hits, {report.request_cache_misses:,.0f} "
        "misses.",
    ]


def write_report(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    order = " ".join(report.order)
    lines = [
        "# The demand view under load (results)",
        "",
        f"Open-loop searches at {report.rate:g}/s ({report.sessions:,} shoppers' sessions, "
        f"{report.texts:,} distinct texts, Zipf-distributed, "
        f"{100 * (report.zero_result_share or 0):.0f} % answered with no result), "
        f"{report.turns} turns of {report.seconds:g} s per variant, the variants in turns "
        f"(rotated each turn: {order}); every turn the same searches. The admin page simulated "
        f"with the bearer API: {', '.join(f'`{p}`' for p in report.page_requests)} at once every "
        f"{report.page_every_seconds:g} s (the page itself asks one window every 30 s and the "
        f"live figures every 5 s). Command: `{report.command}` (commit {report.commit}).",
        "",
        f"Machine: {report.cores} cores, shared (load average {report.load_average_start} at "
        f"the start, {report.load_average_end} at the end); Elasticsearch {report.node_version} "
        f"at {report.node}. Servers, node and load client on the same machine, each its own "
        f"process; the client used {report.client_cpu_percent} % of a core. Latency is the "
        "client's, from when each search was due.",
        "",
        "## Equal-work comparisons",
        "",
        *verdict_lines(report),
        "",
        "## Searches per variant",
        "",
        "p50 and p99: medians of the per-turn percentiles.",
        "",
        *summary_lines(report),
        "",
        "## The admin requests",
        "",
        *admin_lines(report),
        "",
        "## The search log",
        "",
        *log_lines(report),
        "",
        f"Setup, not timed: {report.setup_seconds:.0f} s ({report.watches['default']} default "
        f"watches, {report.watches['shoppers']:,} shoppers' watches).",
        "",
        "## Every turn",
        "",
        *turn_lines(report),
    ]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 turns of 15 s, a small log")
    parser.add_argument("--seconds", type=float, default=None, help="per turn (default 40)")
    parser.add_argument("--turns", type=int, default=None, help="of every variant (default 6)")
    parser.add_argument("--rate", type=float, default=RATE, help="searches a second")
    parser.add_argument("--sessions", type=int, default=None, help="shoppers (default 2,000)")
    parser.add_argument("--log-days", type=float, default=7.0, help="days of history")
    parser.add_argument(
        "--log-per-day", type=int, default=None, help="search entries a day (default 300,000)"
    )
    parser.add_argument(
        "--variants",
        default=",".join(variant.key for variant in VARIANTS),
        help="which to run, comma-separated (default all: off,on,page,page-nocache)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        nargs="?",
        const=REPORT_DIR / "insights-load.json",
        default=None,
        help="write the JSON (default docs/benchmarks/insights-load.json) and the Markdown",
    )
    args = parser.parse_args()
    chosen = [key.strip() for key in args.variants.split(",")]
    variants = [variant for variant in VARIANTS if variant.key in chosen]
    if len(variants) != len(chosen):
        parser.error(f"--variants takes some of {', '.join(v.key for v in VARIANTS)}")
    node_url = os.environ.get("ELASTICSEARCH_URL", DEV_NODE).rstrip("/")
    command = "python bench/insights_load.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="percolert-bench-insights-") as raw:
        report = measure(
            node_url,
            Path(raw),
            rate=args.rate,
            seconds=args.seconds or (15.0 if args.quick else 40.0),
            turns=args.turns or (2 if args.quick else 6),
            sessions=args.sessions or (500 if args.quick else 2_000),
            log_days=args.log_days,
            log_per_day=args.log_per_day or (30_000 if args.quick else 300_000),
            word_watches=1_000 if args.quick else 3_000,
            product_watches=200 if args.quick else 600,
            warmup_seconds=5.0 if args.quick else 10.0,
            variants=variants,
            command=command.strip(),
        )
    print("\n".join(summary_lines(report)))
    print("\n".join(admin_lines(report)))
    print("\n".join(verdict_lines(report)))
    print("\n".join(log_lines(report)))
    if args.report is not None:
        write_report(report, args.report)
        print(f"report: {args.report} and {args.report.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
