"""Schemathesis against the running server, bounded so `make test` stays quick.

Two contracts: the server's own OpenAPI document (which must describe every field of
the seed contract's request, checked first) and the seed contract itself, a copy of
which lives beside this file because tests must not read outside the repository.
Checks: no 5xx, no response outside the documented statuses, content types, headers
and schemas, and no hang (every call has a timeout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import MODEL, Server

pytestmark = pytest.mark.timeout(600)

SEED = Path(__file__).with_name("chat-completions.seed.yaml")
CALL_TIMEOUT_S = 60
FUZZ = settings(deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


_JSON_TYPE = {str: "string", bool: "boolean", int: "integer", float: "number",
              type(None): "null", list: "array"}


def _deref(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _types(doc: dict[str, Any], schema: Any) -> set[str]:
    """Every JSON type a (possibly composed) schema admits."""
    schema = _deref(doc, schema)
    if not isinstance(schema, dict):
        return set()
    found: set[str] = set()
    kind = schema.get("type")
    if isinstance(kind, str):
        found.add(kind)
    elif isinstance(kind, list):
        found.update(kind)
    if "const" in schema or "enum" in schema:
        found.update(_JSON_TYPE.get(type(v), "object") for v in
                     schema.get("enum", [schema.get("const")]))
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found |= _types(doc, sub)
    if "integer" in found:
        found.add("number")
    return found


def test_openapi_document_covers_the_seed_request(fuzz_server: Server) -> None:
    doc = httpx.get(fuzz_server.url + "/openapi.json").json()
    seed = yaml.safe_load(SEED.read_text())
    ours = _deref(doc, doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
                  ["application/json"]["schema"])
    theirs = seed["components"]["schemas"]["CreateChatCompletionRequest"]
    assert set(theirs["required"]) <= set(ours.get("required", []))
    for name, prop in theirs["properties"].items():
        assert name in ours["properties"], f"seed field {name!r} missing from /openapi.json"
        seed_types = _types(seed, prop) - {"null"}
        our_types = _types(doc, ours["properties"][name])
        assert seed_types <= our_types, (name, seed_types, our_types)
    responses = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "429", "503"} <= set(responses)
    assert "422" not in responses


@pytest.fixture(scope="session")
def server_schema(fuzz_server: Server) -> Any:
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


@pytest.fixture(scope="session")
def seed_schema(fuzz_server: Server) -> Any:
    schema = schemathesis.openapi.from_path(SEED)
    schema.config.update(base_url=fuzz_server.url + "/v1")
    return schema


def _aim_at_the_model(case: Any) -> None:
    """Most generated model names would only ever reach the 404; use the real one. And
    without a completion limit a chat request may fill the context: cap it, so each call
    is quick even on a busy machine (explicit limits are left as generated; a text
    completion's default is 16 tokens, and it knows no max_completion_tokens)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        body["model"] = MODEL
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None \
                and "prompt" not in body:
            body["max_completion_tokens"] = 8


def _fuzz(operation: Any, mode: GenerationMode, examples: int, checks: list[Any]) -> None:
    """Run ``examples`` generated cases of one operation through ``checks``.

    (Driven through hypothesis directly: schemathesis' lazy pytest loader does not
    work with this pytest version.)
    """

    @settings(FUZZ, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _aim_at_the_model(case)
        case.call_and_validate(timeout=CALL_TIMEOUT_S, checks=checks)

    run()


ALL_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]


@pytest.mark.parametrize(("path", "method", "mode", "examples"), [
    ("/v1/chat/completions", "POST", GenerationMode.POSITIVE, 60),
    ("/v1/chat/completions", "POST", GenerationMode.NEGATIVE, 40),
    ("/v1/completions", "POST", GenerationMode.POSITIVE, 30),
    ("/v1/completions", "POST", GenerationMode.NEGATIVE, 20),
    ("/v1/models", "GET", GenerationMode.POSITIVE, 3),
    ("/v1/models/{model_id}", "GET", GenerationMode.POSITIVE, 10),
    ("/health", "GET", GenerationMode.POSITIVE, 3),
])
def test_server_against_its_own_document(server_schema: Any, path: str, method: str,
                                         mode: GenerationMode, examples: int) -> None:
    _fuzz(server_schema[path][method], mode, examples, ALL_CHECKS)


@pytest.mark.parametrize(("mode", "examples"), [(GenerationMode.POSITIVE, 40),
                                                (GenerationMode.NEGATIVE, 25)])
def test_server_against_the_seed_contract(seed_schema: Any, mode: GenerationMode,
                                          examples: int) -> None:
    """The seed's response schemas are narrower than OpenAI's (no null content), so
    only the server-error check applies here; conformance is checked above."""
    _fuzz(seed_schema["/chat/completions"]["POST"], mode, examples, [not_a_server_error])
