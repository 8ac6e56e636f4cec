"""The seed design the project started from, kept as the benchmark's baseline.

A Starlette app whose /search runs the same catalog query against the same node and then,
when `q.lower()` is in a fixed WATCH_LIST, loops over one global list of every connected
socket and awaits `send_text` of a JSON notification to each — the searcher included (the
client filters its own) — dropping sockets whose send raised. It has no users, no per-user
watches and no percolator. `rid` is echoed only so the harness can time each notification.

    ELASTICSEARCH_URL=... PRODUCTS_INDEX=bench-products uvicorn bench.baseline:app
"""

from __future__ import annotations

import json
import os

from elasticsearch import AsyncElasticsearch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from percolert.engine.search import build_query

WATCH_LIST = ["kindle", "iphone", "headphones", "macbook", "playstation 5"]
CONNECTIONS: list[WebSocket] = []  # the article's global list, on purpose
ES = AsyncElasticsearch(os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200"))
INDEX = os.environ.get("PRODUCTS_INDEX", "percolert-products")


async def search(request: Request) -> JSONResponse:
    q = request.query_params.get("q", "")
    response = await ES.search(index=INDEX, query=build_query(q), size=10)
    hits = [hit["_source"] for hit in response["hits"]["hits"]]
    if q.lower() in WATCH_LIST:
        notification = json.dumps(
            {"type": "notification", "query": q, "rid": request.query_params.get("rid")}
        )
        for websocket in list(CONNECTIONS):
            try:
                await websocket.send_text(notification)
            except Exception:
                CONNECTIONS.remove(websocket)
    return JSONResponse({"query": q, "results": hits})


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    CONNECTIONS.append(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        if websocket in CONNECTIONS:
            CONNECTIONS.remove(websocket)


app = Starlette(routes=[Route("/search", search), WebSocketRoute("/ws", ws)])
