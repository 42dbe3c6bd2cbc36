"""The built-in tool prompt, for chat templates that do not render `tools` themselves.

Documented format (Hermes/Qwen style, the one the grammar enforces):

    system: <the system prompt>

            # Tools
            You may call one or more functions to assist with the user query.
            <tools>
            {"type": "function", "function": {...}}
            </tools>
            To call a function, reply with
            <tool_call>
            {"name": <function-name>, "arguments": <args-json-object>}
            </tool_call>

Earlier assistant tool calls are rendered back as those blocks, and tool results
as `tool` messages wrapped in `<tool_response>` tags, so the model sees the
round trip in the same shape it is asked to produce.
"""

from __future__ import annotations

import json
from typing import Any

from chatd.chat.toolcalls import CALL_CLOSE, CALL_OPEN, CALL_SEPARATOR


def tools_preamble(tools: list[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n"
        f'{CALL_OPEN}{{"name": <function-name>, "arguments": <args-json-object>}}{CALL_CLOSE}'
    )


def render_call(call: dict[str, Any]) -> str:
    """A call as the model would have written it (arguments already parsed by
    chatd.chat.messages when they were valid JSON)."""
    fn = call.get("function") or {}
    payload = json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments")},
                         ensure_ascii=False)
    return f"{CALL_OPEN}{payload}{CALL_CLOSE}"


def inline_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Fold tools, tool calls and tool results into plain messages."""
    out = [dict(m) for m in messages]
    preamble = tools_preamble(tools)
    if out and out[0]["role"] == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{preamble}".lstrip()
    else:
        out.insert(0, {"role": "system", "content": preamble})
    for message in out:
        calls = message.pop("tool_calls", None)
        if calls:
            blocks = CALL_SEPARATOR.join(render_call(c) for c in calls)
            text = message.get("content") or ""
            message["content"] = f"{text}{blocks}" if text else blocks
        if message["role"] == "tool":
            message["content"] = f"<tool_response>\n{message['content']}\n</tool_response>"
    return out
