"""Off-site delivery of one catalog run: a price drop of a product that N away customers
watch, delivered as N signed webhooks and N e-mails (the off-site issue's benchmark).

- The server under test runs as deployed (`percolert serve`, its own process) against the
  node of ELASTICSEARCH_URL (default the dev node, http://127.0.0.1:9200), with indices of a
  prefix of its own (`percolert setup` first, deleted at the end). Its webhook URL is a
  local receiver (aiohttp, its own process: records each request's arrival, `webhook-id`,
  signature and body), its SMTP server a local aiosmtpd sink (TLS off, its own process:
  records each message's arrival, recipients and `Message-ID`).
- `PERCOLERT_OFFSITE_AFTER_SECONDS=0`: an alert goes off-site as soon as it is written, so
  that what is timed is delivery, not the away-wait (180 s by default). Rate limits off.
- N customers (`--customers`, default 10,000), each a shop account with a unique e-mail
  address and one product watch (`{"sku", "on": ["price_drop"]}`) of the same product. They
  are setup, not what is timed: written in bulk (the watch documents as `POST /api/watches`
  makes them, the accounts' contacts as a verified token records them) because the API
  makes ~50 watches/s here (each refreshes two indices): 10k would take over 3 minutes.
  `--setup api` makes them through the API instead.
- Timed: one admin `PUT /api/admin/products/{sku}` 20 % cheaper (the catalog run), to the
  last webhook received and to the last e-mail accepted; per channel events/s, duplicates
  (a `webhook-id` or `Message-ID` twice) and missing customers; every signature verified
  (standardwebhooks); CPU seconds of the server (per event), of each receiver and of the
  Elasticsearch node (the process listening on its port, when visible), from the PUT until
  every event is recorded delivered in the outbox.

    python bench/offsite_delivery.py --quick     # 1,000 customers, under a minute
    python bench/offsite_delivery.py             # 10,000 customers

Writes docs/benchmarks/offsite-delivery.{json,md} (`--report PATH`: the JSON's path, the
Markdown beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.parser
import email.policy
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.rig import REPORT_DIR, ROOT, Server, cpu_seconds, node_process, percentiles
from percolert.accounts.ids import account_user_id
from percolert.core.messages import WatchSpec
from percolert.core.settings import Settings
from percolert.core.text import TextNormalizer
from percolert.core.times import iso_from_seconds
from percolert.engine import es, indices
from percolert.watches import reachability
from percolert.watches.store import WatchStore
from tests.accounts.tokens import SHOP_SECRET, shop_token
from tests.conftest import delete_indices
from tests.servers import free_port

DEV_NODE = "http://127.0.0.1:9200"
ADMIN_TOKEN = "bench-offsite-admin-token-0123456789abcdef"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-offsite-signing-key-32byte").decode()
SKU = "OFFSITE-BENCH-1"
PRICE, DROPPED = 100.0, 80.0
# The goal: this many webhooks, each once, the last within GOAL_SECONDS of the change.
GOAL_CUSTOMERS, GOAL_SECONDS = 10_000, 60.0
CHANNELS = ("webhook", "email")
# The receivers write what arrived this often (and once more when stopped).
FLUSH_SECONDS = 0.2
# Setup through the API: requests in flight at once.
API_CONCURRENCY = 32
BULK_CHUNK = 2_000


# -- The receivers, each in its own process (`--receiver webhook|smtp`) -----------------------


async def _record_until_stopped(records: list[bytes], out: Path) -> None:
    """Append what arrived to `out` every FLUSH_SECONDS until SIGTERM, then the rest."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    out.with_suffix(".ready").touch()
    with out.open("ab") as file:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_SECONDS)
            if records:
                taken = records[:]
                del records[: len(taken)]
                file.write(b"".join(taken))
                file.flush()


