"""The HTTP API described as OpenAPI 3.1, its schemas generated from the msgspec structs
(served at /openapi.json; the fuzz tests read it)."""

from __future__ import annotations

from typing import Any

import msgspec

from percolert import __version__
from percolert.core.messages import (
    Categories,
    DataExport,
    ErrorBody,
    Health,
    MergeReport,
    Readiness,
    RealtimeToken,
    SearchResponse,
    Watch,
    WatchList,
    WatchSpec,
    WatchUpdate,
)
from percolert.engine.search import MAX_QUERY_LENGTH, MAX_SIZE
from percolert.web.insights_api import Visit
from percolert.web.offsite_api import Preferences

_REF = "#/components/schemas/{name}"


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}


def _ok(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(name)}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "bad parameters or body",
        401: "no session; /readyz: no metrics token (nor a request from this machine); "
        "/api/me/merge, /api/me/preferences: no shop's token (account_required)",
        403: "forbidden_origin: not from the shop's own page",
        404: "not found (/api/me/preferences: off-site delivery is off, offsite_disabled)",
        409: "conflict: a duplicate, or over the per-user limit",
        413: "body too large",
        415: "unsupported_media_type: the body is not application/json",
        429: "rate_limited: over a limit of the session or the address; see Retry-After",
        431: "headers_too_large: request line and headers over 16 KiB",
        503: "Elasticsearch unavailable or not set up; see Retry-After (/readyz: also "
        "background_down, or broker_unavailable while the shared broker's Redis is away)",
    }
    return {
        str(status): {"description": meaning[status], "content": _json("ErrorBody")}
        for status in statuses
    }


def openapi_document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            ErrorBody,
            SearchResponse,
            WatchSpec,
            WatchUpdate,
            Watch,
            WatchList,
            Categories,
            Health,
            Readiness,
            DataExport,
            MergeReport,
            RealtimeToken,
            Preferences,
            Visit,
        ],
        ref_template=_REF,
    )
    paths: dict[str, Any] = {
        "/api/search": {
            "get": {
                "summary": "Search the catalog (and percolate the search against watches)",
                "parameters": [
                    {
                        "name": "q",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_LENGTH},
                    },
                    {
                        "name": "size",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SIZE},
                    },
                ],
                "responses": {
                    "200": _ok("SearchResponse", "ranked results"),
                    **_errors(400, 429, 431, 503),
                },
            }
        },
        "/api/session": {
            "post": {
                "summary": "Start a session (an HttpOnly cookie) unless the request has one: "
                "the page asks here before its first other call and before opening /ws",
                "responses": {
                    "204": {"description": "the request has a session (set now, or already)"},
                    **_errors(403, 415, 429, 431),
                },
            }
        },
        "/api/watches": {
            "get": {
                "summary": "Your watches, then the default ones",
                "responses": {"200": _ok("WatchList", "watches"), **_errors(503)},
            },
            "post": {
                "summary": "Add a watch: of words (`terms`), or of one product (`sku`; 404 "
                "unknown_product when the catalog has none)",
                "requestBody": {"required": True, "content": _json("WatchSpec")},
                "responses": {
                    "201": _ok("Watch", "the stored watch"),
                    **_errors(400, 403, 404, 409, 413, 415, 429, 431, 503),
                },
            },
        },
        "/api/watches/{watch_id}": {
            "delete": {
                "summary": "Remove one of your watches",
                "parameters": [
                    {
                        "name": "watch_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "204": {"description": "removed"},
                    **_errors(403, 404, 415, 429, 431, 503),
                },
            },
            "patch": {
                "summary": "Change what one of your watches notifies of (searches, products, "
                "or both); default watches are not yours to change (404)",
                "parameters": [
                    {
                        "name": "watch_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {"required": True, "content": _json("WatchUpdate")},
                "responses": {
                    "200": _ok("Watch", "the changed watch"),
                    **_errors(400, 403, 404, 413, 415, 429, 431, 503),
                },
            },
        },
        "/api/categories": {
            "get": {
                "summary": "Categories in the catalog",
                "responses": {"200": _ok("Categories", "categories"), **_errors(503)},
            }
        },
        "/api/me/export": {
            "get": {
                "summary": "Everything held of you (your session, or your account with the "
                "shop's token), as a download: your watches, the alerts sent to you, your "
                "product alerts and what was shown; each list the newest ones, bounded",
                "responses": {
                    "200": {
                        "description": "the export (Content-Disposition: attachment)",
                        "content": _json("DataExport"),
                    },
                    **_errors(429, 431, 503),
                },
            }
        },
        "/api/realtime/token": {
            "post": {
                "summary": "With alerts delivered through Centrifugo "
                "(PERCOLERT_DELIVERY=centrifugo): a connection token for Centrifugo's client, "
                "naming you (your session, or your account with the shop's token); Centrifugo "
                "subscribes the socket to your personal channel. 404 where alerts come on /ws. "
                "Sent as JSON (an empty object), as every POST",
                "responses": {
                    "200": _ok("RealtimeToken", "the token, and when to ask again"),
                    **_errors(403, 404, 415, 429, 431),
                },
            }
        },
        "/api/me/merge": {
            "post": {
                "summary": "At login, with the shop's token and the anonymous session's "
                "cookie: move the session's own watches into the account (duplicates "
                "dropped; those over the account's cap stay with the session)",
                "responses": {
                    "200": _ok("MergeReport", "what moved, and what did not"),
                    **_errors(401, 403, 415, 429, 431, 503),
                },
            }
        },
        "/api/me/preferences": {
            "get": {
                "summary": "Your account's e-mail preferences (with the shop's token)",
                "responses": {
                    "200": _ok("Preferences", "how often, and when digests come"),
                    **_errors(401, 404, 429, 431, 503),
                },
            },
            "put": {
                "summary": "Set your account's e-mail preferences: how often (instant, daily, "
                "weekly, off; a watch's own choice overrides it), and the time zone and "
                "hour of digests (null: the shop's defaults)",
                "requestBody": {"required": True, "content": _json("Preferences")},
                "responses": {
                    "200": _ok("Preferences", "the preferences now"),
                    **_errors(400, 401, 403, 404, 413, 415, 429, 431, 503),
                },
            },
        },
        "/api/alerts/visits": {
            "post": {
                "summary": "An alert of one of your watches (or of a default watch) was followed "
                "to the shop: the SDK says so, for the shop's demand view (counted per watch, "
                "never per shopper)",
                "requestBody": {"required": True, "content": _json("Visit")},
                "responses": {
                    "204": {"description": "counted"},
                    **_errors(400, 401, 403, 404, 413, 415, 429, 431, 503),
                },
            }
        },
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": _ok("Health", "process up")}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness (with the metrics token, or from this machine only)",
                "responses": {"200": _ok("Readiness", "ready"), **_errors(401, 429, 503)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Percolert", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }
