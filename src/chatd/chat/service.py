"""A chat request in, message deltas out: the chat layer's one entry point.

It renders the conversation with the model's template, tokenizes it, maps
OpenAI's sampling fields onto SamplingParams, and turns the engine's token
events into per-choice text deltas, cutting at stop strings (and cancelling that
choice in the engine) so no part of a stop string is ever returned. Legacy text
completions enter here too (``prepare_completion``, ``run_completion``): the same
budgets, sampling and stops around a prompt taken as given (chatd.chat.completion).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from chatd.chat.choice import ChoiceDelta, ChoiceStream
from chatd.chat.completion import CompletionDelta, CompletionService, PreparedCompletion
from chatd.chat.errors import ChatRequestError
from chatd.chat.generation import Limits, UsageCount, feed_event, tokenize_text
from chatd.chat.media import MediaPolicy, load_part
from chatd.chat.messages import MediaSlots, normalize_messages
from chatd.chat.structured import OutputSpec, build_output_spec, explain_grammar_error
from chatd.chat.template import ChatTemplate, TemplateError
from chatd.chat.toolprompt import inline_tools
from chatd.engine.constraint import GrammarError
from chatd.engine.engine import Engine
from chatd.engine.multimodal import MediaError, MediaInput, MediaSpan, placeholders
from chatd.engine.types import GenerationRequest

log = logging.getLogger("chatd.chat")

@dataclass
class PreparedChat:
    """A validated request ready for the engine."""

    generation: GenerationRequest
    stops: list[str]
    n: int
    prompt_tokens: int
    output: OutputSpec

    @property
    def sequences(self) -> int:
        """Engine sequences the request runs (its share of the admission queue)."""
        return self.n

    @property
    def token_budget(self) -> int:
        """Prompt plus every choice's worst case: what a tokens-per-minute limit reserves."""
        return self.prompt_tokens + self.n * self.generation.params.max_new_tokens


INLINE_CHARS = 1024  # message text short enough to render and tokenize on the event loop


