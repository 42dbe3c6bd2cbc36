"""A Responses request -> the chat request the chat layer already serves.

Items become messages (``function_call`` -> an assistant tool call,
``function_call_output`` -> a tool message), flat function tools get Chat
Completions' ``function`` wrapper, ``text.format`` becomes ``response_format`` (so it
is enforced by the same grammar), and ``max_output_tokens`` the completion limit.
Everything chatd does not serve (built-in tools, reasoning, ``conversation``,
``truncation: auto`` ...) is a 400 naming it: never silently ignored.
"""

from __future__ import annotations

import secrets
from typing import Any

import pydantic

from chatd.api.errors import APIError
from chatd.api.protocol import ChatCompletionRequest
from chatd.api.protocol_responses import CreateResponseRequest

_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
LOGPROBS = "message.output_text.logprobs"
_INCLUDABLE = frozenset({LOGPROBS})
"""`include` values served: only logprobs (no reasoning, no built-in tools)."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _unsupported(param: str, message: str) -> APIError:
    return APIError.unsupported_parameter(param, message)


def check_supported(body: CreateResponseRequest) -> None:
    """A 400 naming the first parameter chatd cannot honour."""
    if body.reasoning is not None and any(
            v not in (None, "none") for v in (body.reasoning.effort, body.reasoning.summary,
                                              body.reasoning.generate_summary)):
        raise _unsupported("reasoning", "reasoning is not supported: this model has no "
                                        "reasoning mode. Send the request without "
                                        "'reasoning'.")
    if body.conversation is not None:
        raise _unsupported("conversation", "conversations are not supported by this server; "
                                           "use previous_response_id to continue a response.")
    if body.prompt is not None:
        raise _unsupported("prompt", "prompt templates are not supported by this server; "
                                     "send 'input' and 'instructions'.")
    if body.context_management is not None:
        raise _unsupported("context_management", "context_management (compaction) is not "
                                                 "supported by this server.")
    if body.moderation is not None:
        raise _unsupported("moderation", "moderation is not supported by this server.")
    if body.prompt_cache_retention == "24h":
        raise _unsupported("prompt_cache_retention", "prompt_cache_retention '24h' is not "
                                                     "supported: this server's prompt cache "
                                                     "is in memory ('in_memory').")
    if body.prompt_cache_options:
        raise _unsupported("prompt_cache_options", "prompt_cache_options are not supported "
                                                   "by this server (its prefix cache is "
                                                   "automatic).")
    if body.truncation == "auto":
        raise _unsupported("truncation", "truncation 'auto' is not supported: a too-long "
                                         "input is a 400. Use truncation 'disabled'.")
    for i, value in enumerate(body.include or []):
        if value not in _INCLUDABLE:
            raise _unsupported(f"include[{i}]", f"include value '{value}' is not supported "
                                                "by this server.")
    if body.text is not None and body.text.verbosity not in (None, "medium"):
        raise _unsupported("text.verbosity", "text.verbosity other than 'medium' is not "
                                             "supported by this server.")


# ------------------------------------------------------------------------------ items


def _bad(param: str, message: str) -> APIError:
    return APIError.bad_request(message, param=param, code="invalid_value")


def _text_of(content: Any, param: str, *, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """A message's content as stored parts (``input_text`` / ``output_text``)."""
    if isinstance(content, str):
        return [{"type": kinds[0], "text": content}]
    if not isinstance(content, list):
        raise _bad(param, f"Invalid '{param}': expected a string or an array of content "
                          "parts.")
    parts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text", f"Missing or invalid '{where}.text': expected "
                                            "a string.")
            parts.append({"type": kind, "text": part["text"]} if kind == "input_text" else
                         {"type": kind, "text": part["text"], "annotations": [],
                          "logprobs": []})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "refusal", "refusal": part["refusal"]})
        elif kind in ("input_image", "input_file", "input_audio"):
            raise _unsupported(f"{where}.type", f"'{kind}' content is not supported by "
                                                "this server's Responses API; send text.")
        else:
            raise _bad(f"{where}.type", f"Invalid '{where}.type': '{kind}' is not a content "
                                        "part type this server accepts (input_text, "
                                        "output_text, refusal).")
    return parts


def _item_id(item: dict[str, Any], prefix: str) -> str:
    given = item.get("id")
    return given if isinstance(given, str) and given else new_id(prefix)


