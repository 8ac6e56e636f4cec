"""A subscriber process for the benchmark: opens the sockets it is given and records, for
every alert, the search id it answers and when it arrived.

    python -m bench.loadgen SOCKETS.json RECORD.txt

SOCKETS.json: {"url": "ws://...", "origin": "http://...", "cookies": [cookie or null, ...]}.
Runs until SIGTERM, then writes one line per alert received: "<rid> <epoch seconds>".
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin


def search_id(message: dict[str, object]) -> str | None:
    if message.get("type") == "alert":  # Percolert: the id is the search text's last word
        return str(message["query"]).rsplit(" ", 1)[-1]
    if message.get("type") == "notification":  # the baseline echoes it
        return str(message.get("rid"))
    return None


async def main(spec_path: Path, record_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    received: list[tuple[str, float]] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    greeted = 0
    all_greeted = asyncio.Event()

    async def listen(connection: ClientConnection) -> None:
        nonlocal greeted
        if spec.get("hello", True):
            await connection.recv()
            greeted += 1
            if greeted == len(spec["cookies"]):
                all_greeted.set()
        async for raw in connection:
            now = time.time()
            rid = search_id(json.loads(raw))
            if rid is not None:
                received.append((rid, now))

    connections = []
    for cookie in spec["cookies"]:
        headers = {"Cookie": f"percolert_session={cookie}"} if cookie else {}
        connection = await connect(
            spec["url"],
            origin=Origin(spec["origin"]),
            additional_headers=headers,
            max_queue=None,
            open_timeout=60,
            ping_interval=None,
        )
        connections.append(connection)
    # Ready only once every socket has had its first message (Percolert's hello, which
    # needs Elasticsearch; the baseline sends none), so measurements start after the storm.
    tasks = [asyncio.create_task(listen(connection)) for connection in connections]
    if spec.get("hello", True) and connections:
        await all_greeted.wait()
    Path(str(record_path) + ".ready").write_text(str(len(connections)))
    await stop.wait()
    for task in tasks:
        task.cancel()
    record_path.write_text("".join(f"{rid} {at:.6f}\n" for rid, at in received))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
