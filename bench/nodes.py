"""Where a design of `bench/harness.py --peer centrifugo` runs: on one node, or on two that
share a Redis (`--peer-nodes 2`, issue 26's two-node step).

- Percolert's designs on two nodes: two instances on its Redis broker (PERCOLERT_REDIS_URL);
  the searches alternate between them.
- Centrifugo's designs on two nodes: two Centrifugo nodes on Centrifugo's Redis engine, fed
  by one Percolert instance through the first node's server API. One instance, because
  Percolert's Centrifugo delivery refuses a Redis broker: no instance holds a socket, so
  there is nothing to route between instances.

On two nodes the sockets are split as bench/cluster.py splits them: socket k on node k mod 2,
so each user's two tabs sit on both nodes and every alert crosses Redis. Each node's sockets
are held by a load client of its own, which numbers them as the whole run does
(tools/wsload's `first_socket` and `socket_step`): a reconnect round drops the same sockets
as on one node. The Redis is a fresh `redis-server` for each design run
(percolert.dev.redisnode), whose CPU is measured beside the nodes'."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from bench.centrifugo import Centrifugo, CentrifugoSockets
from bench.cpu_budget import CpuBudget
from bench.reconnect import DroppedSocket
from bench.rig import Served, Server, Subscribers, user_of
from percolert.dev.redisnode import RedisNode
from tests.servers import free_port

Item = TypeVar("Item")
Arrivals = dict[str, list[tuple[float, int]]]


def split(items: Sequence[Item], parts: int) -> list[list[Item]]:
    """Item k in part k mod `parts`: a user's consecutive tabs land on different nodes."""
    return [list(items[part::parts]) for part in range(parts)]


