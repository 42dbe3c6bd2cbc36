"""chatd's Responses wire shapes against OpenAI's published spec (an extract of it,
copied beside this file: `responses.openai.yaml`, see its header for the source).

Each object a client receives is validated with JSON Schema against the spec's own
component: the Response (created, retrieved, cancelled), every stream event (by its
`type`, as a member of ResponseStreamEvent), and the input_items page.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .conftest import ServerProcess, running_server

pytestmark = pytest.mark.timeout(300)

SPEC = Path(__file__).with_name("responses.openai.yaml")
MODEL = "SmolLM2-135M-Instruct"
TOOL = {"type": "function", "name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` (kept upstream beside 3.1 schemas) as JSON Schema."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) is True:
            kind = node.get("type")
            if isinstance(kind, str):
                node["type"] = [kind, "null"]
            elif "type" not in node:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return _nullable(yaml.safe_load(SPEC.read_text()))


def _validate(spec: dict[str, Any], component: str, instance: Any) -> None:
    registry = Registry().with_resource("urn:spec", Resource(spec, specification=DRAFT202012))
    schema = {"$ref": f"urn:spec#/components/schemas/{component}"}
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(instance), key=lambda e: len(e.path))
    assert not errors, f"{component}: " + "; ".join(
        f"{list(e.path)}: {e.message[:300]}" for e in errors[:5])


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(["--ctx-size", "1024"]) as s:
        yield s


def _post(server: ServerProcess, **body: Any) -> httpx.Response:
    r = httpx.post(server.url + "/v1/responses", timeout=120,
                   json={"model": MODEL, "max_output_tokens": 16, **body})
    assert r.status_code == 200, r.text
    return r


def _events(text: str) -> list[dict[str, Any]]:
    import json
    return [json.loads(frame.split("\n")[1].removeprefix("data: "))
            for frame in text.split("\n\n") if frame]


@pytest.mark.parametrize("body", [
    {"input": "Say hello.", "instructions": "Be brief.", "metadata": {"k": "v"}},
    {"input": "Weather in Paris?", "tools": [TOOL], "tool_choice": "required",
     "max_output_tokens": 64},
    {"input": "Hi", "include": ["message.output_text.logprobs"], "top_logprobs": 2},
    {"input": "A person as JSON.", "max_output_tokens": 64, "text": {"format": {
        "type": "json_schema", "name": "p", "schema": {"type": "object"}}}},
])
def test_responses_and_events_match_the_spec(spec: dict[str, Any], server: ServerProcess,
                                            body: dict[str, Any]) -> None:
    response = _post(server, **body).json()
    _validate(spec, "Response", response)
    got = httpx.get(f"{server.url}/v1/responses/{response['id']}", timeout=30).json()
    _validate(spec, "Response", got)
    items = httpx.get(f"{server.url}/v1/responses/{response['id']}/input_items",
                      timeout=30).json()
    _validate(spec, "ResponseItemList", items)
    events = _events(_post(server, stream=True, **body).text)
    for event in events:
        _validate(spec, "ResponseStreamEvent", event)


def test_background_and_cancel_match_the_spec(spec: dict[str, Any],
                                              server: ServerProcess) -> None:
    queued = _post(server, input="Write a long story.", background=True,
                   max_output_tokens=900).json()
    _validate(spec, "Response", queued)
    cancelled = httpx.post(f"{server.url}/v1/responses/{queued['id']}/cancel",
                           timeout=60).json()
    assert cancelled["status"] in ("cancelled", "completed", "incomplete")
    _validate(spec, "Response", cancelled)
    events = _events(_post(server, input="Hi", background=True, stream=True).text)
    for event in events:
        _validate(spec, "ResponseStreamEvent", event)
