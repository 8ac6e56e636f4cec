"""`percolert`: the admin command line. Each subcommand maps onto one module's function."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import elasticsearch
import msgspec
from elastic_transport import TransportError
from elasticsearch import AsyncElasticsearch
from tqdm import tqdm

from percolert import assets, catalog, demo, es, indices, instances, logs
from percolert.app import create_app
from percolert.catalog_changes import ChangeDetection
from percolert.devnode import DevNode, DevNodeError, recorded_url
from percolert.localservice import LocalService, LocalServiceError
from percolert.messages import Watch, WatchSpec
from percolert.migrations import document_upgrades
from percolert.percolator import Match, Percolator, SearchEvent
from percolert.product_matching import PERCOLATE_CONCURRENCY, ProductAlerting
from percolert.redisnode import RedisNode
from percolert.server import build_server
from percolert.sessions import load_secret
from percolert.settings import Settings, SettingsError, from_environment
from percolert.text import TextNormalizer
from percolert.watch_load import LoadError, LoadReport, read_watch_file
from percolert.watches import (
    SeedFileError,
    SeedReport,
    WatchError,
    WatchNotFound,
    WatchStore,
    parse_seed_file,
)

T = TypeVar("T")


class CliError(Exception):
    """Ends the command with a one-line message and exit code 1."""


def _run_with_client(settings: Settings, work: Callable[[AsyncElasticsearch], Awaitable[T]]) -> T:
    async def main() -> T:
        client = es.create_client(settings, max_retries=3)
        try:
            await es.check_connection(client, settings.elasticsearch_url)
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except es.ElasticsearchProblem as problem:
        raise CliError(str(problem)) from None
    except elasticsearch.NotFoundError as error:
        if error.error != "index_not_found_exception":
            raise
        raise CliError("the indices are not set up yet: run `percolert setup` first") from None
    except elasticsearch.ApiError as error:
        raise CliError(f"Elasticsearch refused the request: {error}") from None
    except TransportError as error:  # the cluster went away midway
        raise CliError(es.describe(error, settings.elasticsearch_url)) from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment; without ELASTICSEARCH_URL, the dev node recorded in
    the state directory when it is running (so that commands after `devnode start` find it),
    else http://127.0.0.1:9200."""
    settings = from_environment(environ)
    running = recorded_url(settings.state_dir)
    if running is None:
        return settings
    return from_environment(environ, default_elasticsearch_url=running)


def _dev_node(settings: Settings, args: argparse.Namespace) -> DevNode:
    return DevNode.configured(settings, heap=getattr(args, "heap", "512m"))


def _local_service(service: LocalService, name: str, args: argparse.Namespace) -> int:
    """`start`, `stop` or `status` of a dev server; status exits 3 when it is not running."""
    try:
        if args.action == "start":
            state, started = service.start(args.port)
            verb = "started" if started else "already running"
            print(f"{name} {verb}: {state.url} (pid {state.pid}, log {state.log})")
        elif args.action == "stop":
            stopped = service.stop()
            print(f"{name} stopped (pid {stopped.pid})" if stopped else f"{name} not running")
        else:
            status = service.status()
            if status is None:
                print(f"{name}: not running")
                return 3
            print(f"{name}: running at {status.url} (pid {status.pid}, log {status.log})")
    except LocalServiceError as error:
        raise CliError(str(error)) from None
    return 0