def merge_connects(connects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One account of the connect storms of several load clients (wsload's ready files).
    Counts are summed and the storm lasts as long as the slowest. A percentile of the
    whole cannot be computed from each client's, so each one is the worst client's (an
    upper bound). A single account is returned as it is."""
    if len(connects) == 1:
        return connects[0]
    merged: dict[str, Any] = {}
    for key in ("sockets", "dial_retries", "greets_over_1s", "failed"):
        merged[key] = sum(connect.get(key, 0) for connect in connects)
    merged["connect_seconds"] = max(connect.get("connect_seconds", 0.0) for connect in connects)
    for key in ("handshake_ms", "greet_ms"):
        worst: dict[str, float] = {}
        for connect in connects:
            for name, value in (connect.get(key) or {}).items():
                worst[name] = max(worst.get(name, value), value)
        merged[key] = worst
    merged["errors"] = [error for connect in connects for error in connect.get("errors") or []]
    return merged


def merge_arrivals(parts: Sequence[tuple[Arrivals, list[float]]]) -> tuple[Arrivals, list[float]]:
    """Arrivals by search and the sockets' closing times over several load clients."""
    received: Arrivals = defaultdict(list)
    closed: list[float] = []
    for arrived, closings in parts:
        for search, times in arrived.items():
            received[search].extend(times)
        closed.extend(closings)
    return dict(received), sorted(closed)


class SocketGroup:
    """The load clients holding one design run's sockets (one per node), read as one: what
    harness.run_design asks of rig.Subscribers."""

    def __init__(self, clients: list[Subscribers]) -> None:
        self.clients = clients
        self.connect = merge_connects([client.connect for client in clients])

    @property
    def processes(self) -> list[psutil.Process]:
        return [client.ps for client in self.clients]

    def exit_codes(self) -> list[int | None]:
        return [client.process.returncode for client in self.clients]

    def alive(self) -> bool:
        return all(client.alive() for client in self.clients)

    def arrivals(self) -> tuple[Arrivals, list[float]]:
        return merge_arrivals([client.arrivals() for client in self.clients])

    def drop_some(self) -> list[int]:
        """A reconnect round on every client (one with no socket to drop ends its round at
        once); where each record ends now, for await_round."""
        return [client.drop_some() for client in self.clients]

    def await_round(self, since: list[int], timeout: float) -> bool:
        return all(
            client.await_round(start, timeout)
            for client, start in zip(self.clients, since, strict=True)
        )

    def dropped(self) -> dict[int, DroppedSocket]:
        """The dropped sockets of every client, by the run's socket number (the clients
        number them so, and no two hold the same)."""
        found: dict[int, DroppedSocket] = {}
        for client in self.clients:
            found |= client.dropped()
        return found

    def stop(self) -> None:
        for client in self.clients:
            client.stop()


@dataclass
class Deployment:
    """The processes of one design run: Percolert's instances (searches go to the first,
    and alternate over all), Centrifugo's nodes (its designs) and the Redis they share (two
    nodes)."""

    design: str
    nodes: int
    servers: list[Server] = field(default_factory=list)
    peers: list[Centrifugo] = field(default_factory=list)
    redis: RedisNode | None = None
    redis_process: psutil.Process | None = None

    @property
    def holders(self) -> list[Served]:
        """The processes holding the sockets: Centrifugo's nodes, else Percolert's."""
        return list(self.peers) if self.peers else list(self.servers)

    def open_sockets(
        self,
        cookies: list[str | None],
        scratch: Path,
        reconnect: dict[str, float] | None,
        budget: CpuBudget | None = None,
    ) -> SocketGroup:
        """The sockets, split over the nodes: with a cookie each on Percolert, with a token
        naming the cookie's user on Centrifugo; the load clients inside `budget`, if any."""
        parts = len(self.holders)
        clients: list[Subscribers] = []
        try:
            for part, mine in enumerate(split(cookies, parts)):
                # The run's socket k is this part's socket (k - part) / parts.
                numbering = (part, parts)
                if self.peers:
                    node = self.peers[part]
                    tokens = [node.token(user_of(cookie)) for cookie in mine if cookie is not None]
                    clients.append(
                        CentrifugoSockets(
                            node,
                            tokens,
                            scratch,
                            reconnect=reconnect,
                            numbering=numbering,
                            budget=budget,
                        )
                    )
                else:
                    clients.append(
                        Subscribers(
                            self.servers[part],
                            mine,
                            scratch,
                            reconnect=reconnect,
                            numbering=numbering,
                            budget=budget,
                        )
                    )
        except BaseException:
            for client in clients:
                client.stop()
            raise
        return SocketGroup(clients)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for peer in self.peers:
            peer.stop()
        if self.redis is not None:
            self.redis.stop()


def node_name(name: str, nodes: int, number: int | None = None) -> str:
    """A process's name (its log's and the load client's files): as on one node, and marked
    with the node count (and its number) on two, so that no run's files overwrite
    another's."""
    if nodes == 1:
        return name
    return f"{name}-n{nodes}" + ("" if number is None else f"-{number + 1}")


def deploy(
    design: str,
    nodes: int,
    node_url: str,
    scratch: Path,
    *,
    extra_env: dict[str, str] | None = None,
) -> Deployment:
    """Start `design` on `nodes` nodes (1 or 2), Percolert's instances with `extra_env`
    (say, another source tree's PYTHONPATH); on failure, whatever started is stopped."""
    deployment = Deployment(design, nodes)
    try:
        redis_url = None
        if nodes > 1:
            deployment.redis = RedisNode(scratch / node_name(f"redis-{design}", nodes))
            state, _ = deployment.redis.start(free_port())
            deployment.redis_process = psutil.Process(state.pid)
            redis_url = state.url
        if design.startswith("centrifugo"):
            for number in range(nodes):
                first = deployment.peers[0] if deployment.peers else None
                deployment.peers.append(
                    Centrifugo(
                        scratch,
                        name=node_name("centrifugo", nodes, number if nodes > 1 else None),
                        # One cluster: every node takes the first node's keys.
                        secret=None if first is None else first.secret,
                        api_key=None if first is None else first.api_key,
                        redis_url=redis_url,
                        history_size=100,
                    )
                )
            publisher = deployment.peers[0]
            deployment.servers.append(
                Server(
                    design,
                    node_url,
                    scratch,
                    name=node_name(design, nodes),
                    extra_env={
                        "PERCOLERT_DELIVERY": "centrifugo",
                        "PERCOLERT_CENTRIFUGO_API_URL": publisher.url,
                        "PERCOLERT_CENTRIFUGO_API_KEY": publisher.api_key,
                    },
                )
            )
        else:
            for number in range(nodes):
                deployment.servers.append(
                    Server(
                        design,
                        node_url,
                        scratch,
                        redis_url=redis_url,
                        name=node_name(design, nodes, number if nodes > 1 else None),
                        extra_env=extra_env,
                    )
                )
    except BaseException:
        deployment.stop()
        raise
    return deployment
