"""The development commands: the dev Elasticsearch node (`devnode`), the dev Redis (`redis`)
and the demo (`up`). The only commands that use `percolert.dev` or read its state directory."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgspec

from percolert.cli.admin import cmd_watches, ingest, serve
from percolert.cli.common import CliError, run_with_client, with_address
from percolert.core import assets
from percolert.core.offsite_settings import offsite_from_environment
from percolert.core.settings import Settings, SettingsError
from percolert.dev import demo, instances, shop, sinks
from percolert.dev.devnode import DevNode, DevNodeError
from percolert.dev.localservice import LocalService, LocalServiceError
from percolert.dev.redisnode import RedisNode
from percolert.engine import indices
from percolert.service.migrations import document_upgrades
from percolert.web.middleware.sessions import load_secret


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
    node = _dev_node(settings, args)
    code = _local_service(node, "dev node", args)
    running = node.status() if args.action == "start" and code == 0 else None
    if running is not None and running.url != settings.elasticsearch_url:
        # The other commands use ELASTICSEARCH_URL only, never a node recorded here.
        print(f"for the other commands: export ELASTICSEARCH_URL={running.url}")
    return code


def cmd_redis(settings: Settings, args: argparse.Namespace) -> int:
    return _local_service(RedisNode.configured(settings), "dev redis", args)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """The demo in one command: node, indices, sample catalog, default watches, server (or
    `--instances N` servers sharing a dev Redis), with `--sinks` a webhook receiver and a
    mail sink for their off-site deliveries; Ctrl-C stops the servers, and the node and the
    Redis this command started."""
    # On with the shop by default: its customers' accounts are what goes off-site.
    with_sinks = args.shop if args.sinks is None else args.sinks
    if args.instances < 1:
        raise CliError("--instances must be at least 1")
    if args.shop:
        if args.instances != 1:
            raise CliError("--shop runs beside one instance: leave out --instances")
        try:
            shop.shop_script()
        except shop.ShopUnavailable as error:
            raise CliError(str(error)) from None
    with contextlib.ExitStack() as started:
        settings = with_address(
            settings, args, elasticsearch_url=started.enter_context(_cluster(settings, args))
        )
        lines = run_with_client(
            settings,
            lambda client: indices.setup(client, settings, migrations=document_upgrades(settings)),
        )
        for line in lines:
            print(line)
        data = (assets.source_root() or Path(".")) / "data"
        products = Path(args.catalog) if args.catalog else data / "products.ndjson"
        ingest(settings, products)
        defaults = data / "default_watches.json"
        if defaults.is_file():
            cmd_watches(settings, argparse.Namespace(action="seed", file=str(defaults)))
        # The admin API exists only with a token: the demo makes one (kept in the state dir).
        settings = msgspec.structs.replace(settings, admin_token=demo.admin_token(settings))
        environ: Mapping[str, str] = os.environ
        where: list[str] | None = None
        if with_sinks:
            settings, environ, where = started.enter_context(_sinks(settings))
        _announce_admin_curl(settings, products, where, shop=args.shop)
        if args.instances == 1:
            if args.shop:
                settings = shop.with_shop(settings, args.shop_port)
                url = started.enter_context(shop.running_shop(settings, args.shop_port))
                own = f"http://{settings.host}:{settings.port}"
                print(f"the example shop: {url} (log in there); Percolert's own page: {own}")
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the demo ends
                serve(settings)
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
        return instances.run(planned, environ)
    return 0


@contextlib.contextmanager
def _sinks(settings: Settings) -> Iterator[tuple[Settings, dict[str, str], list[str]]]:
    """The demo's webhook receiver and mail sink running, the settings and the environment
    that send the servers' off-site deliveries there (a variable set in the environment
    wins), and where they are, to announce."""
    secret = sinks.webhook_secret(settings.state_dir)
    # The receiver verifies what the server signs with: the environment's secrets, if any.
    with sinks.running_sinks(
        settings.state_dir, settings.offsite.webhook_secrets or (secret,)
    ) as running:
        given = {name: value for name, value in os.environ.items() if value.strip()}
        environ = {**sinks.server_environment(running, secret), **given}
        offsite = offsite_from_environment(environ, SettingsError)
        settings = msgspec.structs.replace(settings, offsite=offsite)
        yield settings, environ, sinks.announcement(running, offsite)


def _announce_admin_curl(
    settings: Settings, products: Path, sinks_at: list[str] | None, *, shop: bool
) -> None:
    """Once the (first) server is ready, the admin's demand page and the curl an admin would
    send: a cheaper product; with the sinks, where they are and how to see the product's alert
    go off-site."""
    assert settings.admin_token is not None
    # A token of the environment stays there; the demo's own is shown as it is.
    shown = (
        "$PERCOLERT_ADMIN_TOKEN"
        if os.environ.get("PERCOLERT_ADMIN_TOKEN", "").strip()
        else settings.admin_token
    )
    url = f"http://{settings.host}:{settings.port}"
    command = demo.cheaper_product_curl(url, shown, products)
    cheaper = demo.cheaper_product(products)
    lines = [] if sinks_at is None else list(sinks_at)
    lines.append(
        f"the shop's demand view (what shoppers search for, miss and wait for): {url}/admin "
        f'- log in with the admin token "{shown}"'
    )
    if command is not None and cheaper is not None:
        if sinks_at is None:
            lines.append("admin: put a cheaper product (a watch on it gets a card):")
        else:
            name = str(cheaper["product_name"])
            lines.append(sinks.offsite_hint(name, settings.offsite, shop=shop))
        lines.append(command)
    if lines:
        demo.announce_when_ready(url, "\n".join(lines), token=settings.metrics_token)


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
