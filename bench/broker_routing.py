"""Routing micro-benchmark (docs/design/multi-instance.md §2): how alerts reach the instances
that hold their recipients' sockets, per-user Pub/Sub channels versus per-instance inbox
streams, against a real redis-server.

U users are split over I "instances" (receiver processes); each of S searches alerts R
random users. The publisher (this process) sends each search's alerts the way the variant
routes them, one search after the other as the dispatcher does:
- `channels`: one `PUBLISH` per recipient to `u:<user>`, pipelined per search; each receiver
  `SUBSCRIBE`s to the channels of its users and decodes every message;
- `inboxes`: one call of the broker's own `publish.lua` (percolert/broker/lua) per search,
  which adds the sending once to the inbox stream of each instance holding a recipient
  (its presence hash `P:at:<instance>`); each receiver `XREAD`s its inbox, decodes each
  sending once and picks out its own users.

Printed per variant: Redis CPU per search, app CPU per search (publisher plus receivers),
the publisher's rate, and alerts delivered over expected; medians over `--repeat` runs.

    python bench/broker_routing.py                     # 5k users, 2 instances, 2,000 searches
    python bench/broker_routing.py --report docs/benchmarks/broker-routing.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import msgspec
import psutil
import redis.asyncio as aioredis

from percolert.broker.base import Sending
from percolert.core.messages import AlertWatch, ProductCard
from percolert.dev.redisnode import RedisNode
from tests.servers import free_port

PREFIX = "percolert:{routing}"
INBOX_BOUND = 100_000
MIRROR_BOUND = 200_000  # broker_redis.MIRROR_BOUND
VARIANTS = ("channels", "inboxes")
IDLE_SECONDS = 10.0  # a receiver gives up once nothing has arrived for this long


@dataclass
class Result:
    variant: str
    users: int
    instances: int
    searches: int
    recipients: int
    redis_cpu_ms_per_search: float
    app_cpu_ms_per_search: float
    publisher_cpu_ms_per_search: float
    receivers_cpu_ms_per_search: float
    publisher_rate: float
    delivered: int
    expected: int


def instance_of(user: int, instances: int) -> int:
    return user % instances


def user_name(user: int) -> str:
    return f"user-{user:06d}"


def plan(users: int, searches: int, recipients: int) -> list[list[int]]:
    rng = random.Random(12)
    return [rng.sample(range(users), recipients) for _ in range(searches)]


def sending(search: int, recipients: list[int]) -> Sending:
    """A sending as the dispatcher makes it: one watch per recipient."""
    return Sending(
        at="2026-12-01T12:00:00.000Z",
        earliest_ms=1_764_590_400_000,
        found=(
            ProductCard(
                sku=f"sku-{search}",
                product_name="Sony WH-1000XM5 wireless headphones",
                price=349.0,
                category="audio",
                brand="Sony",
            ),
        ),
        watches={
            user_name(user): AlertWatch(id=f"watch-{user:06d}", terms="sony headphones")
            for user in recipients
        },
    )


# publish.lua's arguments before the sendings, as broker_redis.py passes them: the epoch's
# (_common.lua: a new epoch, floor, last seen, restart window), the inbox bound, the
# publishing instance (its mirror stream), the mirror's bound, and no claim.
PUBLISH_ARGS: list[str | int] = ["bench-epoch", 0, 0, 0, INBOX_BOUND, "publisher", MIRROR_BOUND, ""]


def publish_script() -> str:
    """The broker's own script, as broker_redis.py loads it."""
    folder = resources.files("percolert.broker").joinpath("lua")
    return folder.joinpath("_common.lua").read_text() + folder.joinpath("publish.lua").read_text()


async def receive(
    url: str, variant: str, instance: int, local: set[str], expected: int, ready: Event
) -> tuple[int, float]:
    """Receive until `expected` alerts for local users have arrived (or nothing has for
    IDLE_SECONDS): (alerts received, CPU seconds spent from ready on)."""
    client = aioredis.Redis.from_url(url)
    decoder = msgspec.msgpack.Decoder(Sending)
    received = 0
    try:
        if variant == "channels":
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            channels = [f"u:{user}" for user in sorted(local)]
            for start in range(0, len(channels), 500):
                await pubsub.subscribe(*channels[start : start + 500])
            # Read the subscribe confirmations before the publisher starts.
            while await pubsub.get_message(timeout=0.2) is not None:
                pass
            ready.set()
            started = time.process_time()
            last = time.monotonic()
            while received < expected and time.monotonic() - last < IDLE_SECONDS:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                last = time.monotonic()
                decoder.decode(message["data"])
                received += 1
            await pubsub.aclose()
        else:
            inbox = f"{PREFIX}:inbox:{instance}"
            ready.set()
            started = time.process_time()
            last_id, last = b"0-0", time.monotonic()
            while received < expected and time.monotonic() - last < IDLE_SECONDS:
                reply: Any = await client.xread({inbox: last_id}, count=500, block=1000)
                for _stream, entries in reply or ():
                    last = time.monotonic()
                    for entry_id, fields in entries:
                        last_id = entry_id
                        decoded = decoder.decode(fields[b"m"])
                        received += sum(1 for user in decoded.watches if user in local)
        return received, time.process_time() - started
    finally:
        await client.aclose()


def receiver(
    url: str,
    variant: str,
    instance: int,
    local: set[str],
    expected: int,
    ready: Event,
    results: Any,
) -> None:
    results.put(asyncio.run(receive(url, variant, instance, local, expected, ready)))


