"""The chat layer's deltas -> a Response object and OpenAI's stream events.

One builder serves the three ways a response is made (streamed, returned whole, run
in the background), so they cannot disagree: the JSON answer is the final
``response`` of the stream's terminal event. Events follow OpenAI's order (created,
in_progress, then per output item: added, part added, deltas, done...; then
completed or incomplete), numbered from 0 by ``sequence_number``. Each item is
closed before the next one opens, so every index the SDK's stream helper looks up
already exists.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

from chatd.api.responses_input import new_id
from chatd.chat.choice import ChoiceDelta
from chatd.chat.generation import UsageCount

Event = dict[str, Any]


def usage_object(count: UsageCount) -> dict[str, Any]:
    return {"input_tokens": count.prompt_tokens,
            # No explicit cache writes here (the prefix cache is automatic): 0.
            "input_tokens_details": {"cached_tokens": count.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": count.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": count.prompt_tokens + count.completion_tokens}


def sse(event: Event) -> str:
    """OpenAI's framing for Responses: an ``event:`` line, then the JSON data."""
    return (f"event: {event['type']}\n"
            f"data: {json.dumps(event, separators=(',', ':'))}\n\n")


class ResponseBuilder:
    """Builds `response` (a Response object, as a dict) from deltas of choice 0."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.sequence = 0
        self._open: dict[str, Any] | None = None      # the item being written
        self._calls: dict[int, dict[str, Any]] = {}   # call index -> its item

    # ---- events --------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.response)

    def opening(self) -> list[Event]:
        return [self.event("response.created", response=self.snapshot()),
                self.event("response.in_progress", response=self.snapshot())]

    def feed(self, delta: ChoiceDelta) -> list[Event]:
        events: list[Event] = []
        text = delta.content
        if text and not (self._calls and not text.strip()
                         and (self._open is None or self._open["type"] != "message")):
            if self._open is None or self._open["type"] != "message":
                events += self._close()
                events += self._add({"id": new_id("msg"), "type": "message",
                                     "status": "in_progress", "content": [],
                                     "role": "assistant"})
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                item = self._open
                assert item is not None
                item["content"].append(part)
                events.append(self.event("response.content_part.added", item_id=item["id"],
                                         output_index=self._index(), content_index=0,
                                         part=copy.deepcopy(part)))
            item = self._open
            assert item is not None
            part = item["content"][0]
            part["text"] += text
            logprobs = delta.logprobs or []
            part["logprobs"].extend(logprobs)
            events.append(self.event("response.output_text.delta", item_id=item["id"],
                                     output_index=self._index(), content_index=0,
                                     delta=text, logprobs=copy.deepcopy(logprobs)))
        elif delta.logprobs and self._open is not None and self._open["type"] == "message":
            self._open["content"][0]["logprobs"].extend(delta.logprobs)  # text held back
        for call in delta.tool_calls:
            if call.id is not None:
                events += self._close()
                item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                        "arguments": "", "call_id": call.id, "name": call.name or ""}
                self._calls[call.index] = item
                events += self._add(item)
            item = self._calls.get(call.index)
            if item is None or not call.arguments:
                continue
            item["arguments"] += call.arguments
            if item is self._open:
                events.append(self.event("response.function_call_arguments.delta",
                                         item_id=item["id"], output_index=self._index(),
                                         delta=call.arguments))
        return events

    def finish(self, finish_reason: str | None, usage: UsageCount) -> list[Event]:
        """Close the last item and end with response.completed / .incomplete."""
        cut = finish_reason == "length"
        events = self._close(status="incomplete" if cut else "completed")
        response = self.response
        response["usage"] = usage_object(usage)
        if cut:
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
            return [*events, self.event("response.incomplete", response=self.snapshot())]
        response["status"] = "completed"
        response["completed_at"] = int(time.time())
        return [*events, self.event("response.completed", response=self.snapshot())]

    def fail(self, message: str) -> Event:
        self._open = None
        self.response["status"] = "failed"
        self.response["error"] = {"code": "server_error", "message": message}
        return self.event("response.failed", response=self.snapshot())

    # ---- items ---------------------------------------------------------------

    def _index(self) -> int:
        return len(self.response["output"]) - 1

    def _add(self, item: dict[str, Any]) -> list[Event]:
        self.response["output"].append(item)
        self._open = item
        return [self.event("response.output_item.added", output_index=self._index(),
                           item=copy.deepcopy(item))]

    def _close(self, status: str = "completed") -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self.response["output"].index(item)
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self.event("response.output_text.done", item_id=item["id"],
                                     output_index=index, content_index=0,
                                     text=part["text"],
                                     logprobs=copy.deepcopy(part["logprobs"])))
            events.append(self.event("response.content_part.done", item_id=item["id"],
                                     output_index=index, content_index=0,
                                     part=copy.deepcopy(part)))
        else:
            events.append(self.event("response.function_call_arguments.done",
                                     item_id=item["id"], output_index=index,
                                     name=item["name"], arguments=item["arguments"]))
        item["status"] = status
        events.append(self.event("response.output_item.done", output_index=index,
                                 item=copy.deepcopy(item)))
        return events


def response_object(*, response_id: str, created: int, model: str, status: str,
                    body: Any, tools: list[dict[str, Any]],
                    previous_response_id: str | None, store: bool) -> dict[str, Any]:
    """A Response in its first state (queued / in_progress, no output yet). `usage`
    and `user` are left out until there is one: OpenAI's schema does not allow null."""
    text_format: Any = {"type": "text"}
    if body.text is not None and body.text.format is not None:
        text_format = body.text.format.model_dump(mode="json", exclude_none=True)
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status,
        "background": bool(body.background), "completed_at": None, "error": None,
        "incomplete_details": None, "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens, "max_tool_calls": body.max_tool_calls,
        "model": model, "output": [], "parallel_tool_calls": body.parallel_tool_calls
        is not False, "previous_response_id": previous_response_id,
        "prompt_cache_key": body.prompt_cache_key,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": body.safety_identifier, "service_tier": "default",
        "store": store, "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": text_format, "verbosity": "medium"},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": tools, "top_logprobs": body.top_logprobs or 0,
        "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
        "metadata": dict(body.metadata or {}),
    } | ({"user": body.user} if body.user is not None else {})
