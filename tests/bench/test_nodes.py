"""Two nodes (bench/nodes.py): the sockets split so that each user's tabs sit on both nodes,
and the load clients of the nodes read as one: their connect storms, arrivals and reconnect
rounds, by the run's socket numbers."""

from __future__ import annotations

from pathlib import Path

from bench.nodes import SocketGroup, merge_arrivals, merge_connects, node_name, split
from bench.reconnect import DroppedSocket
from bench.rig import Subscribers, split_numbering


def test_each_users_two_tabs_are_split_over_the_two_nodes() -> None:
    tabs = ["u0", "u0", "u1", "u1", "u2", "u2"]
    first, second = split(tabs, 2)
    assert first == second == ["u0", "u1", "u2"]
    assert split(tabs, 1) == [tabs]


def test_only_a_split_load_client_numbers_its_sockets() -> None:
    assert split_numbering((0, 1)) == {}  # one node: the spec as it always was
    assert split_numbering((1, 2)) == {"first_socket": 1, "socket_step": 2}


def test_one_nodes_processes_keep_their_names_and_two_nodes_are_marked() -> None:
    assert node_name("percolert-per-user", 1) == "percolert-per-user"
    assert node_name("centrifugo", 1, None) == "centrifugo"
    assert node_name("percolert-per-user", 2, 0) == "percolert-per-user-n2-1"
    assert node_name("centrifugo-per-user", 2) == "centrifugo-per-user-n2"


def test_connect_storms_are_summed_and_their_percentiles_are_the_worst_clients() -> None:
    one = {
        "sockets": 500,
        "connect_seconds": 1.5,
        "dial_retries": 1,
        "greet_ms": {"p50": 3.0, "p99": 40.0},
        "greets_over_1s": 0,
        "errors": [],
    }
    assert merge_connects([one]) is one
    other = {**one, "connect_seconds": 2.0, "dial_retries": 2, "greet_ms": {"p50": 4.0, "p99": 9.0}}
    merged = merge_connects([one, other])
    assert (merged["sockets"], merged["dial_retries"], merged["connect_seconds"]) == (1000, 3, 2.0)
    assert merged["greet_ms"] == {"p50": 4.0, "p99": 40.0}


def test_arrivals_of_both_clients_are_one_searchs() -> None:
    received, closed = merge_arrivals(
        [({"s1": [(1.0, 10)]}, [5.0]), ({"s1": [(1.1, 10)], "s2": [(2.0, 20)]}, [3.0])]
    )
    assert received == {"s1": [(1.0, 10), (1.1, 10)], "s2": [(2.0, 20)]}
    assert closed == [3.0, 5.0]


class Client(Subscribers):
    """A load client's record without the process: what SocketGroup reads of it."""

    def __init__(self, dropped: dict[int, DroppedSocket], record_ends: int) -> None:
        self.connect = {"sockets": 2}
        self.record = Path("/nonexistent")
        self._dropped, self._ends = dropped, record_ends
        self.waited: list[int] = []

    def drop_some(self) -> int:
        return self._ends

    def await_round(self, since: int, timeout: float) -> bool:
        self.waited.append(since)
        return True

    def dropped(self) -> dict[int, DroppedSocket]:
        return self._dropped


def test_a_round_runs_on_every_client_and_the_dropped_sockets_keep_the_runs_numbers() -> None:
    # At 0.1 the run drops its sockets 9, 19, ...: on two nodes all of them the second's.
    first, second = Client({}, 100), Client({9: DroppedSocket(), 19: DroppedSocket()}, 250)
    group = SocketGroup([first, second])
    since = group.drop_some()
    assert since == [100, 250]
    assert group.await_round(since, 1.0)
    assert (first.waited, second.waited) == ([100], [250])
    assert sorted(group.dropped()) == [9, 19]