def _quick_to_tokenize(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> bool:
    """Whether a conversation renders and tokenizes in under a millisecond even when none
    of its text is in the prompt-piece cache (llama.cpp tokenizes 0.8-0.9 us a character
    here, the template takes ~30 us): then it runs on the event loop, without the hop to
    a worker thread and back (two thread wake-ups and the GIL passed twice, per request).
    """
    if tools or len(messages) > 64:
        return False
    size = 0
    for message in messages:
        content = message.get("content")
        if content is None:
            continue
        if not isinstance(content, str):
            return False
        size += len(content)
        if size > INLINE_CHARS:
            return False
    return True


class ChatService:
    def __init__(self, engine: Engine, template: ChatTemplate, *, ctx_size: int,
                 max_n: int, media_policy: MediaPolicy | None = None) -> None:
        self.engine = engine
        self.template = template
        self.projector = engine.projector
        self.media_policy = media_policy or MediaPolicy()
        # Where a media part sits in the rendered text; random, so no text can fake it.
        self._marker = f"<__chatd_media_{secrets.token_hex(8)}__>"
        self.ctx_size = ctx_size
        self.max_n = max_n
        model = engine.model
        self.limits = Limits(ctx_size=ctx_size, kv_cells=model.kv_cells, max_n=max_n,
                             n_vocab=model.n_vocab)
        self.completions = CompletionService(engine, self.limits)

    # ---- request -> GenerationRequest ------------------------------------------

    async def prepare(self, req: Any) -> PreparedChat:
        """Validate what the engine cannot, render and tokenize (off the event loop
        unless the conversation is short)."""
        self._reject_unsupported(req)
        output = build_output_spec(req)
        if output.grammar is not None:
            try:
                await asyncio.to_thread(self.engine.grammars.compile, output.grammar)
            except GrammarError as exc:
                raise explain_grammar_error(req, str(exc)) from exc
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        slots = (MediaSlots(frozenset(self.projector.modalities) - {"text"}, self._marker)
                 if self.projector is not None else None)
        normalized = normalize_messages(messages, slots)
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        media = [await load_part(part, param, self.media_policy)
                 for part, param in (slots.parts if slots else [])]
        if media or not _quick_to_tokenize(normalized, tools):
            prompt, spans = await asyncio.to_thread(self._render_and_tokenize, normalized,
                                                    tools, media)
        else:
            prompt, spans = self._render_and_tokenize(normalized, tools, media)
        n = req.n or 1
        self.limits.check_n(n)
        limit = req.effective_max_tokens()
        max_new = self.limits.max_new_tokens(len(prompt), limit, n, what="messages")
        params = self.limits.sampling(req, max_new_tokens=max_new, logprobs=bool(req.logprobs),
                                      top_logprobs=req.top_logprobs or 0)
        if req.user:
            log.info("request for user %r", req.user)
        stops = req.stop_list()
        # Without streaming, only a stop string needs each token as it comes (to end
        # the choice early); otherwise the engine hands the output over in one piece.
        generation = GenerationRequest(prompt_tokens=prompt, params=params, n=n,
                                       grammar=output.grammar,
                                       final_only=not req.stream and not stops,
                                       media=tuple(spans))
        return PreparedChat(generation, stops, n, len(prompt), output)

    def _render_and_tokenize(self, messages: list[dict[str, Any]],
                             tools: list[dict[str, Any]], media: list[MediaInput]
                             ) -> tuple[list[int], list[MediaSpan]]:
        """Tools go through the model's own template when it knows them, else through
        the built-in tool prompt (see chatd.chat.toolprompt). Media parts come back as
        spans of placeholder ids (chatd.engine.multimodal)."""
        text = self._render(messages, tools)
        if not media:
            return tokenize_text(self.engine.model, text), []
        segments = text.split(self._marker)
        if len(segments) != len(media) + 1:
            raise ChatRequestError("The model's chat template dropped or repeated an image "
                                   "or audio part; send each in its own user message.",
                                   param="messages")
        assert self.projector is not None
        model = self.engine.model
        prompt = tokenize_text(model, segments[0])
        spans: list[MediaSpan] = []
        for item, segment in zip(media, segments[1:], strict=True):
            try:
                pieces = self.projector.tokenize(item)
            except MediaError as exc:
                raise ChatRequestError(str(exc), param=item.param,
                                       code=f"invalid_{item.kind}") from exc
            for piece in pieces:
                if isinstance(piece, MediaSpan):
                    if piece.bidirectional and piece.n_tokens > self.engine.config.batch_tokens:
                        raise ChatRequestError(
                            f"{item.param}: this {item.kind} takes {piece.n_tokens} tokens, "
                            f"more than one batch ({self.engine.config.batch_tokens}); start "
                            "the server with a larger --batch-tokens", param=item.param,
                            code=f"invalid_{item.kind}")
                    piece.start = len(prompt)
                    prompt += placeholders(piece.key, piece.n_tokens)
                    spans.append(piece)
                else:
                    prompt += piece
            prompt += model.tokenize(segment, add_special=False, parse_special=True)
        return prompt, spans

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
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
        return text

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
        usage.audio_tokens = sum(span.n_tokens for span in prepared.generation.media
                                 if span.kind == "audio")
        stream = self.engine.generate(prepared.generation)
        try:
            async for event in stream:
                usage.cached_tokens = event.cached_tokens
                delta = feed_event(stream, choices[event.index], event, usage)
                if delta is not None:
                    yield delta
        finally:
            await stream.aclose()

    # ---- text completions (POST /v1/completions) ---------------------------------

    async def prepare_completion(self, req: Any) -> PreparedCompletion:
        """A legacy completion request: the prompt as given, no chat template."""
        return await self.completions.prepare(req)

    def run_completion(self, prepared: PreparedCompletion, usage: UsageCount, *,
                       streaming: bool) -> AsyncIterator[CompletionDelta]:
        """Text deltas of every choice of every prompt (see chatd.chat.completion)."""
        return self.completions.run(prepared, usage, streaming=streaming)
