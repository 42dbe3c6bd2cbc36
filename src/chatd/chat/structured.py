"""`response_format` and `tools` -> one llguidance grammar the decoder enforces.

JSON validity is a property of the decoder, not a hope: the engine masks every
token the grammar forbids. Tool calls use the Hermes format the built-in tool
prompt teaches (`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`):

- `tool_choice: none`  -> free text that cannot contain `<tool_call>`;
- `auto`               -> free text, or text then calls; once `<tool_call>` starts,
                          the call must name a declared tool and match its schema;
- `required` / named   -> calls only, constrained from the first token.
`parallel_tool_calls: false` allows exactly one call; a named function is called once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llguidance as llg

from chatd.chat.errors import ChatRequestError
from chatd.chat.toolcalls import CALL_CLOSE, CALL_OPEN, CALL_SEPARATOR

# Compact, deterministic JSON: a small model at temperature 1 can otherwise wander
# into endless whitespace inside an object.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_TEXT_WITHOUT_CALLS = r"/(?s:.+)/ & ~/(?s:.*<tool_call>.*)/"


@dataclass(frozen=True)
class OutputSpec:
    """What the chat layer asks of the decoder for one request."""

    grammar: str | None       # None = unconstrained text
    tools_active: bool        # parse tool calls out of the output
    json_mode: bool


# llguidance's `date` format accepts any day 01-31 in any month (2023-02-29, 2023-04-31),
# which a validator rejects. This pattern admits exactly the real calendar dates of
# years 0001-9999 (leap years included), as `datetime.date.fromisoformat` does.
_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE_PATTERN = (
    rf"^(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)$"
)


def _exact_formats(node: Any) -> Any:
    """The schema with `format: date` replaced by the exact calendar pattern."""
    if isinstance(node, list):
        return [_exact_formats(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _exact_formats(value) for key, value in node.items()}
    if out.get("format") == "date" and "pattern" not in out:
        del out["format"]
        out["pattern"] = _DATE_PATTERN
    return out


def _styled(schema: dict[str, Any]) -> dict[str, Any]:
    return {**_exact_formats(schema), "x-guidance": {**_JSON_STYLE,
                                                     **schema.get("x-guidance", {})}}


def schema_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar that holds output to `schema`, in chatd's JSON style."""
    return llg.LLMatcher.grammar_from_json_schema(_styled(schema))


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(_styled(schema))


def _lark_str(text: str) -> str:
    return json.dumps(text)


def response_schema(fmt: Any) -> dict[str, Any] | None:
    """The JSON schema `response_format` asks for, or None for plain text."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    schema = fmt.json_schema.schema_
    if schema is None:
        raise ChatRequestError("response_format.json_schema.schema is required: pass the JSON "
                               "Schema the output must follow.",
                               param="response_format.json_schema.schema")
    if not isinstance(schema, dict):
        raise ChatRequestError("response_format.json_schema.schema must be a JSON object.",
                               param="response_format.json_schema.schema")
    return schema


def _call_schema(tool: Any) -> dict[str, Any]:
    fn = tool.function
    params = fn.parameters if fn.parameters is not None else {"type": "object",
                                                             "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": fn.name}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def build_output_spec(req: Any) -> OutputSpec:
    """Validate `response_format`/`tools`/`tool_choice` and build the grammar."""
    schema = response_schema(req.response_format)
    tools = list(req.tools or [])
    for i, tool in enumerate(tools):
        if tool.type != "function":
            raise ChatRequestError(f"tools[{i}] has type '{tool.type}'; this server supports "
                                   "function tools only.", param=f"tools[{i}].type",
                                   code="unsupported_parameter")
    choice = req.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise ChatRequestError("tool_choice was set but no tools were given.",
                                   param="tool_choice")
        grammar = schema_grammar(schema) if schema else None
        return OutputSpec(grammar, tools_active=False, json_mode=schema is not None)

    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise ChatRequestError("tools contains two functions with the same name.",
                               param="tools")
    mode = "auto" if choice is None else choice if isinstance(choice, str) else choice.type
    if mode == "function":
        wanted = choice.function.name
        if wanted not in names:
            raise ChatRequestError(f"tool_choice names function '{wanted}', which is not in "
                                   f"tools ({', '.join(names)}).",
                                   param="tool_choice.function.name")
        callable_tools = [t for t in tools if t.function.name == wanted]
        mode = "named"
    elif mode == "allowed_tools":
        allowed = {t.get("function", {}).get("name") for t in choice.allowed_tools.tools}
        callable_tools = [t for t in tools if t.function.name in allowed]
        if not callable_tools:
            raise ChatRequestError("tool_choice.allowed_tools names none of the given tools.",
                                   param="tool_choice.allowed_tools.tools")
        mode = choice.allowed_tools.mode
    elif mode in ("none", "auto", "required"):
        callable_tools = tools
    else:
        raise ChatRequestError(f"tool_choice type '{mode}' is not supported.",
                               param="tool_choice", code="unsupported_parameter")

    content = _lark_json(schema) if schema else "TEXT"
    if mode == "none":
        start = f"start: {content}" if schema else "start: TEXT?"
    else:
        one = {"anyOf": [_call_schema(t) for t in callable_tools]}
        # A named function is called exactly once, as OpenAI does.
        parallel = req.parallel_tool_calls is not False and mode != "named"
        calls = "call (SEP call)*" if parallel else "call"
        body = {"auto": f"{content} | TEXT? calls" if not schema else f"{content} | calls",
                "required": "calls", "named": "calls"}[mode]
        start = (f"start: {body}\n"
                 f"calls: {calls}\n"
                 f"call: {_lark_str(CALL_OPEN)} {_lark_json(one)} {_lark_str(CALL_CLOSE)}\n"
                 f"SEP: {_lark_str(CALL_SEPARATOR)}")
    lark = f"{start}\nTEXT: {_TEXT_WITHOUT_CALLS}\n"
    return OutputSpec(llg.LLMatcher.grammar_from_lark(lark), tools_active=mode != "none",
                      json_mode=schema is not None)


def explain_grammar_error(req: Any, message: str) -> ChatRequestError:
    """Name the part of the request that holds the schema llguidance refused."""
    param = "response_format.json_schema.schema"
    if req.tools:
        param = "tools"
        for i, tool in enumerate(req.tools):
            params = tool.function.parameters
            if params is None:
                continue
            grammar = schema_grammar(params)
            if llg.LLMatcher.validate_grammar_with_warnings(grammar)[1]:
                param = f"tools[{i}].function.parameters"
                break
    return ChatRequestError(
        f"The JSON schema cannot be enforced: {message}. Remove or replace the keywords "
        "named here.", param=param, code="invalid_schema")