async def receive_webhooks(port: int, out: Path) -> None:
    """A shop's endpoint: 200 to every POST, each recorded (verified later, not here)."""
    records: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time()
        headers = request.headers
        record = {
            "at": at,
            "id": headers.get("webhook-id"),
            "timestamp": headers.get("webhook-timestamp"),
            "signature": headers.get("webhook-signature"),
            "body": body.decode(),
        }
        records.append(json.dumps(record).encode() + b"\n")
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks", hook)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    try:
        await _record_until_stopped(records, out)
    finally:
        await runner.cleanup()


class _SmtpRecorder:
    """aiosmtpd's handler: accepts every message, records its headers' `Message-ID`."""

    def __init__(self, records: list[bytes]) -> None:
        self._records = records
        self._parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = time.time()
        headers = self._parser.parsebytes(envelope.original_content or b"")
        record = {
            "at": at,
            "message_id": headers.get("Message-ID"),
            "to": list(envelope.rcpt_tos),
            "from": envelope.mail_from,
            "subject": str(headers.get("Subject", "")),
        }
        self._records.append(json.dumps(record).encode() + b"\n")
        return "250 Message accepted for delivery"


async def receive_mail(port: int, out: Path) -> None:
    """A mail server (no TLS, no AUTH) accepting every message."""
    records: list[bytes] = []
    recorder = _SmtpRecorder(records)
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(recorder, hostname="sink.bench"), "127.0.0.1", port, backlog=1024
    )
    try:
        await _record_until_stopped(records, out)
    finally:
        server.close()


