"""The HTTP API under generated input (schemathesis, from the OpenAPI document built from the
msgspec structs): never a 5xx, always the documented status codes, content types and
shapes, and every error in the one error shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from percolert.core.settings import Settings
from tests.servers import run_server


@pytest.fixture(scope="module")
def fuzz_server(catalog_settings: Settings) -> Iterator[str]:
    with run_server(catalog_settings) as url:
        yield url


def error_shape(ctx: Any, response: Any, case: Case[Any]) -> bool | None:
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        assert isinstance(body["error"]["code"], str)
        assert body["error"]["message"]
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_shape,
]


def test_api_holds_under_generated_input(fuzz_server: str) -> None:
    # Driven by hand rather than by schemathesis' pytest plugin, whose lazy fixture loading
    # does not work with this pytest; the strategies and checks are schemathesis' own.
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 15
    negative_runs = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            def exercise(case: Case[Any]) -> None:
                case.call_and_validate(base_url=fuzz_server, checks=CHECKS)

            try:
                exercise()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid input to generate.
                assert mode is GenerationMode.NEGATIVE
                continue
            if mode is GenerationMode.NEGATIVE:
                negative_runs.append(operation.label)
    assert {
        "GET /api/search",
        "POST /api/watches",
        "PATCH /api/watches/{watch_id}",
    } <= set(negative_runs)


def test_openapi_document_is_served(fuzz_server: str) -> None:
    document = httpx.get(f"{fuzz_server}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    assert "WatchSpec" in document["components"]["schemas"]
    spec = document["components"]["schemas"]["WatchSpec"]
    assert spec["properties"]["terms"]["maxLength"] == 100
    update = document["components"]["schemas"]["WatchUpdate"]
    [notify] = [kind for kind in update["properties"]["notify"]["anyOf"] if "enum" in kind]
    assert sorted(notify["enum"]) == ["both", "products", "searches"]
    assert "patch" in document["paths"]["/api/watches/{watch_id}"]
