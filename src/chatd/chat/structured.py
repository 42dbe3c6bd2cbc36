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
from chatd.chat.schema import enforced_schema
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


def _styled(schema: dict[str, Any]) -> dict[str, Any]:
    return {**enforced_schema(schema), "x-guidance": {**_JSON_STYLE,
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


def _call_rule(tool: Any) -> str:
    """One call of `tool` as Lark: the wrapper is literal text and the arguments are a
    `%json` of their own, so the parameter schema keeps its own root (`#`,
    `#/$defs/...`, `$id`s resolve against the parameters, as the client wrote them)."""
    fn = tool.function
    params = fn.parameters if fn.parameters is not None else {"type": "object",
                                                             "properties": {}}
    head = CALL_OPEN + '{"name": ' + json.dumps(fn.name) + ', "arguments": '
    return f"{_lark_str(head)} {_lark_json(params)} {_lark_str('}' + CALL_CLOSE)}"


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
        # A named function is called exactly once, as OpenAI does.
        parallel = req.parallel_tool_calls is not False and mode != "named"
        calls = "call (SEP call)*" if parallel else "call"
        body = {"auto": f"{content} | TEXT? calls" if not schema else f"{content} | calls",
                "required": "calls", "named": "calls"}[mode]
        start = (f"start: {body}\n"
                 f"calls: {calls}\n"
                 f"call: {' | '.join(_call_rule(t) for t in callable_tools)}\n"
                 f"SEP: {_lark_str(CALL_SEPARATOR)}")
    lark = f"{start}\nTEXT: {_TEXT_WITHOUT_CALLS}\n"
    return OutputSpec(llg.LLMatcher.grammar_from_lark(lark), tools_active=mode != "none",
                      json_mode=schema is not None)


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """What llguidance says about `schema` on its own, or None when it compiles."""
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(schema_grammar(schema))
    return "; ".join(messages) or "invalid schema" if is_error or messages else None


def explain_grammar_error(req: Any, message: str) -> ChatRequestError:
    """Name the schema llguidance refused (which tool's parameters, or response_format)
    and what in it failed."""
    candidates = [(f"tools[{i}].function.parameters",
                   f"The parameters schema of tool '{t.function.name}' (tools[{i}])",
                   t.function.parameters) for i, t in enumerate(req.tools or [])]
    candidates.append(("response_format.json_schema.schema", "The response_format schema",
                       response_schema(req.response_format)))
    param, subject = "response_format", "The requested output format"
    for where, what, schema in candidates:
        problem = _schema_problem(schema) if schema is not None else None
        if problem is not None:
            param, subject, message = where, what, problem
            break
    return ChatRequestError(f"{subject} cannot be enforced by the decoder: {message}. "
                            f"{_advice(message)}", param=param, code="invalid_schema")


def _advice(message: str) -> str:
    if "does not exist" in message:
        return ("A $ref must point inside the same schema: '#' is the schema's own root, "
                "'#/$defs/Name' one of its definitions.")
    if "Unimplemented keys" in message or "Unknown format" in message:
        return ("chatd enforces every keyword it accepts; express the constraint without "
                "the keywords or formats named here.")
    return "Check the schema against JSON Schema (draft 2020-12)."