def cmd_devnode(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "start":
        print("starting the dev node (the first start downloads Elasticsearch with Maven)...")
    return _local_service(_dev_node(settings, args), "dev node", args)


def cmd_redis(settings: Settings, args: argparse.Namespace) -> int:
    return _local_service(RedisNode.configured(settings), "dev redis", args)


def cmd_setup(settings: Settings, args: argparse.Namespace) -> int:
    async def work(client: AsyncElasticsearch) -> list[str]:
        return await indices.setup(
            client, settings, migrations=document_upgrades(settings), recreate=args.recreate
        )

    for line in _run_with_client(settings, work):
        print(line)
    return 0


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


def _ingest(
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

        report = _run_with_client(settings, work)
    rate = report.loaded / report.seconds if report.seconds else 0.0
    summary = (
        f"loaded {report.loaded}, failed {report.failed} in {report.seconds:.1f} s "
        f"({rate:.0f} products/s) into {alias}"
    )
    if report.changes is not None:
        changes = report.changes
        summary += (
            f"; {_count(changes.total, 'change')} ({changes.new} new, "
            f"{_count(changes.price_drop, 'price drop')}, {changes.back_in_stock} back in stock), "
            f"{_count(report.alerts, 'alert')}"
        )
    print(summary)
    return report


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


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
        timeout=settings.percolate_timeout,
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
    report = _ingest(settings, Path(args.file), chunk_size=args.chunk_size, plain=args.plain)
    return 1 if report.failed else 0


def _watch_store(client: AsyncElasticsearch, settings: Settings) -> WatchStore:
    return WatchStore(
        client,
        indices.alias_for(settings, "watches"),
        TextNormalizer(),
        max_per_user=settings.max_watches_per_user,
    )


def _describe_watch(owner: str | None, watch: Watch) -> str:
    conditions = [f'"{watch.terms}"' + (" (exact phrase)" if watch.phrase else "")]
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
            return await _watch_store(client, settings).load(
                watches, chunk_size=chunk_size, on_error=report_error
            )

        report = _run_with_client(settings, load)
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
            return await _watch_store(client, settings).seed_defaults(specs)

        report = _run_with_client(settings, seed)
        print(
            f"default watches: {report.added} added, {report.unchanged} unchanged, "
            f"{report.removed} removed"
        )
    elif args.action == "load":
        loaded = _load_watches(settings, Path(args.file), chunk_size=args.chunk_size)
        return 1 if loaded.refused else 0
    elif args.action == "list":

        async def listing(client: AsyncElasticsearch) -> list[tuple[str | None, Watch]]:
            store = _watch_store(client, settings)
            if args.defaults:
                return [(None, watch) for watch in await store.defaults()]
            if args.user:
                return [(args.user, watch) for watch in await store.owned_by(args.user)]
            return await store.everything()

        listed = _run_with_client(settings, listing)
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
            return await _watch_store(client, settings).add(None, spec)

        try:
            watch = _run_with_client(settings, add)
        except WatchError as error:
            raise CliError(str(error)) from None
        print(f"added {_describe_watch(None, watch)}")
    else:

        async def remove(client: AsyncElasticsearch) -> None:
            await _watch_store(client, settings).remove_any(args.id)

        try:
            _run_with_client(settings, remove)
        except WatchNotFound:
            raise CliError(f"no watch with id {args.id}") from None
        print(f"removed {args.id}")
    return 0


def _serve(settings: Settings) -> None:
    print(f"Percolert at http://{settings.host}:{settings.port}  (Ctrl-C stops)")
    app = create_app(settings)
    server = build_server(
        app,
        settings.host,
        settings.port,
        tune_gc=True,
        trusted_proxies=settings.trusted_proxies,
    )
    # One process, one instance: uvicorn's own lines name it too.
    with logs.as_instance(app.state.instance_id):
        server.run()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    _serve(_with_address(settings, args))
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """The demo in one command: node, indices, sample catalog, default watches, server (or
    `--instances N` servers sharing a dev Redis); Ctrl-C stops the servers, and the node and
    the Redis this command started."""
    if args.instances < 1:
        raise CliError("--instances must be at least 1")
    with contextlib.ExitStack() as started:
        settings = _with_address(
            settings, args, elasticsearch_url=started.enter_context(_cluster(settings, args))
        )
        lines = _run_with_client(
            settings,
            lambda client: indices.setup(client, settings, migrations=document_upgrades(settings)),
        )
        for line in lines:
            print(line)
        data = (assets.source_root() or Path(".")) / "data"
        products = Path(args.catalog) if args.catalog else data / "products.ndjson"
        _ingest(settings, products)
        defaults = data / "default_watches.json"
        if defaults.is_file():
            cmd_watches(settings, argparse.Namespace(action="seed", file=str(defaults)))
        # The admin API exists only with a token: the demo makes one (kept in the state dir).
        settings = msgspec.structs.replace(settings, admin_token=demo.admin_token(settings))
        _announce_admin_curl(settings, products)
        if args.instances == 1:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the demo ends
                _serve(settings)
            return 0
        settings = msgspec.structs.replace(
            settings, redis_url=started.enter_context(_shared_redis(settings, args))
        )
        load_secret(settings)  # made once here, not raced for by the instances
        planned = instances.plan(settings, args.instances)
        for instance, _ in planned:
            print(f"instance {instance.id} at {instance.url}")
        if settings.host == "127.0.0.1":
            # A cookie is the same on every port of a host: another host name is another user.
            second = planned[1][0].url.replace("127.0.0.1", "localhost")
            print(f"two shoppers: open {planned[0][0].url} and {second}  (Ctrl-C stops)")
        return instances.run(planned)
    return 0


def _announce_admin_curl(settings: Settings, products: Path) -> None:
    """Once the (first) server is ready, the curl an admin would send: a cheaper product."""
    assert settings.admin_token is not None
    # A token of the environment stays there; the demo's own is shown as it is.
    shown = (
        "$PERCOLERT_ADMIN_TOKEN"
        if os.environ.get("PERCOLERT_ADMIN_TOKEN", "").strip()
        else settings.admin_token
    )
    url = f"http://{settings.host}:{settings.port}"
    command = demo.cheaper_product_curl(url, shown, products)
    if command is not None:
        demo.announce_when_ready(
            url, f"admin: put a cheaper product (a watch on it gets a card):\n{command}"
        )


@contextlib.contextmanager
def _cluster(settings: Settings, args: argparse.Namespace) -> Iterator[str]:
    """The cluster `up` uses: ELASTICSEARCH_URL when it is set, else the dev node (started
    here if it is not running, and then stopped at the end)."""
    if os.environ.get("ELASTICSEARCH_URL", "").strip():
        yield settings.elasticsearch_url
        return
    node = _dev_node(settings, args)
    print("starting the dev node (the first start downloads Elasticsearch with Maven)...")
    try:
        state, started = node.start(args.node_port)
    except DevNodeError as error:
        raise CliError(str(error)) from None
    print(f"dev node {'started' if started else 'already running'}: {state.url}")
    try:
        yield state.url
    finally:
        if started:
            print("stopping the dev node this command started...")
            node.stop()


@contextlib.contextmanager
def _shared_redis(settings: Settings, args: argparse.Namespace) -> Iterator[str]:
    """The Redis the instances share: PERCOLERT_REDIS_URL when it is set, else the dev Redis
    of the same state directory (started here if it is not running, then stopped)."""
    if settings.redis_url is not None:
        yield settings.redis_url
        return
    node = RedisNode.configured(settings)
    try:
        state, started = node.start(args.redis_port)
    except LocalServiceError as error:
        raise CliError(str(error)) from None
    print(f"dev redis {'started' if started else 'already running'}: {state.url}")
    try:
        yield state.url
    finally:
        if started:
            print("stopping the dev redis this command started...")
            node.stop()


def _with_address(settings: Settings, args: argparse.Namespace, **changes: str) -> Settings:
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    return msgspec.structs.replace(settings, host=host, port=port, **changes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="percolert",
        description="Per-user search alerts: admin commands. Configuration comes from the "
        "environment (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    devnode = commands.add_parser("devnode", help="a local Elasticsearch 7.17 node for development")
    devnode.add_argument("action", choices=["start", "stop", "status"])
    devnode.add_argument("--port", type=int, default=9200, help="HTTP port (default 9200)")
    devnode.add_argument("--heap", default="512m", help="JVM heap (default 512m)")
    devnode.set_defaults(handler=cmd_devnode)

    redis = commands.add_parser("redis", help="a local redis-server for development")
    redis.add_argument("action", choices=["start", "stop", "status"])
    redis.add_argument("--port", type=int, default=6379, help="port (default 6379)")
    redis.set_defaults(handler=cmd_redis)

    setup = commands.add_parser("setup", help="create or migrate the indices from mappings/")
    setup.add_argument("--recreate", action="store_true", help="delete and recreate (loses data)")
    setup.set_defaults(handler=cmd_setup)

    ingest = commands.add_parser("ingest", help="bulk-load products from an NDJSON file")
    ingest.add_argument("file", help="one JSON product per line")
    ingest.add_argument("--chunk-size", type=int, default=500, help="documents per bulk request")
    ingest.add_argument(
        "--plain",
        action="store_true",
        help="a plain bulk load: no change detection, no product alerts (initial loads)",
    )
    ingest.set_defaults(handler=cmd_ingest)

    watches = commands.add_parser("watches", help="list, add, remove and seed watches")
    actions = watches.add_subparsers(dest="action", required=True, metavar="ACTION")
    seed = actions.add_parser("seed", help="make the default watches exactly those in FILE")
    seed.add_argument("file", help="JSON array of {terms, phrase?, category?, max_price?}")
    load = actions.add_parser("load", help="bulk-load watches from an NDJSON file")
    load.add_argument(
        "file", help="one watch a line: {owner?, terms, phrase?, category?, max_price?, notify?}"
    )
    load.add_argument("--chunk-size", type=int, default=2000, help="watches per bulk request")
    listing = actions.add_parser("list", help="list watches (all, one user's, or defaults)")
    who = listing.add_mutually_exclusive_group()
    who.add_argument("--user", help="only this user's watches")
    who.add_argument("--defaults", action="store_true", help="only default watches")
    add = actions.add_parser("add", help="add a default watch")
    add.add_argument("--default", action="store_true", required=True, help="(required)")
    add.add_argument("terms", help="words that must all occur in a search")
    add.add_argument("--phrase", action="store_true", help="the words as an exact phrase")
    add.add_argument("--category", default=None, help="only when the search found this category")
    add.add_argument("--max-price", type=float, default=None, help="only when it found one under")
    add.add_argument(
        "--notify",
        choices=["searches", "products", "both"],
        default="both",
        help="what it alerts of (default both; a default watch never alerts of products)",
    )
    remove = actions.add_parser("rm", help="remove a watch by id")
    remove.add_argument("id")
    watches.set_defaults(handler=cmd_watches)

    for name, handler, text in [
        ("serve", cmd_serve, "run the web server"),
        ("up", cmd_up, "demo: start the dev node, set up, load the sample catalog, serve"),
    ]:
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
        sub.add_argument("--port", type=int, default=None, help="listen port (default 8000)")
        sub.set_defaults(handler=handler)
        if name == "up":
            sub.add_argument(
                "--instances",
                type=int,
                default=1,
                help="servers on consecutive ports from --port, sharing a dev Redis (default 1)",
            )
            sub.add_argument("--redis-port", type=int, default=6379, help="dev Redis port")
            sub.add_argument("--node-port", type=int, default=9200, help="dev node HTTP port")
            sub.add_argument("--heap", default="512m", help="dev node JVM heap")
            sub.add_argument("--catalog", default=None, help="NDJSON to load (default: sample)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        logs.configure(json=settings.log_format == "json")
        return int(args.handler(settings, args))
    except (CliError, SettingsError) as error:
        print(f"percolert: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
