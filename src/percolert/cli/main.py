"""`percolert`: the command line, its parser and its one error shape. Each subcommand maps
onto one function of `admin` or `dev`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from percolert.cli.admin import cmd_ingest, cmd_serve, cmd_setup, cmd_watches
from percolert.cli.common import CliError
from percolert.cli.dev import cmd_devnode, cmd_redis, cmd_up
from percolert.cli.insights import add_parser as add_insights
from percolert.core.settings import SettingsError, from_environment
from percolert.web import logs


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

    add_insights(commands)

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
            sub.add_argument(
                "--shop",
                action="store_true",
                help="also run the example shop (examples/shop/) on its own origin, whose "
                "customers log in and get alerts through their accounts",
            )
            sub.add_argument("--shop-port", type=int, default=8001, help="the shop's port")
            sub.add_argument(
                "--sinks",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="also run a webhook receiver and a mail sink on this machine, where the "
                "server's off-site deliveries go (default: with --shop, whose accounts get them)",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = from_environment()
        logs.configure(json=settings.log_format == "json")
        return int(args.handler(settings, args))
    except (CliError, SettingsError) as error:
        print(f"percolert: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
