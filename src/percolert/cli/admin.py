"""The admin commands: indices (`setup`), the catalog (`ingest`), watches (`watches seed |
load | list | add | rm`) and the server (`serve`). They use the cluster of ELASTICSEARCH_URL
and never dev tooling (`percolert.dev`): the import contracts in pyproject.toml hold that."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import elasticsearch
import msgspec
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch
from tqdm import tqdm

from percolert.cli.common import CliError, cluster_line, count, run_with_client, with_address
from percolert.core.messages import Watch, WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.engine import es, indices
from percolert.insights import searchlog
from percolert.products import catalog
from percolert.products.changes import ChangeDetection
from percolert.products.matching import PERCOLATE_CONCURRENCY, ProductAlerting
from percolert.server.runner import build_server
from percolert.service.migrations import document_upgrades
from percolert.watches.load import LoadError, LoadReport, read_watch_file
from percolert.watches.percolator import Match, Percolator, SearchEvent
from percolert.watches.store import (
    SeedFileError,
    SeedReport,
    WatchError,
    WatchNotFound,
    WatchStore,
    parse_seed_file,
)
from percolert.web import logs
from percolert.web.app import create_app


def cmd_setup(settings: Settings, args: argparse.Namespace) -> int:
    products = indices.alias_for(settings, "products")

    async def work(client: AsyncElasticsearch) -> tuple[list[str], list[str]]:
        lines = await indices.setup(
            client, settings, migrations=document_upgrades(settings), recreate=args.recreate
        )
        lines.append(await searchlog.ensure_template(client, settings))
        try:
            found = await catalog.stored_text_problems(client, products)
        except elasticsearch.ApiError as error:  # expensive queries disallowed, say
            return lines, [f"could not check the stored products' text: {error}"]
        return lines, _stored_text_warnings(found, products)

    lines, warnings = run_with_client(settings, work)
    for line in lines:
        print(line)
    for warning in warnings:
        print(f"percolert: warning: {warning}", file=sys.stderr)
    return 0


def _stored_text_warnings(found: catalog.StoredTextReport, products: str) -> list[str]:
    """What setup says of stored products the catalog would refuse now (it still succeeds:
    they were stored before the catalog checked, and only their owner can correct them)."""
    warnings = []
    if found.products:
        examples = ", ".join(
            f"{example.sku!r} ({', '.join(example.fields)})" for example in found.examples
        )
        others = found.products - len(found.examples)
        more = f" and {others} more" if others > 0 else ""
        warnings.append(
            f"{count(found.products, 'product')} in {products} "
            f"{'holds' if found.products == 1 else 'hold'} control, separator or bidi "
            "formatting characters in sku, product_name, brand or category, which Percolert "
            "now refuses (a category with U+001F forges watches' price filters): "
            f"{examples}{more}. Correct them in the catalog and ingest it again, or put "
            "them through the admin API; delete those whose sku is at fault "
            f"(`DELETE {products}/_doc/<id>`)"
        )
    if found.uncased_categories:
        listed = ", ".join(repr(category) for category in found.uncased_categories[:10])
        warnings.append(
            f"categories in {products} not trimmed and lower-cased, which no watch can name: "
            f"{listed}. Ingest the catalog again: categories are now stored normalised"
        )
    return warnings


@contextlib.contextmanager
def _file_progress(
    path: Path, verb: str
) -> Iterator[tuple[Callable[[int], None], Callable[[object, str], None]]]:
    """A progress bar over the bytes of `path` (on stderr, off when it is not a terminal):
    yields `advance(bytes read)` and `complain(line, reason)`, which prints `FILE:LINE:
    reason` above the bar."""
    with tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=f"{verb} {path.name}",
        file=sys.stderr,
        disable=None,
    ) as bar:

        def advance(consumed: int) -> None:
            bar.update(consumed)

        def complain(line: object, reason: str) -> None:
            tqdm.write(f"{path}:{line}: {reason}", file=sys.stderr)

        yield advance, complain


def ingest(
    settings: Settings, path: Path, *, chunk_size: int = 500, plain: bool = False
) -> catalog.IngestReport:
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    alias = indices.alias_for(settings, "products")
    with _file_progress(path, "ingest") as (advance, complain):

        def report_error(error: catalog.LineError) -> None:
            complain(error.line, error.reason)

        async def load(
            client: AsyncElasticsearch, writer: catalog.ChunkWriter | None
        ) -> catalog.IngestReport:
            return await catalog.ingest(
                client,
                alias,
                path,
                chunk_size=chunk_size,
                on_progress=advance,
                on_error=report_error,
                writer=writer,
            )

        async def work(client: AsyncElasticsearch) -> catalog.IngestReport:
            if not await client.indices.exists_alias(name=alias):
                raise CliError(f"index {alias} does not exist: run `percolert setup` first")
            if plain:
                return await load(client, None)
            return await _ingest_with_alerts(client, settings, alias, load)

        report = run_with_client(settings, work)
    rate = report.loaded / report.seconds if report.seconds else 0.0
    summary = (
        f"loaded {report.loaded}, failed {report.failed} in {report.seconds:.1f} s "
        f"({rate:.0f} products/s) into {alias}"
    )
    if report.changes is not None:
        changes = report.changes
        summary += (
            f"; {count(changes.total, 'change')} ({changes.new} new, "
            f"{count(changes.price_drop, 'price drop')}, {changes.back_in_stock} back in stock), "
            f"{count(report.alerts, 'alert')}"
        )
    print(summary)
    return report


async def _ingest_with_alerts(
    client: AsyncElasticsearch,
    settings: Settings,
    alias: str,
    load: Callable[[AsyncElasticsearch, catalog.ChunkWriter], Awaitable[catalog.IngestReport]],
) -> catalog.IngestReport:
    """Ingest with change detection, the changes percolated for product alerts in one run
    (through a client of their own, whose responses the percolator decodes from bytes)."""
    percolation_client = es.create_client(
        settings, raw_json=True, connections=PERCOLATE_CONCURRENCY
    )
    try:
        return await _ingest_percolating(client, percolation_client, settings, alias, load)
    finally:
        await percolation_client.close()


async def _ingest_percolating(
    client: AsyncElasticsearch,
    percolation_client: AsyncElasticsearch,
    settings: Settings,
    alias: str,
    load: Callable[[AsyncElasticsearch, catalog.ChunkWriter], Awaitable[catalog.IngestReport]],
) -> catalog.IngestReport:
    """Should Elasticsearch fail midway, the alerts of the chunks already indexed are still
    written (or the changes whose alerts were not, counted) before the failure is reported."""

    async def no_search_batches(found: list[tuple[SearchEvent, list[Match]]]) -> None:
        pass  # this percolator serves product runs only, never a queue of searches

    percolator = Percolator(
        percolation_client,
        indices.alias_for(settings, "watches"),
        TextNormalizer(),
        no_search_batches,
        timeout=settings.percolate_seconds,
    )
    failure: BaseException | None = None
    report: catalog.IngestReport | None = None
    run_of_changes = 0
    try:
        async with ProductAlerting(client, settings, percolator).run() as run:
            try:
                report = await load(client, ChangeDetection(client, alias, run))
            except (TransportError, elasticsearch.ApiError, es.ElasticsearchProblem) as error:
                failure = error  # the run still writes what it found
            run_of_changes = run.changes
    except (TransportError, elasticsearch.ApiError, es.ElasticsearchProblem) as error:
        print(
            f"percolert: the product alerts of {run_of_changes} changes could not be written",
            file=sys.stderr,
        )
        raise (failure or error) from None
    if failure is not None:
        if run.alerts:
            print(
                f"percolert: wrote {run.alerts} product alerts of the products indexed "
                "before the failure",
                file=sys.stderr,
            )
        raise failure
    assert report is not None
    report.alerts = run.alerts
    return report


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    report = ingest(settings, Path(args.file), chunk_size=args.chunk_size, plain=args.plain)
    return 1 if report.failed else 0


def watch_store(client: AsyncElasticsearch, settings: Settings) -> WatchStore:
    return WatchStore(
        client,
        indices.alias_for(settings, "watches"),
        TextNormalizer(),
        max_per_user=settings.max_watches_per_user,
    )


def _describe_watch(owner: str | None, watch: Watch) -> str:
    conditions = [f'"{watch.terms}"' + (" (exact phrase)" if watch.phrase else "")]
    if watch.sku is not None:
        conditions = [f'product {watch.sku} "{watch.terms}"', f"on {' and '.join(watch.on or [])}"]
    if watch.category:
        conditions.append(f"category {watch.category}")
    if watch.max_price is not None:
        conditions.append(f"under ${watch.max_price:g}")
    conditions.append(f"notify {watch.notify}")
    who = "default" if owner is None else f"user {owner}"
    return f"{watch.id}  {who:<30}  {', '.join(conditions)}"


def _load_watches(settings: Settings, path: Path, *, chunk_size: int) -> LoadReport:
    """`watches load`: an NDJSON file of watches in bulk, with a progress bar (bytes read)."""
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    alias = indices.alias_for(settings, "watches")
    with _file_progress(path, "load") as (advance, complain):

        def report_error(error: LoadError) -> None:
            complain(error.ref, error.reason)

        async def load(client: AsyncElasticsearch) -> LoadReport:
            if not await client.indices.exists_alias(name=alias):
                raise CliError(f"index {alias} does not exist: run `percolert setup` first")
            watches = read_watch_file(path, on_progress=advance)
            return await watch_store(client, settings).load(
                watches, chunk_size=chunk_size, on_error=report_error
            )

        report = run_with_client(settings, load)
    print(
        f"loaded {report.loaded}, duplicates {report.duplicates}, refused {report.refused} "
        f"in {report.seconds:.1f} s ({report.rate:.0f} watches/s) into {alias}"
    )
    return report


def cmd_watches(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "seed":
        path = Path(args.file)
        if not path.is_file():
            raise CliError(f"no such file: {path}")
        try:
            specs = parse_seed_file(path.read_bytes(), TextNormalizer())
        except SeedFileError as error:
            for line, reason in error.problems:
                print(f"{path}:{line}: {reason}", file=sys.stderr)
            raise CliError(f"{path} has errors; nothing was changed") from None

        async def seed(client: AsyncElasticsearch) -> SeedReport:
            return await watch_store(client, settings).seed_defaults(specs)

        report = run_with_client(settings, seed)
        print(
            f"default watches: {report.added} added, {report.unchanged} unchanged, "
            f"{report.removed} removed"
        )
    elif args.action == "load":
        loaded = _load_watches(settings, Path(args.file), chunk_size=args.chunk_size)
        return 1 if loaded.refused else 0
    elif args.action == "list":

        async def listing(client: AsyncElasticsearch) -> list[tuple[str | None, Watch]]:
            store = watch_store(client, settings)
            if args.defaults:
                return [(None, watch) for watch in await store.defaults()]
            if args.user:
                return [(args.user, watch) for watch in await store.owned_by(args.user)]
            return await store.everything()

        listed = run_with_client(settings, listing)
        for owner, watch in listed:
            print(_describe_watch(owner, watch))
        print(f"{len(listed)} watch{'es' if len(listed) != 1 else ''}", file=sys.stderr)
    elif args.action == "add":
        try:
            spec = msgspec.convert(
                {
                    "terms": args.terms,
                    "phrase": args.phrase,
                    "category": args.category,
                    "max_price": args.max_price,
                    "notify": args.notify,
                },
                WatchSpec,
            )
        except msgspec.ValidationError as error:
            raise CliError(f"invalid watch: {error}") from None

        async def add(client: AsyncElasticsearch) -> Watch:
            return await watch_store(client, settings).add(None, spec)

        try:
            watch = run_with_client(settings, add)
        except WatchError as error:
            raise CliError(str(error)) from None
        print(f"added {_describe_watch(None, watch)}")
    else:

        async def remove(client: AsyncElasticsearch) -> None:
            await watch_store(client, settings).remove_any(args.id)

        try:
            run_with_client(settings, remove)
        except WatchNotFound:
            raise CliError(f"no watch with id {args.id}") from None
        print(f"removed {args.id}")
    return 0


def serve(settings: Settings) -> None:
    print(f"Percolert at http://{settings.host}:{settings.port}  (Ctrl-C stops)")
    print(cluster_line(settings))
    app = create_app(settings)
    server = build_server(
        app,
        app.state.drain,
        settings.host,
        settings.port,
        head_timeout=settings.head_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        tune_gc=True,
        trusted_proxies=settings.trusted_proxies,
    )
    # One process, one instance: uvicorn's own lines name it too.
    with logs.as_instance(app.state.instance_id):
        server.run()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    serve(with_address(settings, args))
    return 0
