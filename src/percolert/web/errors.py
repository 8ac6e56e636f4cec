"""The one error shape, produced in one place for every failure an HTTP client can see."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

import elasticsearch
import msgspec
from elastic_transport import ConnectionTimeout, TransportError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from percolert.accounts.erasure import InvalidCustomerId
from percolert.broker.base import BrokerUnavailable
from percolert.core.messages import ErrorBody, ErrorDetail
from percolert.engine import es
from percolert.watches.store import (
    DuplicateWatch,
    InvalidWatch,
    TooManyWatches,
    UnknownCategory,
    UnknownProduct,
    WatchError,
    WatchNotFound,
)
from percolert.web.middleware.security_headers import security_headers
from percolert.web.paths import loggable_path, route_path

logger = logging.getLogger(__name__)

# How long a client should wait before retrying while Elasticsearch is unavailable.
RETRY_AFTER_SECONDS = 5

# The watches domain's refusals, as HTTP statuses and the API's stable codes.
_WATCH_ERRORS: dict[type[WatchError], tuple[int, str]] = {
    InvalidWatch: (400, "invalid_watch"),
    UnknownCategory: (400, "unknown_category"),
    UnknownProduct: (404, "unknown_product"),
    WatchNotFound: (404, "watch_not_found"),
    DuplicateWatch: (409, "duplicate_watch"),
    TooManyWatches: (409, "too_many_watches"),
}

# Statuses of requests whose client left (nginx's 499) or was cut off for sending its body
# too slowly (408, answered by the server itself), as the access log records them.
CLIENT_CLOSED_REQUEST = 499
REQUEST_TIMEOUT = 408
# Set in the scope by the server (`percolert.server.httpprotocol`) when it answered 408 and
# closed the connection because the body stopped arriving: the app then sees the client
# gone, as if it had left.
BODY_TIMED_OUT = "percolert.body_timed_out"

# What a client is told when Elasticsearch fails. The details (the cluster's address among
# them) go to the server log only.
UNAVAILABLE_MESSAGE = "search is unavailable for the moment; try again shortly"
_FAILED_MESSAGE = "the search backend could not do this; try again later"


class ApiError(Exception):
    """An error to answer with; `code` is stable and machine-readable, `message` for people."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


_Decoded = TypeVar("_Decoded")


def decode_json(
    body: bytes, kind: type[_Decoded], *, code: str, what: str, hint: str = ""
) -> _Decoded:
    """A request body as `kind`: 400 `code` ("invalid WHAT: what msgspec found; HINT") when
    it does not fit, 400 `invalid_json` when it is no JSON at all."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as error:
        message = f"invalid {what}: {error}" + (f"; {hint}" if hint else "")
        raise ApiError(400, code, message) from None
    except msgspec.DecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = msgspec.json.encode(ErrorBody(ErrorDetail(code=code, message=message)))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def unavailable(message: str) -> ApiError:
    return ApiError(
        503, "elasticsearch_unavailable", message, {"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _watch_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WatchError)
    # The nearest mapped class: a new subclass answers as its parent until given its own.
    status, code = next(
        (_WATCH_ERRORS[kind] for kind in type(exc).__mro__ if kind in _WATCH_ERRORS),
        (400, "invalid_watch"),
    )
    return error_response(status, code, str(exc))


async def _invalid_customer_id(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidCustomerId)
    return error_response(400, "invalid_customer_id", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


def _elasticsearch_error(
    url: str, on_error: Callable[[], None], on_timeout: Callable[[str, str], None]
) -> object:
    async def handle(request: Request, exc: Exception) -> Response:
        on_error()
        if isinstance(exc, ConnectionTimeout):
            # Not refused but not answering: later requests need not wait for it too.
            on_timeout(route_path(request.scope), es.describe(exc, url))
        if es.is_unavailable(exc) or isinstance(exc, es.ElasticsearchProblem):
            logger.warning("elasticsearch unavailable: %s", es.describe(exc, url))
            error = unavailable(UNAVAILABLE_MESSAGE)
            return error_response(error.status, error.code, error.message, error.headers)
        if (
            isinstance(exc, elasticsearch.NotFoundError)
            and exc.error == "index_not_found_exception"
        ):
            return error_response(
                503,
                "not_set_up",
                "the indices do not exist yet: an admin must run `percolert setup`",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        logger.error("elasticsearch error: %s", es.describe(exc, url), exc_info=exc)
        return error_response(502, "elasticsearch_error", _FAILED_MESSAGE)

    return handle


async def _broker_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerUnavailable)
    logger.warning("broker unavailable on %s: %s", loggable_path(request.scope), exc)
    return error_response(
        503,
        "broker_unavailable",
        "busy for a moment; try again shortly",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    """A route reading the body found the client gone: nobody is left to answer, and it is
    no error of the server's. The response only gives the access log its status; the
    server drops it."""
    assert isinstance(exc, ClientDisconnect)
    if request.scope.get(BODY_TIMED_OUT):
        return Response(status_code=REQUEST_TIMEOUT)  # the server logged why
    logger.info(
        "client closed the request before its body arrived: %s %s",
        request.method,
        route_path(request.scope),
    )
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error(
        "unhandled error on %s %s", request.method, loggable_path(request.scope), exc_info=exc
    )
    # Answered by Starlette's outermost middleware, outside the one that adds these.
    return error_response(500, "internal", "internal server error", security_headers(request.scope))


def exception_handlers(
    elasticsearch_url: str,
    *,
    on_elasticsearch_error: Callable[[], None] = lambda: None,
    on_elasticsearch_timeout: Callable[[str, str], None] = lambda path, reason: None,
) -> dict[type[Exception] | int, object]:
    on_elasticsearch = _elasticsearch_error(
        elasticsearch_url, on_elasticsearch_error, on_elasticsearch_timeout
    )
    return {
        ApiError: _api_error,
        WatchError: _watch_error,
        InvalidCustomerId: _invalid_customer_id,
        HTTPException: _http_error,
        TransportError: on_elasticsearch,
        elasticsearch.ApiError: on_elasticsearch,
        es.ElasticsearchProblem: on_elasticsearch,
        BrokerUnavailable: _broker_unavailable,
        ClientDisconnect: _client_disconnect,
        Exception: _unexpected,
    }
