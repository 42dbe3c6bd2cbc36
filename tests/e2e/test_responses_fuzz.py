"""Schemathesis over the Responses routes, against the server's own OpenAPI document:
no 5xx, only documented statuses, content types and response schemas, no hang.

(Driven through hypothesis directly, as tests/e2e_ops/test_fuzz.py does.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import ServerProcess, running_server

pytestmark = pytest.mark.timeout(600)

MODEL = "SmolLM2-135M-Instruct"
FUZZ = settings(deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    with running_server(["--ctx-size", "256", "--max-sequences", "4"]) as server:
        yield server


@pytest.fixture(scope="module")
def schema(fuzz_server: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


@pytest.fixture(scope="module")
def stored_ids(fuzz_server: ServerProcess) -> list[str]:
    """Real responses (foreground, background, with tools and several input items), so
    the id routes are fuzzed on ids that exist, not only on 404s."""
    bodies: list[dict[str, Any]] = [
        {"input": [{"role": "user", "content": f"m{i}"} for i in range(3)]},
        {"input": "Hi", "background": True},
        {"input": "Weather?", "tool_choice": "required", "tools": [
            {"type": "function", "name": "w", "parameters": {"type": "object"}}]},
    ]
    ids = []
    for body in bodies * 3:
        r = httpx.post(fuzz_server.url + "/v1/responses", timeout=60,
                       json={"model": MODEL, "max_output_tokens": 16, **body})
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    return ids


def _aim(case: Any, ids: list[str], n: int) -> None:
    """The real model name (else nearly every case is a 404), an input, a short output;
    on the id routes, an id that exists in two cases out of three (DELETE has ids of
    its own, so that the other routes still find theirs)."""
    params = case.path_parameters
    if params and "response_id" in params and n % 3:
        pool = ids[6:] if case.method.upper() == "DELETE" else ids[:6]
        params["response_id"] = pool[n % len(pool)]
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        body["model"] = MODEL
        if body.get("max_output_tokens") is None:
            body["max_output_tokens"] = 16
        if body.get("input") is None and body.get("previous_response_id") is None:
            body["input"] = "Hi"  # else nearly every case is "missing input"


@pytest.mark.parametrize(("path", "method", "mode", "examples"), [
    ("/v1/responses", "POST", GenerationMode.POSITIVE, 30),
    ("/v1/responses", "POST", GenerationMode.NEGATIVE, 20),
    ("/v1/responses/{response_id}", "GET", GenerationMode.POSITIVE, 10),
    ("/v1/responses/{response_id}", "DELETE", GenerationMode.POSITIVE, 5),
    ("/v1/responses/{response_id}/cancel", "POST", GenerationMode.POSITIVE, 5),
    ("/v1/responses/{response_id}/input_items", "GET", GenerationMode.POSITIVE, 10),
    ("/v1/responses/{response_id}/input_items", "GET", GenerationMode.NEGATIVE, 10),
])
def test_responses_routes_against_the_document(schema: Any, stored_ids: list[str],
                                               path: str, method: str,
                                               mode: GenerationMode, examples: int) -> None:
    operation = schema[path][method]
    statuses: list[int] = []

    @settings(FUZZ, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _aim(case, stored_ids, len(statuses))
        statuses.append(case.call_and_validate(timeout=60, checks=CHECKS).status_code)

    run()
    assert statuses
    if mode == GenerationMode.POSITIVE:
        assert 200 in statuses  # the run got past the validators (the model, real ids)
