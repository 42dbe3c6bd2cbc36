"""OpenAI messages -> the plain dicts chat templates expect (as HF transformers passes)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from chatd.chat.errors import ChatRequestError

_ROLE_ALIASES = {"developer": "system", "function": "tool"}
_MEDIA_PARTS = {"image_url": "image", "input_audio": "audio", "file": "file"}


@dataclass
class MediaSlots:
    """What a model with a projector reads (`kinds`), and the media parts found, in
    order; each sits in the flattened text as `marker`."""

    kinds: frozenset[str]
    marker: str
    parts: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (part, param)


def normalize_messages(messages: list[dict[str, Any]],
                       media: MediaSlots | None = None) -> list[dict[str, Any]]:
    """Flatten content parts, map roles, parse tool-call arguments for templates.

    A part the model cannot read is an error naming the part, never silently
    dropped: the user would otherwise get an answer to a different question.
    """
    out = []
    for i, message in enumerate(messages):
        role = message["role"]
        item: dict[str, Any] = {
            "role": _ROLE_ALIASES.get(role, role),
            "content": _flatten(message.get("content"), f"messages[{i}].content", media),
        }
        if message.get("name"):
            item["name"] = message["name"]
        if role == "function" and message.get("name"):
            item["tool_call_id"] = message["name"]
        if message.get("tool_call_id"):
            item["tool_call_id"] = message["tool_call_id"]
        if message.get("tool_calls"):
            item["tool_calls"] = [_tool_call(call) for call in message["tool_calls"]]
        if role == "assistant" and not item["content"] and message.get("refusal"):
            item["content"] = message["refusal"]
        out.append(item)
    return out


def _flatten(content: Any, param: str, media: MediaSlots | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text", ""))
        elif kind == "refusal":
            texts.append(part.get("refusal", ""))
        elif media is not None and _MEDIA_PARTS.get(kind) in media.kinds:
            media.parts.append((part, f"{param}[{j}]"))
            texts.append(media.marker)
        elif kind in _MEDIA_PARTS and media is not None:
            raise ChatRequestError(
                f"This model's projector cannot take {_MEDIA_PARTS[kind]} input "
                f"({param}[{j}] is a '{kind}' part); it reads "
                f"{', '.join(sorted(media.kinds | {'text'}))}.",
                param=f"{param}[{j}]",
                code="unsupported_content_type",
            )
        elif kind in _MEDIA_PARTS:
            raise ChatRequestError(
                f"This model reads text only and cannot take {_MEDIA_PARTS[kind]} input "
                f"({param}[{j}] is a '{kind}' part). Send the content as text.",
                param=f"{param}[{j}]",
                code="unsupported_content_type",
            )
        else:
            raise ChatRequestError(f"Unknown content part type '{kind}'.",
                                   param=f"{param}[{j}].type")
    return "\n".join(texts)


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # unparsable: templates render the string
            function["arguments"] = json.loads(arguments)
    return {"id": call.get("id"), "type": call.get("type", "function"), "function": function}