def _stored_item(item: Any, i: int) -> dict[str, Any]:
    """One input item, checked, in its stored form (with an id and a status)."""
    where = f"input[{i}]"
    if not isinstance(item, dict):
        raise _bad(where, f"Invalid '{where}': expected an object.")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in _MESSAGE_ROLES:
            raise _bad(f"{where}.role", f"Invalid '{where}.role': expected one of "
                                        f"{', '.join(_MESSAGE_ROLES)}.")
        kinds = ("output_text",) if role == "assistant" else ("input_text",)
        return {"id": _item_id(item, "msg"), "type": "message", "role": role,
                "content": _text_of(item.get("content"), f"{where}.content", kinds=kinds),
                "status": "completed"}
    if kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise _bad(f"{where}.{key}", f"Missing or invalid '{where}.{key}': expected "
                                             "a string.")
        return {"id": _item_id(item, "fc"), "type": "function_call",
                "call_id": item["call_id"], "name": item["name"],
                "arguments": item["arguments"], "status": "completed"}
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str) or not item["call_id"]:
            raise _bad(f"{where}.call_id", f"Missing or invalid '{where}.call_id': expected "
                                           "a string.")
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in _text_of(
                output, f"{where}.output", kinds=("input_text",)))
        if not isinstance(output, str):
            raise _bad(f"{where}.output", f"Missing or invalid '{where}.output': expected a "
                                          "string.")
        return {"id": _item_id(item, "fco"), "type": "function_call_output",
                "call_id": item["call_id"], "output": output, "status": "completed"}
    raise _unsupported(f"{where}.type", f"Input items of type '{kind}' are not supported by "
                                        "this server (message, function_call and "
                                        "function_call_output are).")


def input_items(value: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The request's ``input`` as stored items; a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    return [_stored_item(item, i) for i, item in enumerate(value)]


def to_messages(items: list[dict[str, Any]], instructions: str | None
                ) -> list[dict[str, Any]]:
    """Stored items (earlier turns, then this input) -> chat messages. Consecutive
    function calls are one assistant message with several tool calls."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "".join(p.get("text") or p.get("refusal") or "" for p in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": item["output"]})
    return messages


# ------------------------------------------------------------------ tools and format


def response_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Function tools as the response echoes them; any other type is a 400."""
    out = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _unsupported(f"tools[{i}].type", f"Tool type '{kind}' is not supported by "
                                                   "this server: it serves function tools "
                                                   "only (no built-in tools such as "
                                                   "web_search, file_search or computer use).")
        name = tool.get("name")
        if not isinstance(name, str):
            raise _bad(f"tools[{i}].name", f"Missing or invalid 'tools[{i}].name'.")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _bad(f"tools[{i}].parameters", f"Invalid 'tools[{i}].parameters': expected "
                                                 "an object.")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad(f"tools[{i}].description", f"Invalid 'tools[{i}].description'.")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _bad(f"tools[{i}].strict", f"Invalid 'tools[{i}].strict'.")
        # Calls are held to the schema by the decoder's grammar: strict in effect.
        out.append({"type": "function", "name": name, "description": description,
                    "parameters": parameters, "strict": True if strict is None else strict})
    return out


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or isinstance(choice, str):
        if choice not in (None, "auto", "none", "required"):
            raise _bad("tool_choice", "Invalid 'tool_choice': expected 'auto', 'none', "
                                      "'required' or an object.")
        return choice
    kind = choice.get("type")
    if kind == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if kind == "allowed_tools":
        tools = choice.get("tools")
        if not isinstance(tools, list):
            raise _bad("tool_choice.tools", "Invalid 'tool_choice.tools': expected an array.")
        return {"type": "allowed_tools", "allowed_tools": {
            "mode": choice.get("mode"),
            "tools": [{"type": "function", "function": {"name": t.get("name")}}
                      for t in tools if isinstance(t, dict)]}}
    raise _unsupported("tool_choice", f"tool_choice type '{kind}' is not supported by this "
                                      "server (function tools only).")


def _response_format(body: CreateResponseRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {
        "name": fmt.name, "schema": fmt.schema_, "description": fmt.description,
        "strict": fmt.strict}}


def wants_logprobs(body: CreateResponseRequest) -> bool:
    """``include: ["message.output_text.logprobs"]``, or ``top_logprobs`` set."""
    return LOGPROBS in (body.include or []) or body.top_logprobs is not None


def chat_request(body: CreateResponseRequest, messages: list[dict[str, Any]],
                 tools: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request this response runs as (validated by the chat model itself)."""
    data: dict[str, Any] = {
        "model": body.model, "messages": messages, "temperature": body.temperature,
        "top_p": body.top_p, "seed": body.seed,
        "max_completion_tokens": body.max_output_tokens, "stream": bool(body.stream),
        "tool_choice": _chat_tool_choice(body.tool_choice) if tools or body.tool_choice
        not in (None, "auto", "none") else None,
        "parallel_tool_calls": body.parallel_tool_calls if tools else None,
        "response_format": _response_format(body), "user": body.user,
        "logprobs": True if wants_logprobs(body) else None,
        "top_logprobs": body.top_logprobs if wants_logprobs(body) else None,
        "prompt_cache_key": body.prompt_cache_key,
    }
    if tools:
        data["tools"] = [{"type": "function", "function": {
            k: v for k, v in (("name", t["name"]), ("description", t["description"]),
                              ("parameters", t["parameters"]), ("strict", t["strict"]))
            if v is not None}} for t in tools]
    try:
        return ChatCompletionRequest.model_validate(
            {k: v for k, v in data.items() if v is not None})
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise APIError.bad_request(f"Invalid request ({where}): {first['msg']}",
                                   code="invalid_value") from exc
