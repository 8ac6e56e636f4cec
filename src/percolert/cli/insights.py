"""`percolert insights`: the admin's demand view in the terminal (the tables of `/admin`, read
from the same aggregations), or as the same JSON (`--json`); and its two actions, `promote`
(a search or a watched term becomes a default watch) and `retire` (a default watch goes)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec
from elasticsearch import AsyncElasticsearch

from percolert.cli.admin import watch_store
from percolert.cli.common import CliError, run_with_client
from percolert.core.messages import Watch
from percolert.core.settings import Settings
from percolert.insights.queries import read_insights
from percolert.insights.report import Insights
from percolert.insights.view import InvalidWindow, promotion, window_seconds
from percolert.watches.store import WatchError, WatchNotFound

_Row = TypeVar("_Row")


def _trend(count: int, previous: int) -> str:
    if previous == 0:
        return "new" if count else "-"
    change = count - previous
    return f"{change:+d} ({change / previous:+.0%})"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(
    title: str,
    headers: Sequence[str],
    rows: Sequence[_Row],
    cells: Callable[[_Row], Sequence[object]],
) -> list[str]:
    lines = [title]
    if not rows:
        return [*lines, "  (nothing yet)", ""]
    texts = [[str(cell) for cell in cells(row)] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in texts)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        # Text columns left, numbers right; a column is numeric when its header says so.
        return "  " + "  ".join(
            value.ljust(width) if i == 0 else value.rjust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        )

    return [*lines, line(headers), *(line(row) for row in texts), ""]


def _printable(text: str) -> str:
    """Shoppers' words as one line of text: no control characters reach the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def render(insights: Insights, since_text: str) -> str:
    """The tables as text, in the order of the page."""
    totals = insights.totals
    live = insights.live
    lines = [
        f"Demand over the last {since_text} (until {insights.until})",
        f"  searches {totals.searches} ({_trend(totals.searches, totals.previous_searches)}), "
        f"with no results {totals.no_results} "
        f"({_trend(totals.no_results, totals.previous_no_results)})",
        f"  live: {live.searches_per_second:g} searches/s, {live.alerts_per_second:g} alerts/s, "
        f"{live.connected_shoppers} shoppers on {live.sockets} sockets "
        f"({live.instances} instances)",
        "",
    ]
    searches = ("text", "searches", "before", "trend", "results")
    lines += _table(
        "Top searches",
        searches,
        insights.top_searches,
        lambda r: (_printable(r.text), r.count, r.previous, _trend(r.count, r.previous), r.results),
    )
    lines += _table(
        "Searches with no results",
        searches[:4],
        insights.no_result_searches,
        lambda r: (_printable(r.text), r.count, r.previous, _trend(r.count, r.previous)),
    )
    lines += _table(
        "Most-watched terms",
        ("term", "watches"),
        insights.watched_terms,
        lambda r: (_printable(r.term), r.watches),
    )
    products = ("sku", "name", "price", "in stock", "watchers")
    lines += _table(
        "Most-watched products",
        products,
        insights.watched_products,
        lambda r: (
            r.sku,
            _printable(r.name or "-"),
            _money(r.price),
            "-" if r.in_stock is None else ("yes" if r.in_stock else "no"),
            r.watchers,
        ),
    )
    lines += _table(
        "Restock queue (sold out, most waiting first)",
        ("sku", "name", "price", "waiting", "with price", "lowest", "median", "highest"),
        insights.restock_queue,
        lambda r: (
            r.sku,
            _printable(r.name or "-"),
            _money(r.price),
            r.watchers,
            r.with_price,
            _money(r.price_min),
            _money(r.price_median),
            _money(r.price_max),
        ),
    )
    lines += _table(
        "Alerts per watch",
        ("watch", "default", "alerts", "reach", "visits", "visit rate"),
        insights.alerts_per_watch,
        lambda r: (
            _printable(r.label),
            "yes" if r.default else "no",
            r.alerts,
            r.reach,
            r.visits,
            "-" if r.visit_rate is None else f"{r.visit_rate:.0%}",
        ),
    )
    lines += _table(
        "Default watches (reach 0: reaches nobody, may be retired)",
        ("watch", "id", "alerts", "reach", "visits"),
        insights.default_watches,
        lambda r: (_printable(r.label), r.watch_id, r.alerts, r.reach, r.visits),
    )
    lines += _table(
        "Off-site deliveries",
        ("channel", "delivered", "pending", "failed", "suppressed"),
        insights.offsite,
        lambda r: (r.channel, r.delivered, r.pending, r.failed, r.suppressed),
    )
    return "\n".join(lines)


def cmd_insights(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "promote":
        try:
            spec = promotion(args.text)
        except WatchError as error:
            raise CliError(str(error)) from None

        async def promote(client: AsyncElasticsearch) -> Watch:
            return await watch_store(client, settings).add(None, spec)

        try:
            watch = run_with_client(settings, promote)
        except WatchError as error:
            raise CliError(str(error)) from None
        print(f"default watch {watch.id}: {_printable(watch.terms)}")
        return 0
    if args.action == "retire":

        async def retire(client: AsyncElasticsearch) -> Watch:
            return await watch_store(client, settings).remove(None, args.watch_id)

        try:
            watch = run_with_client(settings, retire)
        except WatchNotFound:
            raise CliError(f"no default watch with id {args.watch_id}") from None
        print(f"retired default watch {watch.id}: {_printable(watch.terms)}")
        return 0
    try:
        since = window_seconds(args.since)
    except InvalidWindow as error:
        raise CliError(f"--since: {error}") from None

    async def read(client: AsyncElasticsearch) -> Insights:
        defaults = await watch_store(client, settings).defaults()
        return await read_insights(client, settings, defaults, since=since, now=time.time())

    insights = run_with_client(settings, read)
    if args.json:
        # ASCII with escapes: shoppers' texts may hold terminal controls (C1, bidi), and a
        # JSON reader decodes them back.
        document = msgspec.to_builtins(insights)
        sys.stdout.write(json.dumps(document, ensure_ascii=True, indent=2) + "\n")
    else:
        print(render(insights, args.since))
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    insights = commands.add_parser(
        "insights", help="what shoppers search for, miss and wait for (the admin's demand view)"
    )
    insights.add_argument(
        "--since", default="24h", help="the window: 1h, 24h, 7d... (default 24h; up to 90d)"
    )
    insights.add_argument("--json", action="store_true", help="the same document as the API")
    actions = insights.add_subparsers(dest="action", metavar="ACTION")
    promote = actions.add_parser("promote", help="make a search or a watched term a default watch")
    promote.add_argument("text")
    retire = actions.add_parser("retire", help="remove a default watch (one that reaches nobody)")
    retire.add_argument("watch_id")
    insights.set_defaults(handler=cmd_insights)
