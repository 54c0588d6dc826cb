"""Schemathesis against the live API's own OpenAPI document: no 500s, only documented statuses and types."""

from __future__ import annotations

import os

import pytest
import schemathesis
from http_server import LiveServer
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# `make stress`: 11 operations x 25 examples, a few hundred generated requests; `make test` runs a sample.
STRESS = bool(os.environ.get("PERSONAE_STRESS"))
EXAMPLES = 25 if STRESS else 4
CASES = []


@pytest.fixture
def api_schema(make_engine, tiny_base):
    # A small context keeps every generated max_tokens short on the tiny model.
    engine = make_engine(tiny_base, temperature=0, max_new_tokens=4, context_tokens=160)
    live = LiveServer(engine)
    try:
        schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
        schema.config.base_url = live.url
        # The coverage phase (every boundary of every field) only under `make stress`.
        schema.config.phases.coverage.enabled = STRESS
        yield schema
    finally:
        live.close()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_own_openapi_promises(case):
    CASES.append(case.operation.label)
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance], timeout=60)


def test_report_how_many_cases_ran():
    """Runs after the cases above (file order): prints the count `make stress` reports."""
    print(f"schemathesis: {len(CASES)} generated requests over {len(set(CASES))} operations, none failed")
    assert len(set(CASES)) >= 10 or not CASES
