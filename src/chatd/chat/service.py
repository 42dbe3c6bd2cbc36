"""A chat request in, message deltas out: the chat layer's one entry point.

It renders the conversation with the model's template, tokenizes it, maps
OpenAI's sampling fields onto SamplingParams, and turns the engine's token
events into per-choice text deltas, cutting at stop strings (and cancelling that
choice in the engine) so no part of a stop string is ever returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from chatd.chat.errors import ChatRequestError, GenerationFailed
from chatd.chat.messages import normalize_messages
from chatd.chat.stops import StopMatcher
from chatd.chat.template import ChatTemplate, TemplateError
from chatd.engine.engine import Engine
from chatd.engine.types import GenerationRequest, SamplingParams, TokenEvent, TokenLogprob

log = logging.getLogger("chatd.chat")

LogprobEntry = dict[str, Any]


@dataclass
class PreparedChat:
    """A validated request ready for the engine."""

    generation: GenerationRequest
    stops: list[str]
    n: int
    prompt_tokens: int


@dataclass
class ChoiceDelta:
    """New content of one choice; `finish_reason` set on the choice's last delta."""

    index: int
    content: str = ""
    logprobs: list[LogprobEntry] | None = None
    finish_reason: str | None = None


@dataclass
class UsageCount:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class _Choice:
    """Per-choice bookkeeping while events arrive."""

    matcher: StopMatcher
    want_logprobs: bool
    # (logprob entry, start char, end char) of tokens whose text is not yet released
    pending: deque[tuple[LogprobEntry, int, int]] = field(default_factory=deque)
    fed_chars: int = 0
    released_chars: int = 0
    finished: bool = False

    def feed(self, event: TokenEvent) -> ChoiceDelta:
        delta = ChoiceDelta(index=event.index)
        if self.want_logprobs and event.logprob is not None:
            end = self.fed_chars + len(event.text)
            self.pending.append((_logprob_entry(event), self.fed_chars, end))
        self.fed_chars += len(event.text)
        text, stopped = self.matcher.feed(event.text)
        if not stopped and event.finish_reason is not None:
            text += self.matcher.flush()
        delta.content = text
        self.released_chars += len(text)
        if stopped:
            delta.finish_reason = "stop"
        elif event.finish_reason is not None:
            delta.finish_reason = "length" if event.finish_reason == "length" else "stop"
        if self.want_logprobs:
            delta.logprobs = self._release_logprobs(stopped, delta.finish_reason is not None)
        self.finished = delta.finish_reason is not None
        return delta

    def _release_logprobs(self, stopped: bool, final: bool) -> list[LogprobEntry]:
        """Logprobs travel with their token's text: held back while it is, dropped for
        tokens that lie wholly inside a matched stop string."""
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


def _token_entry(item: TokenLogprob) -> LogprobEntry:
    return {
        "token": item.token_bytes.decode("utf-8", errors="replace"),
        "logprob": item.logprob,
        "bytes": list(item.token_bytes),
    }


def _logprob_entry(event: TokenEvent) -> LogprobEntry:
    assert event.logprob is not None
    entry = _token_entry(event.logprob)
    entry["top_logprobs"] = [_token_entry(t) for t in event.top_logprobs or []]
    return entry