class Receiver:
    """One receiver's process, and what it has recorded so far."""

    def __init__(self, kind: str, scratch: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.out = scratch / f"{kind}-arrivals.jsonl"
        ready = self.out.with_suffix(".ready")
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
        command = [sys.executable, "-m", "bench.offsite_delivery", "--receiver", kind]
        command += ["--port", str(self.port), "--out", str(self.out)]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()
                raise SystemExit(f"the {kind} receiver did not start")
            time.sleep(0.05)

    def poll(self) -> int:
        """Read what was written since the last poll; how many arrived in all."""
        with self.out.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        self.records.extend(json.loads(line) for line in complete.splitlines())
        return len(self.records)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.poll()


# -- Setup (not timed) ------------------------------------------------------------------------


@dataclass
class Customer:
    subject: str
    email: str

    @property
    def user(self) -> str:
        return account_user_id(self.subject)


def make_customers(count: int, run: str) -> list[Customer]:
    return [
        Customer(f"bench-customer-{run}-{number:06d}", f"customer{number:06d}.{run}@example.com")
        for number in range(count)
    ]


def _product(price: float) -> dict[str, Any]:
    return {
        "product_name": "Bench Paperreader Signature",
        "description": "The product every customer of the off-site benchmark watches.",
        "price": price,
        "category": "e-readers",
        "brand": "Benchbrand",
        "in_stock": True,
    }


async def bulk_customers(settings: Settings, customers: list[Customer]) -> None:
    """Each customer's product watch (the document `POST /api/watches` stores, prepared by the
    same code) and their account's contact (the fields a verified token records:
    offsite/contacts.py), written in bulk; both indices refreshed."""
    client = es.create_client(settings)
    try:

        async def product_name(sku: str) -> str | None:
            return str(_product(PRICE)["product_name"]) if sku == SKU else None

        store = WatchStore(
            client,
            indices.alias_for(settings, "watches"),
            TextNormalizer(),
            max_per_user=settings.max_watches_per_user,
            product_name=product_name,
        )
        watches, accounts = (
            indices.alias_for(settings, "watches"),
            indices.alias_for(settings, "accounts"),
        )
        lease = reachability.lease_seconds(settings)
        spec = WatchSpec(sku=SKU, on=["price_drop"])
        for start in range(0, len(customers), BULK_CHUNK):
            operations: list[dict[str, Any]] = []
            now = iso_from_seconds(time.time())
            for customer in customers[start : start + BULK_CHUNK]:
                watch_id, document = await store.prepare_product(customer.user, spec)
                document["reachable_until"] = reachability.lease_until(lease)
                operations += [{"create": {"_index": watches, "_id": watch_id}}, document]
                contact = {
                    "subject": customer.subject,
                    "email": customer.email,
                    "email_source": "token",
                    "updated_at": now,
                    "mail_key": secrets.token_urlsafe(18),
                }
                operations += [{"create": {"_index": accounts, "_id": customer.user}}, contact]
            response = await client.bulk(operations=operations)
            if response["errors"]:
                failed = [item for item in response["items"] if "error" in item["create"]]
                raise SystemExit(f"bulk setup refused {len(failed)} documents: {failed[0]}")
        await client.indices.refresh(index=f"{watches},{accounts}")
    finally:
        await client.close()


async def api_customers(url: str, customers: list[Customer]) -> None:
    """Each customer's product watch made by `POST /api/watches` with their shop token."""
    limit = asyncio.Semaphore(API_CONCURRENCY)
    limits = httpx.Limits(max_connections=API_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one(customer: Customer) -> None:
            token = shop_token(customer.subject, expires_in=3600, email=customer.email)
            async with limit:
                response = await http.post(
                    "/api/watches",
                    json={"sku": SKU, "on": ["price_drop"]},
                    headers={"Authorization": f"Bearer {token}"},
                )
            if response.status_code != 201:
                raise SystemExit(f"POST /api/watches: {response.status_code} {response.text}")

        await asyncio.gather(*(one(customer) for customer in customers))


def watchers(node_url: str, settings: Settings) -> int:
    alias = indices.alias_for(settings, "watches")
    answer = httpx.post(
        f"{node_url}/{alias}/_count", json={"query": {"term": {"sku": SKU}}}, timeout=30
    )
    return int(answer.json()["count"])


# -- What is measured -------------------------------------------------------------------------


@dataclass
class ChannelResult:
    expected: int
    received: int = 0  # requests or messages, duplicates included
    distinct: int = 0  # distinct webhook-ids or Message-IDs
    duplicates: int = 0  # received - distinct
    missing: int = 0  # customers who got none
    customers_twice: int = 0  # customers who got more than one distinct event
    # Seconds from the PUT being sent to the first, the last, and the arrivals' percentiles.
    first_seconds: float | None = None
    last_seconds: float | None = None
    arrival_seconds: dict[str, float] = field(default_factory=dict)
    # Events per second from the PUT to the last, and from the first to the last.
    per_second: float = 0.0
    per_second_while_arriving: float = 0.0
    receiver_cpu_seconds: float = 0.0
    # The server's own clock of its attempts (/metrics): mean ms, and attempts by outcome.
    attempt_ms_mean: float | None = None
    attempts: dict[str, float] = field(default_factory=dict)
    verified: int = 0  # webhooks whose signature verified (standardwebhooks)
    not_verified: int = 0


@dataclass
class Report:
    customers: int
    channels: list[str]
    outbox_refresh: str | None
    setup: str
    command: str
    commit: str
    cores: int | None
    node: str
    node_version: str
    load_average_start: list[float]
    load_average_end: list[float] = field(default_factory=list)
    setup_seconds: float = 0.0  # making the customers (not timed)
    put_seconds: float = 0.0  # the admin PUT's own answer time (it writes the alerts)
    alerts_written: int = 0
    # From the PUT to every event recorded delivered in the outbox (or the run stalling).
    seconds: float = 0.0
    webhook: ChannelResult | None = None
    email: ChannelResult | None = None
    server_cpu_seconds: float = 0.0
    server_cpu_ms_per_event: float = 0.0
    elasticsearch_cpu_seconds: float | None = None
    outbox_final: dict[str, dict[str, int]] = field(default_factory=dict)
    # Once a second: seconds since the PUT, alerts routed, outbox events written and
    # delivered per channel, webhooks and e-mails received.
    timeline: list[dict[str, float]] = field(default_factory=list)
    # Every webhook once, the last within GOAL_SECONDS; and so at GOAL_CUSTOMERS or more.
    within_goal: bool = False
    goal_met: bool = False
    stalled: bool = False


def outbox_counts(node_url: str, settings: Settings) -> dict[str, dict[str, int]]:
    """Outbox events by channel and state."""
    alias = indices.alias_for(settings, "outbox")
    answer = httpx.post(
        f"{node_url}/{alias}/_search",
        json={
            "size": 0,
            "aggs": {
                "channels": {
                    "terms": {"field": "channel"},
                    "aggs": {"states": {"terms": {"field": "state"}}},
                }
            },
        },
        timeout=30,
    ).json()
    return {
        channel["key"]: {state["key"]: state["doc_count"] for state in channel["states"]["buckets"]}
        for channel in answer["aggregations"]["channels"]["buckets"]
    }


def alerts_routed(node_url: str, settings: Settings) -> int:
    alias = indices.alias_for(settings, "product_alerts")
    answer = httpx.post(
        f"{node_url}/{alias}/_count", json={"query": {"exists": {"field": "routed"}}}, timeout=30
    )
    return int(answer.json()["count"])


def offsite_metrics(url: str) -> dict[str, float]:
    """The server's attempt counters and attempt-time histogram sums, from /metrics."""
    values: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(("percolert_offsite_attempts_total", "percolert_offsite_attempt_sec")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def channel_result(
    kind: str,
    records: list[dict[str, Any]],
    customers: list[Customer],
    started: float,
) -> ChannelResult:
    result = ChannelResult(expected=len(customers), received=len(records))
    ids: list[str] = []
    # The distinct events each customer got (by subject, or by address for e-mail).
    by_customer: dict[str, set[str]] = {}
    if kind == "webhook":
        verifier = Webhook(WEBHOOK_SECRET)
        for record in records:
            ids.append(record["id"])
            headers = {
                "webhook-id": record["id"] or "",
                "webhook-timestamp": record["timestamp"] or "",
                "webhook-signature": record["signature"] or "",
            }
            try:
                payload = verifier.verify(record["body"], headers)
            except WebhookVerificationError:
                result.not_verified += 1
                continue
            result.verified += 1
            if payload.get("type") == "product_alert.created":
                by_customer.setdefault(payload["data"]["customer"], set()).add(record["id"])
        expected = {customer.subject for customer in customers}
    else:
        for record in records:
            ids.append(record["message_id"])
            for address in record["to"]:
                by_customer.setdefault(address, set()).add(record["message_id"])
        expected = {customer.email for customer in customers}
    result.distinct = len(set(ids))
    result.duplicates = result.received - result.distinct
    result.missing = len(expected - by_customer.keys())
    result.customers_twice = sum(1 for got in by_customer.values() if len(got) > 1)
    arrivals = sorted(record["at"] - started for record in records)
    if arrivals:
        result.first_seconds = round(arrivals[0], 3)
        result.last_seconds = round(arrivals[-1], 3)
        result.arrival_seconds = percentiles(arrivals)
        result.per_second = round(result.distinct / max(arrivals[-1], 1e-9), 1)
        window = arrivals[-1] - arrivals[0]
        result.per_second_while_arriving = round(result.distinct / max(window, 1e-9), 1)
    return result


def channel_env(channels: tuple[str, ...], webhook_port: int, smtp_port: int) -> dict[str, str]:
    """The server's settings of the channels to deliver to (the receivers' ports)."""
    env: dict[str, str] = {}
    if "webhook" in channels:
        env["PERCOLERT_WEBHOOK_URL"] = f"http://127.0.0.1:{webhook_port}/hooks"
        env["PERCOLERT_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        env["PERCOLERT_WEBHOOK_ALLOW_PRIVATE"] = "true"
    if "email" in channels:
        env["PERCOLERT_SMTP_HOST"] = "127.0.0.1"
        env["PERCOLERT_SMTP_PORT"] = str(smtp_port)
        env["PERCOLERT_SMTP_TLS"] = "off"
        env["PERCOLERT_MAIL_FROM"] = "The Bench Shop <alerts@shop.test>"
    return env


def start_server(
    node_url: str,
    settings: Settings,
    scratch: Path,
    channels: tuple[str, ...],
    receivers: tuple[Receiver, Receiver],
    *,
    outbox_refresh: str | None,
    server_env: dict[str, str] | None,
) -> Server:
    """`percolert setup`, then `percolert serve` delivering to the receivers."""
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": node_url,
        "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    command = [sys.executable, "-m", "percolert.cli", "setup"]
    subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True)
    if outbox_refresh is not None:
        httpx.put(
            f"{node_url}/{indices.alias_for(settings, 'outbox')}/_settings",
            json={"index": {"refresh_interval": outbox_refresh}},
            timeout=30,
        ).raise_for_status()
    webhooks, mails = receivers
    return Server(
        "percolert-offsite",
        node_url,
        scratch,
        extra_env={
            "PERCOLERT_INDEX_PREFIX": settings.index_prefix,
            "PERCOLERT_ADMIN_TOKEN": ADMIN_TOKEN,
            "PERCOLERT_JWT_SECRET": SHOP_SECRET,
            **channel_env(channels, webhooks.port, mails.port),
            "PERCOLERT_PUBLIC_URL": "https://alerts.shop.test",
            "PERCOLERT_SHOP_PRODUCT_URL": "https://shop.test/p/{sku}",
            # Delivery, not the away-wait, is what is timed.
            "PERCOLERT_OFFSITE_AFTER_SECONDS": "0",
            "PERCOLERT_RATE_LIMITS": "off",
            **(server_env or {}),
        },
    )


def follow(
    node_url: str,
    settings: Settings,
    report: Report,
    receivers: tuple[Receiver, Receiver],
    started: float,
    *,
    stall_seconds: float,
    timeout_seconds: float,
) -> float | None:
    """Sample the progress once a second into the report's timeline until every event of
    `report.channels` is received and recorded delivered; when that was (None: no progress
    for `stall_seconds`, or `timeout_seconds` in all)."""
    webhooks, mails = receivers
    progress: tuple[int, ...] = ()
    progressed = time.monotonic()
    deadline = progressed + timeout_seconds
    while True:
        time.sleep(1.0)
        outbox = outbox_counts(node_url, settings)
        sample: dict[str, float] = {
            "seconds": round(time.time() - started, 1),
            "alerts_routed": alerts_routed(node_url, settings),
            "webhooks_written": sum(outbox.get("webhook", {}).values()),
            "webhooks_delivered": outbox.get("webhook", {}).get("delivered", 0),
            "webhooks_received": webhooks.poll(),
            "emails_written": sum(outbox.get("email", {}).values()),
            "emails_delivered": outbox.get("email", {}).get("delivered", 0),
            "emails_received": mails.poll(),
        }
        report.timeline.append(sample)
        print("  " + " ".join(f"{key}={value:g}" for key, value in sample.items()), flush=True)
        if all(
            min(sample[f"{channel}s_delivered"], sample[f"{channel}s_received"]) >= report.customers
            for channel in report.channels
        ):
            return time.time()
        now_progress = tuple(int(value) for key, value in sample.items() if key != "seconds")
        if now_progress != progress:
            progress, progressed = now_progress, time.monotonic()
        if time.monotonic() - progressed > stall_seconds or time.monotonic() > deadline:
            print("  no progress: giving up", flush=True)
            return None


def measure(
    node_url: str,
    customers_count: int,
    scratch: Path,
    *,
    channels: tuple[str, ...] = CHANNELS,
    setup: str = "bulk",
    outbox_refresh: str | None = None,
    server_env: dict[str, str] | None = None,
    stall_seconds: float = 60.0,
    timeout_seconds: float = 900.0,
    settle_seconds: float = 6.0,
    command: str = "",
) -> Report:
    """Set up, time one catalog run's off-site delivery, clean up; the report.
    `server_env`: more environment for the server (a diagnostic's)."""
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        elasticsearch_url=node_url,
        index_prefix=f"bench-offsite-{run}",
        elasticsearch_timeout=120.0,
    )
    customers = make_customers(customers_count, run)
    report = Report(
        customers=customers_count,
        channels=list(channels),
        outbox_refresh=outbox_refresh,
        setup=setup,
        command=command,
        commit=_commit(),
        cores=psutil.cpu_count(),
        node=node_url,
        node_version=httpx.get(node_url, timeout=10).json()["version"]["number"],
        load_average_start=[round(load, 2) for load in os.getloadavg()],
    )
    receivers: list[Receiver] = []
    server: Server | None = None
    try:
        receivers.append(Receiver("webhook", scratch))
        receivers.append(Receiver("smtp", scratch))
        webhooks, mails = receivers
        server = start_server(
            node_url,
            settings,
            scratch,
            channels,
            (webhooks, mails),
            outbox_refresh=outbox_refresh,
            server_env=server_env,
        )
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        product_url = f"{server.url}/api/admin/products/{SKU}"
        httpx.put(product_url, json=_product(PRICE), headers=admin, timeout=60).raise_for_status()
        print(f"setting up {customers_count:,} customers ({setup})", flush=True)
        begun = time.perf_counter()
        if setup == "api":
            asyncio.run(api_customers(server.url, customers))
        else:
            asyncio.run(bulk_customers(settings, customers))
        report.setup_seconds = round(time.perf_counter() - begun, 2)
        if (found := watchers(node_url, settings)) != customers_count:
            raise SystemExit(f"{found} product watches stored, not {customers_count}")
        print(f"  {report.setup_seconds:.1f} s; dropping the price", flush=True)

        processes = {"server": server.ps, "webhook": webhooks.ps, "email": mails.ps}
        if (node := node_process(node_url)) is not None:
            processes["elasticsearch"] = node
        cpu_before = {name: cpu_seconds(process) for name, process in processes.items()}
        metrics_before = offsite_metrics(server.url)
        started = time.time()
        answer = httpx.put(product_url, json=_product(DROPPED), headers=admin, timeout=300)
        report.put_seconds = round(time.time() - started, 3)
        answer.raise_for_status()
        report.alerts_written = int(answer.json().get("alerts", 0))
        print(f"  PUT answered in {report.put_seconds:.2f} s: {answer.text}", flush=True)
        done_at = follow(
            node_url,
            settings,
            report,
            (webhooks, mails),
            started,
            stall_seconds=stall_seconds,
            timeout_seconds=timeout_seconds,
        )
        cpu = {name: cpu_seconds(process) - cpu_before[name] for name, process in processes.items()}
        report.stalled = done_at is None
        report.seconds = round((done_at or time.time()) - started, 2)
        metrics = _changes(metrics_before, offsite_metrics(server.url))
        # A duplicate (a retry of one that arrived) would come within the retry schedule's
        # first delays (0, 5 s): it is waited for before counting.
        time.sleep(settle_seconds)
        report.outbox_final = outbox_counts(node_url, settings)
    except BaseException:
        if server is not None:
            print(f"the server's log:\n{server.tail_of_log()}", flush=True)
        raise
    finally:
        if server is not None:
            server.stop()
        for receiver in receivers:
            receiver.stop()
        asyncio.run(delete_indices(settings))
    for kind, receiver in (("webhook", webhooks), ("email", mails)):
        if kind in channels:
            result = channel_result(kind, receiver.records, customers, started)
            result.receiver_cpu_seconds = round(cpu[kind], 2)
            _read_attempts(result, kind, metrics)
            setattr(report, kind, result)
    _summarize(report, cpu)
    return report


def _commit() -> str:
    """The checkout's commit (its working tree may differ: others edit it meanwhile)."""
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "unknown"


def _changes(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def _read_attempts(result: ChannelResult, kind: str, metrics: dict[str, float]) -> None:
    """The server's own account of the channel's attempts over the run (/metrics)."""
    count = metrics.get(f'percolert_offsite_attempt_seconds_count{{channel="{kind}"}}', 0.0)
    total = metrics.get(f'percolert_offsite_attempt_seconds_sum{{channel="{kind}"}}', 0.0)
    result.attempt_ms_mean = round(1000 * total / count, 2) if count else None
    for outcome in ("delivered", "retry", "failed", "gone"):
        name = f'percolert_offsite_attempts_total{{channel="{kind}",outcome="{outcome}"}}'
        if metrics.get(name):
            result.attempts[outcome] = metrics[name]


def _summarize(report: Report, cpu: dict[str, float]) -> None:
    report.server_cpu_seconds = round(cpu["server"], 2)
    events = sum(result.distinct for result in (report.webhook, report.email) if result)
    report.server_cpu_ms_per_event = round(1000 * cpu["server"] / max(events, 1), 3)
    if "elasticsearch" in cpu:
        report.elasticsearch_cpu_seconds = round(cpu["elasticsearch"], 2)
    report.load_average_end = [round(load, 2) for load in os.getloadavg()]
    hooks = report.webhook
    report.within_goal = (
        hooks is not None
        and hooks.distinct == report.customers
        and hooks.missing == 0
        and hooks.duplicates == 0
        and hooks.customers_twice == 0
        and hooks.not_verified == 0
        and hooks.last_seconds is not None
        and hooks.last_seconds <= GOAL_SECONDS
    )
    report.goal_met = report.within_goal and report.customers >= GOAL_CUSTOMERS


# -- The report -------------------------------------------------------------------------------


_DELIVERIES = {"webhook": "`product_alert.created` webhooks", "email": "e-mails"}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_lines(report: Report) -> list[str]:
    rows = [
        "| channel | received | distinct | duplicates | missing | first (s) | p50 (s) "
        "| p99 (s) | last (s) | events/s (from the PUT) | events/s (first to last) "
        "| receiver CPU (s) | attempt (ms, mean) | attempts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, result in (("webhook", report.webhook), ("e-mail", report.email)):
        if result is None:
            continue
        attempts = ", ".join(f"{key} {value:,.0f}" for key, value in result.attempts.items())
        rows.append(
            f"| {label} | {result.received:,} | {result.distinct:,} | {result.duplicates} "
            f"| {result.missing} | {_seconds(result.first_seconds)} "
            f"| {_seconds(result.arrival_seconds.get('p50'))} "
            f"| {_seconds(result.arrival_seconds.get('p99'))} "
            f"| {_seconds(result.last_seconds)} | {result.per_second:,.0f} "
            f"| {result.per_second_while_arriving:,.0f} | {result.receiver_cpu_seconds:.1f} "
            f"| {result.attempt_ms_mean if result.attempt_ms_mean is not None else '-'} "
            f"| {attempts} |"
        )
    return rows


def verdict(report: Report) -> str:
    hooks = report.webhook
    if "webhook" not in report.channels:
        return "No webhooks in this run (`--channels`): the goal is not measured."
    last = "-" if hooks is None or hooks.last_seconds is None else f"{hooks.last_seconds:.1f} s"
    goal = f"{GOAL_CUSTOMERS:,} within {GOAL_SECONDS:.0f} s, none lost, none twice"
    if report.goal_met:
        return (
            f"**Goal met**: {report.customers:,} webhooks, the last {last} after the change, "
            f"none lost, none twice (goal: {goal})."
        )
    if report.within_goal:
        return (
            f"All {report.customers:,} webhooks once, the last {last} after the change (the "
            f"goal, {goal}, is judged at its full size)."
        )
    return (
        f"**Goal not met**: the last of {hooks.distinct if hooks else 0:,} distinct webhooks "
        f"(of {report.customers:,}) {last} after the change (goal: {goal})."
    )


def write_report(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    cpu = [f"server {report.server_cpu_seconds:.1f} s ({report.server_cpu_ms_per_event} ms/event)"]
    for label, result in (("webhook receiver", report.webhook), ("SMTP sink", report.email)):
        if result is not None:
            cpu.append(f"{label} {result.receiver_cpu_seconds:.1f} s")
    if report.elasticsearch_cpu_seconds is not None:
        cpu.append(f"Elasticsearch node (shared) {report.elasticsearch_cpu_seconds:.1f} s")
    lines = [
        "# Off-site delivery of one catalog run (results)",
        "",
        f"{report.customers:,} away customers watch one product; one admin PUT drops its price "
        f"by 20 %: {report.customers:,} {' and '.join(_DELIVERIES[c] for c in report.channels)}"
        f" for them. Command: `{report.command}` (commit {report.commit})"
        + (
            f", the outbox index's refresh_interval set to {report.outbox_refresh}."
            if report.outbox_refresh
            else "."
        ),
        "",
        f"Machine: {report.cores} cores, shared (load average {report.load_average_start} at "
        f"the start, {report.load_average_end} at the end); Elasticsearch {report.node_version} "
        f"at {report.node}. Server, receivers and node on the same machine, each its own "
        "process; `PERCOLERT_OFFSITE_AFTER_SECONDS=0` (delivery is timed, not the away-wait).",
        "",
        verdict(report),
        "",
        *summary_lines(report),
        "",
        f"The PUT (which writes the product alerts: {report.alerts_written:,}) answered in "
        f"{report.put_seconds:.2f} s; every event was recorded delivered by "
        f"{report.seconds:.1f} s after it (sampled once a second)"
        + (" (the run stalled: see the timeline)" if report.stalled else "")
        + ". CPU from the PUT until then: "
        + "; ".join(cpu)
        + ".",
        "",
        f"Setup, not timed: {report.customers:,} customers ({report.setup}) in "
        f"{report.setup_seconds:.1f} s. Outbox at the end: {json.dumps(report.outbox_final)}.",
        "",
        "Timeline (seconds after the PUT; the outbox as Elasticsearch's search sees it):",
        "",
        "| s | alerts routed | webhooks written | delivered | received "
        "| e-mails written | delivered | received |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sample in report.timeline:
        lines.append(
            f"| {sample['seconds']:g} | {sample['alerts_routed']:,.0f} "
            f"| {sample['webhooks_written']:,.0f} | {sample['webhooks_delivered']:,.0f} "
            f"| {sample['webhooks_received']:,.0f} | {sample['emails_written']:,.0f} "
            f"| {sample['emails_delivered']:,.0f} | {sample['emails_received']:,.0f} |"
        )
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 customers")
    parser.add_argument("--customers", type=int, default=None, help="default 10,000")
    parser.add_argument(
        "--setup", choices=("bulk", "api"), default="bulk", help="how customers are made"
    )
    parser.add_argument(
        "--channels",
        default=",".join(CHANNELS),
        help="the channels to deliver to: webhook,email (default), webhook or email",
    )
    parser.add_argument(
        "--outbox-refresh",
        default=None,
        help="the outbox index's refresh_interval (default: its mapping's, Elasticsearch's 1s)",
    )
    parser.add_argument("--stall-seconds", type=float, default=60.0)
    parser.add_argument(
        "--report", type=Path, default=REPORT_DIR / "offsite-delivery.json", help="JSON path"
    )
    parser.add_argument("--receiver", choices=("webhook", "smtp"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver is not None:
        serve = receive_webhooks if args.receiver == "webhook" else receive_mail
        asyncio.run(serve(args.port, args.out))
        return 0
    customers = args.customers or (1_000 if args.quick else 10_000)
    channels = tuple(channel.strip() for channel in args.channels.split(","))
    if not channels or not set(channels) <= set(CHANNELS):
        parser.error("--channels takes webhook, email or both, comma-separated")
    node_url = os.environ.get("ELASTICSEARCH_URL", DEV_NODE).rstrip("/")
    command = "python bench/offsite_delivery.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="percolert-bench-offsite-") as raw:
        report = measure(
            node_url,
            customers,
            Path(raw),
            channels=channels,
            setup=args.setup,
            outbox_refresh=args.outbox_refresh,
            stall_seconds=args.stall_seconds,
            command=command.strip(),
        )
    write_report(report, args.report)
    print("\n".join(summary_lines(report)))
    print(verdict(report))
    print(f"report: {args.report} and {args.report.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
