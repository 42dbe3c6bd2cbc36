"""A chat request in, message deltas out: the chat layer's one entry point.

It renders the conversation with the model's template, tokenizes it, maps
OpenAI's sampling fields onto SamplingParams, and turns the engine's token
events into per-choice text deltas, cutting at stop strings (and cancelling that
choice in the engine) so no part of a stop string is ever returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from chatd.chat.choice import ChoiceDelta, ChoiceStream
from chatd.chat.errors import ChatRequestError, GenerationFailed
from chatd.chat.messages import normalize_messages
from chatd.chat.structured import OutputSpec, build_output_spec, explain_grammar_error
from chatd.chat.template import ChatTemplate, TemplateError
from chatd.chat.toolprompt import inline_tools
from chatd.engine.constraint import GrammarError
from chatd.engine.engine import Engine
from chatd.engine.types import GenerationRequest, SamplingParams

log = logging.getLogger("chatd.chat")

@dataclass
class PreparedChat:
    """A validated request ready for the engine."""

    generation: GenerationRequest
    stops: list[str]
    n: int
    prompt_tokens: int
    output: OutputSpec


@dataclass
class UsageCount:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


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
        output = build_output_spec(req)
        if output.grammar is not None:
            try:
                await asyncio.to_thread(self.engine.grammars.compile, output.grammar)
            except GrammarError as exc:
                raise explain_grammar_error(req, str(exc)) from exc
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        normalized = normalize_messages(messages)
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        prompt = await asyncio.to_thread(self._render_and_tokenize, normalized, tools)
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
        # The KV pool must hold the prompt plus every choice's worst case at once, or
        # the request could never be admitted: a default max_tokens shrinks to fit,
        # an explicit one that cannot fit is the client's to change.
        pool = self.engine.model.kv_cells
        share = (pool - len(prompt)) // n
        if limit is None:
            room = min(room, share)
        elif limit > share:
            raise ChatRequestError(
                f"n={n} choices of max_tokens={limit} after a {len(prompt)}-token prompt "
                f"need {len(prompt) + n * limit} KV cache cells; this server holds {pool}. "
                f"Lower n or max_tokens (at most {max(share, 0)} for n={n}).",
                param="max_tokens")
        if room <= 0:
            raise ChatRequestError(
                f"This prompt of {len(prompt)} tokens leaves no room for {n} choices in the "
                f"server's KV cache of {pool} cells. Lower n or shorten the messages.",
                param="n")
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
        stops = req.stop_list()
        # Without streaming, only a stop string needs each token as it comes (to end
        # the choice early); otherwise the engine hands the output over in one piece.
        generation = GenerationRequest(prompt_tokens=prompt, params=params, n=n,
                                       grammar=output.grammar,
                                       final_only=not req.stream and not stops)
        return PreparedChat(generation, stops, n, len(prompt), output)

    def _render_and_tokenize(self, messages: list[dict[str, Any]],
                             tools: list[dict[str, Any]]) -> list[int]:
        """Tools go through the model's own template when it knows them, else through
        the built-in tool prompt (see chatd.chat.toolprompt)."""
        try:
            if tools and not self.template.handles_tools:
                text = self.template.render(inline_tools(messages, tools),
                                            add_generation_prompt=True)
            else:
                text = self.template.render(messages, tools=tools or None,
                                            add_generation_prompt=True)
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

    async def run(self, prepared: PreparedChat, usage: UsageCount, *, streaming: bool
                  ) -> AsyncIterator[ChoiceDelta]:
        """Yield deltas for every choice; fills `usage` as tokens are counted.

        Leaving this generator early (client gone) cancels every choice in the engine.
        """
        choices = [ChoiceStream(i, prepared.stops, logprobs=prepared.generation.params.logprobs,
                                tools=prepared.output.tools_active, streaming=streaming)
                   for i in range(prepared.n)]
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
                if delta.content or delta.tool_calls or delta.logprobs or delta.finish_reason:
                    yield delta
        finally:
            await stream.aclose()
