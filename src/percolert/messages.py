"""Wire formats: every HTTP body (and later every WebSocket message) is a msgspec Struct."""

from __future__ import annotations

import msgspec


class ErrorDetail(msgspec.Struct, frozen=True):
    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """The one error shape: `{"error": {"code": ..., "message": ...}}`."""

    error: ErrorDetail


class SearchHit(msgspec.Struct, frozen=True):
    id: str
    product_name: str
    description: str
    price: float
    category: str
    brand: str
    in_stock: bool
    score: float


class SearchResponse(msgspec.Struct, frozen=True):
    query: str
    total: int
    took_ms: float
    results: list[SearchHit]


class Health(msgspec.Struct, frozen=True):
    status: str


class Readiness(msgspec.Struct, frozen=True):
    status: str
    elasticsearch: str