class ChatService:
    def __init__(self, engine: Engine, template: ChatTemplate, *, ctx_size: int,
                 max_n: int) -> None:
        self.engine = engine
        self.template = template
        self.ctx_size = ctx_size
        self.max_n = max_n
        model = engine.model
        self._bos_text = model.token_text(model.bos_id) if model.bos_id >= 0 else ""

    # ---- request -> GenerationRequest ------------------------------------------

    async def prepare(self, req: Any) -> PreparedChat:
        """Validate what the engine cannot, render and tokenize off the event loop."""
        self._reject_unsupported(req)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        normalized = normalize_messages(messages)
        prompt = await asyncio.to_thread(self._render_and_tokenize, normalized)
        n = req.n or 1
        if n > self.max_n:
            raise ChatRequestError(f"n={n} is more than this server allows per request "
                                   f"({self.max_n}).", param="n")
        limit = req.effective_max_tokens()
        room = self.ctx_size - len(prompt)
        if room <= 0 or (limit is not None and limit > room):
            asked = f" plus max_tokens={limit}" if limit is not None else ""
            raise ChatRequestError(
                f"This model's maximum context length is {self.ctx_size} tokens. However, "
                f"your messages resulted in {len(prompt)} tokens{asked}. Please reduce the "
                f"length of the messages or the completion.",
                param="messages", code="context_length_exceeded")
        params = SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            min_p=req.min_p or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            logit_bias=self._logit_bias(req.logit_bias),
            seed=req.seed,
            max_new_tokens=limit if limit is not None else room,
            logprobs=bool(req.logprobs),
            top_logprobs=req.top_logprobs or 0,
        )
        if req.user:
            log.info("request for user %r", req.user)
        generation = GenerationRequest(prompt_tokens=prompt, params=params, n=n)
        return PreparedChat(generation, req.stop_list(), n, len(prompt))

    def _render_and_tokenize(self, messages: list[dict[str, Any]]) -> list[int]:
        try:
            text = self.template.render(messages, add_generation_prompt=True)
        except TemplateError as exc:
            raise ChatRequestError(f"The conversation could not be rendered with the model's "
                                   f"chat template: {exc}", param="messages") from exc
        model = self.engine.model
        add_bos = model.add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return model.tokenize(text, add_special=add_bos, parse_special=True)

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float]:
        if not bias:
            return {}
        n_vocab = self.engine.model.n_vocab
        out = {}
        for key, value in bias.items():
            token = int(key)
            if not 0 <= token < n_vocab:
                raise ChatRequestError(f"logit_bias token id {key} is outside this model's "
                                       f"vocabulary (0..{n_vocab - 1}).", param="logit_bias")
            out[token] = float(value)
        return out

    @staticmethod
    def _reject_unsupported(req: Any) -> None:
        fmt = req.response_format
        if fmt is not None and fmt.type != "text":
            raise ChatRequestError(
                f"response_format type '{fmt.type}' is not supported by this server yet; "
                "omit response_format or use {\"type\": \"text\"}.",
                param="response_format.type", code="unsupported_parameter")
        if req.tools:
            raise ChatRequestError("tools are not supported by this server yet; send the "
                                   "request without 'tools'.", param="tools",
                                   code="unsupported_parameter")
        if req.tool_choice not in (None, "none"):
            raise ChatRequestError("tool_choice requires tools, which this server does not "
                                   "support yet.", param="tool_choice",
                                   code="unsupported_parameter")
        if getattr(req, "functions", None) or getattr(req, "function_call", None) not in (
                None, "none"):
            raise ChatRequestError("functions/function_call are not supported by this server.",
                                   param="functions", code="unsupported_parameter")
        modalities = getattr(req, "modalities", None)
        if modalities and any(m != "text" for m in modalities):
            raise ChatRequestError("This server produces text only; set modalities to "
                                   "[\"text\"].", param="modalities",
                                   code="unsupported_parameter")
        if getattr(req, "audio", None) is not None:
            raise ChatRequestError("Audio output is not supported by this server.",
                                   param="audio", code="unsupported_parameter")

    # ---- events -> deltas ---------------------------------------------------------

    async def run(self, prepared: PreparedChat, usage: UsageCount
                  ) -> AsyncIterator[ChoiceDelta]:
        """Yield deltas for every choice; fills `usage` as tokens are counted.

        Leaving this generator early (client gone) cancels every choice in the engine.
        """
        want_logprobs = prepared.generation.params.logprobs
        choices = [_Choice(StopMatcher(prepared.stops), want_logprobs)
                   for _ in range(prepared.n)]
        usage.prompt_tokens = prepared.prompt_tokens
        stream = self.engine.generate(prepared.generation)
        try:
            async for event in stream:
                choice = choices[event.index]
                if choice.finished:
                    continue  # tokens decoded after a stop string matched
                if event.finish_reason == "error":
                    raise GenerationFailed(event.error or "generation failed")
                usage.cached_tokens = event.cached_tokens
                if event.token_id >= 0:
                    usage.completion_tokens += 1
                delta = choice.feed(event)
                if delta.finish_reason and event.finish_reason is None:
                    stream.cancel(event.index)  # stop string matched
                if delta.content or delta.logprobs or delta.finish_reason:
                    yield delta
        finally:
            await stream.aclose()
