"""Tool grammars keep each parameter schema's own root; refused schemas are named."""

from __future__ import annotations

from typing import Any

import llguidance as llg
import pytest

from chatd.api.protocol import ChatCompletionRequest
from chatd.chat.errors import ChatRequestError
from chatd.chat.structured import build_output_spec, explain_grammar_error

ADDRESS = {"type": "object", "properties": {"street": {"type": "string"}},
           "required": ["street"]}
NESTED = {"$defs": {"Address": ADDRESS}, "type": "object",
          "properties": {"home": {"$ref": "#/$defs/Address"},
                         "work": {"$ref": "#/$defs/Address"}},
          "required": ["home"]}
DRAFT7 = {"definitions": {"Address": ADDRESS}, "type": "object",
          "properties": {"home": {"$ref": "#/definitions/Address"}}}
TREE = {"type": "object", "properties": {"value": {"type": "integer"},
                                         "children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["value", "children"]}


def _request(*params: dict[str, Any], **kw: Any) -> ChatCompletionRequest:
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": p}}
             for i, p in enumerate(params)]
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, **kw})


def _compiles(grammar: str | None) -> bool:
    assert grammar is not None
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    return not is_error and not messages


@pytest.mark.parametrize("choice", ["auto", "required",
                                    {"type": "function", "function": {"name": "f1"}}])
def test_references_resolve_against_each_tools_parameters(choice: Any) -> None:
    spec = build_output_spec(_request(NESTED, DRAFT7, TREE, tool_choice=choice))
    assert _compiles(spec.grammar)


def test_response_format_beside_tools_keeps_its_root_too() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": TREE}}
    spec = build_output_spec(_request(NESTED, response_format=fmt))
    assert _compiles(spec.grammar)


def test_unenforceable_tool_schema_is_named_with_its_keyword() -> None:
    bad = {"type": "object", "properties": {"s": {"type": "string", "if": {"minLength": 2},
                                                  "then": {"maxLength": 3}}}}
    req = _request(NESTED, bad)
    err = explain_grammar_error(req, "whatever the combined grammar said")
    assert isinstance(err, ChatRequestError)
    assert err.param == "tools[1].function.parameters"
    assert "'f1'" in err.message and '"if"' in err.message
    assert "remove" not in err.message.lower() or "named here" in err.message


def test_dangling_reference_is_explained() -> None:
    req = _request({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}})
    err = explain_grammar_error(req, "x")
    assert err.param == "tools[0].function.parameters"
    assert "/$defs/Missing" in err.message and "$ref" in err.message
