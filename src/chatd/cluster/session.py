"""The session key a request is routed by, so a chat's turns meet their prefix cache.

OpenAI's own `prompt_cache_key` first (clients already send it for exactly this), then
an `x-session-id` header, then a hash of the conversation's opening: every message up
to and including the first user message. Turn 2 of a chat repeats turn 1's opening,
so both hash alike without the client doing anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SESSION_HEADER = "x-session-id"
PROMPT_PREFIX_CHARS = 512
"""How much of a text completion's prompt names its session."""


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _opening(messages: list[Any]) -> list[Any]:
    """Messages up to and including the first user message (the chat's fixed prefix)."""
    out = []
    for message in messages:
        out.append(message)
        if isinstance(message, dict) and message.get("role") == "user":
            break
    return out


def session_key(body: bytes, headers: Mapping[str, str]) -> str | None:
    """The routing key of one request, or None (then any replica will do)."""
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict):
        key = payload.get("prompt_cache_key")
        if isinstance(key, str) and key:
            return "k:" + key
    header = headers.get(SESSION_HEADER)
    if header:
        return "h:" + header
    if not isinstance(payload, dict):
        return None
    messages = payload.get("messages")
    if isinstance(messages, list) and messages:
        return "m:" + _digest(_opening(messages))
    items = payload.get("input")  # the Responses API
    if isinstance(items, list) and items:
        return "m:" + _digest(_opening(items))
    prompt = payload.get("input") if isinstance(payload.get("input"), str) else None
    prompt = prompt if prompt is not None else payload.get("prompt")
    if isinstance(prompt, str) and prompt:
        return "p:" + _digest(prompt[:PROMPT_PREFIX_CHARS])
    return None
