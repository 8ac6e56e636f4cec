"""From published records to the sockets on this node: what a broker hands the local hub.

Each alert is encoded once, for every socket that gets it. The hub knows no broker and no
log; a broker knows no socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from percolert.core.messages import AlertWatch
from percolert.core.records import AlertRecord
from percolert.realtime.hub import Hub

# Told after a sending went out here, once per watch it went through that reached anyone:
# the watch, whether it is a default watch, and how many users here took it.
DeliveryObserver = Callable[[AlertWatch, bool, int], None]


class Deliverer(Protocol):
    """Where a broker's sendings go: the hub's sockets here (Delivery), or another server
    holding them (realtime.centrifugo)."""

    def reachable(self, user: str) -> bool: ...

    def deliver(self, record: AlertRecord) -> None: ...

    def deliver_user(self, user: str, payload: str) -> None: ...

    def erase(self, user: str) -> int:
        """The user was erased: their sockets closed, nothing more sent to them; returns
        how many sockets were closed."""
        ...


class Delivery:
    def __init__(self, hub: Hub, on_delivered: DeliveryObserver | None = None) -> None:
        self._hub = hub
        self._on_delivered = on_delivered
        self._encoder = msgspec.json.Encoder()
        self.reachable = hub.reachable
        self.erase = hub.erase

    def deliver(self, record: AlertRecord) -> None:
        """Send a sending's alerts to the sockets of its recipients here: to each user in
        its `watches`, or to every user but the excluded ones — of sessions begun by its
        earliest search."""
        # The same comparison as replay's (whole milliseconds): a session begun later than
        # the earliest search counted gets this sending neither now nor on reconnect.
        sessions_since = record.earliest_ms / 1000
        if record.everyone is not None:
            users = self._hub.send_to_all(
                self._encoder.encode(record.alert(record.everyone)).decode(),
                exclude=record.excluded,
                since=sessions_since,
                seq=record.seq,
            )
            if users and self._on_delivered is not None:
                self._on_delivered(record.everyone, True, users)
            return
        for user, watch in record.watches.items():
            sent = self._hub.send_to_user(
                user,
                self._encoder.encode(record.alert(watch)).decode(),
                since=sessions_since,
                seq=record.seq,
            )
            if sent and self._on_delivered is not None:
                self._on_delivered(watch, False, 1)

    def deliver_user(self, user: str, payload: str) -> None:
        self._hub.send_to_user(user, payload)
