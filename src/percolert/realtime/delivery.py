"""From published records to the sockets on this node: what a broker hands the local hub.

Each alert is encoded once, for every socket that gets it. The hub knows no broker and no
log; a broker knows no socket.
"""

from __future__ import annotations

import msgspec

from percolert.core.records import AlertRecord
from percolert.realtime.hub import Hub


class Delivery:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._encoder = msgspec.json.Encoder()

    def deliver(self, record: AlertRecord) -> None:
        """Send a sending's alerts to the sockets of its recipients here: to each user in
        its `watches`, or to every user but the excluded ones — of sessions begun by its
        earliest search."""
        # The same comparison as replay's (whole milliseconds): a session begun later than
        # the earliest search counted gets this sending neither now nor on reconnect.
        sessions_since = record.earliest_ms / 1000
        if record.everyone is not None:
            self._hub.send_to_all(
                self._encoder.encode(record.alert(record.everyone)).decode(),
                exclude=record.excluded,
                since=sessions_since,
                seq=record.seq,
            )
            return
        for user, watch in record.watches.items():
            self._hub.send_to_user(
                user,
                self._encoder.encode(record.alert(watch)).decode(),
                since=sessions_since,
                seq=record.seq,
            )

    def deliver_user(self, user: str, payload: str) -> None:
        self._hub.send_to_user(user, payload)