async def prepare(url: str, variant: str, users: int, instances: int) -> None:
    """An empty Redis; for inboxes, the registry the broker keeps: every instance alive, and
    which users each holds."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushall()
        if variant == "inboxes":
            expiry = int(time.time() * 1000) + 3_600_000
            for instance in range(instances):
                await client.zadd(f"{PREFIX}:inst", {str(instance): expiry})
                held = [user_name(u) for u in range(users) if instance_of(u, instances) == instance]
                for start in range(0, len(held), 1000):
                    await client.hset(
                        f"{PREFIX}:at:{instance}",
                        mapping=dict.fromkeys(held[start : start + 1000], 1),
                    )
    finally:
        await client.aclose()


async def publish(url: str, variant: str, searches: list[list[int]]) -> float:
    """Every search's alerts, one search after the other; returns the wall seconds."""
    client = aioredis.Redis.from_url(url)
    encoder = msgspec.msgpack.Encoder()
    script = client.register_script(publish_script())
    try:
        started = time.monotonic()
        for number, recipients in enumerate(searches):
            if variant == "channels":
                async with client.pipeline(transaction=False) as pipe:
                    for user in recipients:
                        pipe.publish(
                            f"u:{user_name(user)}", encoder.encode(sending(number, [user]))
                        )
                    await pipe.execute()
            else:
                names = [user_name(user) for user in recipients]
                encoded = encoder.encode(sending(number, recipients))
                await script(
                    keys=[], args=[PREFIX, *PUBLISH_ARGS, "u", encoded, len(names), *names]
                )
        return time.monotonic() - started
    finally:
        await client.aclose()


def measure(
    url: str,
    redis_process: psutil.Process,
    variant: str,
    users: int,
    instances: int,
    searches: list[list[int]],
) -> Result:
    asyncio.run(prepare(url, variant, users, instances))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = []
    expected = 0
    for instance in range(instances):
        local = {user_name(u) for u in range(users) if instance_of(u, instances) == instance}
        mine = sum(
            1
            for recipients in searches
            for u in recipients
            if instance_of(u, instances) == instance
        )
        expected += mine
        ready = context.Event()
        process = context.Process(
            target=receiver, args=(url, variant, instance, local, mine, ready, results)
        )
        process.start()
        if not ready.wait(120):
            raise SystemExit(f"receiver {instance} did not get ready")
        processes.append(process)
    redis_before = sum(redis_process.cpu_times()[:2])
    cpu_before = time.process_time()
    wall = asyncio.run(publish(url, variant, searches))
    publisher_cpu = time.process_time() - cpu_before
    outcomes = [results.get(timeout=300) for _ in processes]
    redis_cpu = sum(redis_process.cpu_times()[:2]) - redis_before
    for process in processes:
        process.join(timeout=30)
    receivers_cpu = sum(cpu for _, cpu in outcomes)
    count = len(searches)
    return Result(
        variant=variant,
        users=users,
        instances=instances,
        searches=count,
        recipients=len(searches[0]),
        redis_cpu_ms_per_search=round(1000 * redis_cpu / count, 3),
        app_cpu_ms_per_search=round(1000 * (publisher_cpu + receivers_cpu) / count, 3),
        publisher_cpu_ms_per_search=round(1000 * publisher_cpu / count, 3),
        receivers_cpu_ms_per_search=round(1000 * receivers_cpu / count, 3),
        publisher_rate=round(count / wall, 1),
        delivered=sum(received for received, _ in outcomes),
        expected=expected,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--searches", type=int, default=2_000)
    parser.add_argument("--recipients", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--report", type=Path, default=None, help="write the results (JSON)")
    args = parser.parse_args()
    searches = plan(args.users, args.searches, args.recipients)
    load = os.getloadavg()
    all_results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="percolert-routing-") as scratch:
        node = RedisNode(Path(scratch))
        state, _ = node.start(free_port())
        try:
            redis_process = psutil.Process(state.pid)
            for round_number in range(args.repeat):
                for variant in VARIANTS if round_number % 2 == 0 else VARIANTS[::-1]:
                    result = measure(
                        state.url, redis_process, variant, args.users, args.instances, searches
                    )
                    all_results.append(result)
                    print(
                        f"{variant}: Redis CPU {result.redis_cpu_ms_per_search} ms/search, "
                        f"app CPU {result.app_cpu_ms_per_search} ms/search (publisher "
                        f"{result.publisher_cpu_ms_per_search}, receivers "
                        f"{result.receivers_cpu_ms_per_search}), publisher "
                        f"{result.publisher_rate}/s, delivered {result.delivered}/"
                        f"{result.expected}",
                        flush=True,
                    )
        finally:
            node.stop()
    print(
        f"\n{args.users} users over {args.instances} instances, {args.searches} searches of "
        f"{args.recipients} recipients, medians of {args.repeat} (load average before: "
        f"{', '.join(f'{value:.2f}' for value in load)}):\n"
    )
    print(
        "| variant | Redis CPU / search | app CPU / search (publisher + receivers) "
        "| publisher rate | delivered |"
    )
    print("|---|---:|---:|---:|---:|")
    for variant in VARIANTS:
        mine = [r for r in all_results if r.variant == variant]

        def middle(values: list[float]) -> float:
            return round(statistics.median(values), 2)

        print(
            f"| {variant} | {middle([r.redis_cpu_ms_per_search for r in mine])} ms "
            f"| {middle([r.app_cpu_ms_per_search for r in mine])} ms "
            f"({middle([r.publisher_cpu_ms_per_search for r in mine])} + "
            f"{middle([r.receivers_cpu_ms_per_search for r in mine])}) "
            f"| {middle([r.publisher_rate for r in mine]):g}/s "
            f"| {sum(r.delivered for r in mine)}/{sum(r.expected for r in mine)} |"
        )
    if args.report is not None:
        args.report.write_text(
            json.dumps(
                {"load_average": load, "results": [asdict(r) for r in all_results]}, indent=2
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
