"""Fuzz every operation of Kiln's live OpenAPI schema with a valid key: no 5xx, no response
that breaks the schema, no request that hangs. `KILN_FUZZ_EXAMPLES` bounds the examples per
operation (a few in CI; `make fuzz` runs many)."""

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from tests.harness import Kiln

EXAMPLES = int(os.environ.get("KILN_FUZZ_EXAMPLES", "5"))
REQUEST_TIMEOUT_S = 30  # every operation answers well within this; more counts as a hang
# Kiln validates more than the schema can say (one of `prompt` or `messages`, patterns of
# cursors…), so acceptance of schema-valid data is not checked; everything else is.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPERATIONS = [
    (method.upper(), path)
    for path, methods in create_app().openapi()["paths"].items()
    for method in methods
]


@pytest.fixture(scope="module")
def backend() -> str:
    """The schema and its validation are the same on both databases: SQLite suffices."""
    return "sqlite"


@pytest.fixture(scope="module")
def kiln_env() -> dict[str, str]:
    return {"KILN_LLM_PROVIDER": "template", "KILN_SYNC_TIMEOUT_S": "3"}


@pytest.fixture(scope="module")
def api_schema(kiln: Kiln) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{kiln.url}/openapi.json")


@pytest.fixture(scope="module")
def session(kiln: Kiln) -> Iterator[requests.Session]:
    with requests.Session() as authenticated:
        authenticated.headers["Authorization"] = f"Bearer {kiln.new_key('fuzz')}"
        yield authenticated


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[" ".join(op) for op in OPERATIONS])
def test_operation_keeps_its_contract(
    api_schema: schemathesis.BaseSchema, session: requests.Session, method: str, path: str
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def call(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(session=session, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

    call()
