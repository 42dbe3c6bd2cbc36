"""One choice's token events -> message deltas: stop strings, logprobs, tool calls.

Text flows through the stop matcher first (a stop string is never returned, not
even split across tokens), then, when tools are active, through the tool-call
parser. Logprobs travel with their token's text: held back while it is, dropped
for tokens that lie wholly inside a matched stop string.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from chatd.chat.stops import StopMatcher
from chatd.chat.toolcalls import ToolCallDelta, ToolCallStreamParser, parse_tool_calls
from chatd.engine.types import TokenEvent, TokenLogprob

LogprobEntry = dict[str, Any]


@dataclass
class ChoiceDelta:
    """New output of one choice; `finish_reason` is set on the choice's last delta."""

    index: int
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    logprobs: list[LogprobEntry] | None = None
    finish_reason: str | None = None
    at: float = 0.0  # when the engine produced the token (TokenEvent.at)
    # When the engine produced earlier tokens whose text only this delta releases (half a
    # character, a possible stop string): metrics count every token, not every delta.
    held: tuple[float, ...] = ()


def _token_entry(item: TokenLogprob) -> LogprobEntry:
    return {
        "token": item.token_bytes.decode("utf-8", errors="replace"),
        "logprob": item.logprob,
        "bytes": list(item.token_bytes),
    }


def logprob_entry(event: TokenEvent) -> LogprobEntry:
    """OpenAI's ChatCompletionTokenLogprob for one event."""
    assert event.logprob is not None
    entry = _token_entry(event.logprob)
    entry["top_logprobs"] = [_token_entry(t) for t in event.top_logprobs or []]
    return entry


class ChoiceStream:
    """Per-choice state while events arrive."""

    def __init__(self, index: int, stops: list[str], *, logprobs: bool, tools: bool,
                 streaming: bool) -> None:
        self.index = index
        self.matcher = StopMatcher(stops)
        self.want_logprobs = logprobs
        self.tools = tools
        self.parser = ToolCallStreamParser() if tools and streaming else None
        self.buffer: list[str] | None = [] if tools and not streaming else None
        self.saw_calls = False
        self.finished = False
        # (logprob entry, start char, end char) of tokens whose text is not yet released
        self.pending: deque[tuple[LogprobEntry, int, int]] = deque()
        self.fed_chars = 0
        self.released_chars = 0
        self.held_at: list[float] = []  # see ChoiceDelta.held

    def feed(self, event: TokenEvent) -> ChoiceDelta:
        delta = ChoiceDelta(index=self.index, at=event.at)
        if self.want_logprobs and event.logprob is not None:
            end = self.fed_chars + len(event.text)
            self.pending.append((logprob_entry(event), self.fed_chars, end))
        self.fed_chars += len(event.text)
        text, stopped = self.matcher.feed(event.text)
        final = stopped or event.finish_reason is not None
        if final and not stopped:
            text += self.matcher.flush()
        self.released_chars += len(text)
        if self.want_logprobs:
            delta.logprobs = self._release_logprobs(stopped, final)
        self._route_text(delta, text, final)
        if final:
            self.finished = True
            # "abort" (shutdown deadline) reads as truncated output, like "length".
            reason = "stop" if stopped or event.finish_reason == "stop" else "length"
            delta.finish_reason = "tool_calls" if self.saw_calls and reason == "stop" else reason
        return delta

    def _route_text(self, delta: ChoiceDelta, text: str, final: bool) -> None:
        if self.parser is not None:
            content, calls = self.parser.feed(text)
            if final:
                more_content, more_calls = self.parser.finish()
                content += more_content
                calls += more_calls
            delta.content, delta.tool_calls = content, calls
            self.saw_calls = self.parser.saw_calls
        elif self.buffer is not None:
            self.buffer.append(text)
            if final:
                content, calls = parse_tool_calls("".join(self.buffer))
                delta.content = content or ""
                delta.tool_calls = [
                    ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments)
                    for i, c in enumerate(calls)]
                self.saw_calls = bool(calls)
        else:
            delta.content = text

    def _release_logprobs(self, stopped: bool, final: bool) -> list[LogprobEntry]:
        out = []
        while self.pending:
            entry, start, end = self.pending[0]
            keep = (end <= self.released_chars or (final and not stopped)
                    or (stopped and start < self.released_chars))
            if not keep:
                break
            out.append(entry)
            self.pending.popleft()
        if final:
            self.pending.clear()
        return out
