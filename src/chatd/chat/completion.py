"""Legacy text completions (``POST /v1/completions``) on the chat path's machinery.

A completion differs from a chat completion only in its prompt: the text (or token
ids) as given, no chat template. Budgets, sampling, stop strings and the engine call
are the chat path's own (``chatd.chat.generation``, ``ChoiceStream``). What is new:
several prompts in one request (each with its own engine request; choice index =
prompt index * n + i, as OpenAI numbers them), ``echo``, ``best_of`` (generate
best_of candidates, return the n best by log probability per token) and the legacy
logprobs layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from chatd.chat.choice import ChoiceStream
from chatd.chat.errors import ChatRequestError
from chatd.chat.generation import Limits, UsageCount, feed_event, tokenize_text
from chatd.chat.legacy import LegacyLogprobs, legacy_logprobs, rank_best
from chatd.engine.engine import Engine, GenerationStream
from chatd.engine.types import GenerationRequest, TokenEvent

DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for this endpoint (chat's default is "as much as fits")."""

Prompt = str | list[int]


@dataclass
class PromptPlan:
    """One prompt of the request: its engine request and the text ``echo`` repeats."""

    generation: GenerationRequest
    echo: str


@dataclass
class PreparedCompletion:
    """A validated completion request ready for the engine."""

    prompts: list[PromptPlan]
    stops: list[str]
    n: int                 # choices returned per prompt
    best_of: int           # candidates generated per prompt (>= n)
    logprobs: int | None   # alternatives per token the client asked for; None: no logprobs
    prompt_tokens: int     # over all prompts
    max_new_tokens: int

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def sequences(self) -> int:
        """Engine sequences the request runs (its share of the admission queue)."""
        return len(self.prompts) * self.best_of

    @property
    def token_budget(self) -> int:
        """Prompts plus every candidate's worst case: what a tokens-per-minute limit reserves."""
        return self.prompt_tokens + self.sequences * self.max_new_tokens


@dataclass
class CompletionDelta:
    """New text of choice `index`; `finish_reason` is set on the choice's last delta."""

    index: int
    text: str = ""
    logprobs: LegacyLogprobs | None = None
    finish_reason: str | None = None
    at: float = 0.0  # when the engine produced the token (TokenEvent.at)
    held: tuple[float, ...] = ()  # see ChoiceDelta.held


class _Candidate:
    """One engine sequence: its ChoiceStream, plus what the legacy format adds (the
    echoed prompt before the first text, each token's character offset) and, for
    best_of, the whole output until the candidates are ranked."""

    def __init__(self, choice: ChoiceStream, echo: str) -> None:
        self.choice = choice
        self.echo = echo
        self.chars = len(echo)           # characters of this choice's text so far
        self.offsets: deque[int] = deque()  # starts of tokens whose logprobs are held back
        self.text: list[str] = []
        self.logprobs = LegacyLogprobs()
        self.finish_reason: str | None = None

    def feed(self, stream: GenerationStream, event: TokenEvent, usage: UsageCount
             ) -> CompletionDelta | None:
        if not self.choice.finished:
            if event.logprob is not None:
                self.offsets.append(self.chars)
            self.chars += len(event.text)
        delta = feed_event(stream, self.choice, event, usage)
        if delta is None:
            return None
        text = delta.content
        if self.echo:
            text, self.echo = self.echo + text, ""
        logprobs = None
        if delta.logprobs is not None:
            offsets = [self.offsets.popleft() for _ in delta.logprobs]
            logprobs = legacy_logprobs(delta.logprobs, offsets)
        if delta.finish_reason:
            self.offsets.clear()  # logprobs of tokens inside a stop string are dropped
        return CompletionDelta(index=event.index, text=text, logprobs=logprobs,
                               finish_reason=delta.finish_reason, at=delta.at,
                               held=delta.held)

    def keep(self, delta: CompletionDelta) -> None:
        self.text.append(delta.text)
        if delta.logprobs is not None:
            self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason


class CompletionService:
    def __init__(self, engine: Engine, limits: Limits) -> None:
        self.engine = engine
        self.limits = limits

    # ---- request -> engine requests ------------------------------------------------

    async def prepare(self, req: Any) -> PreparedCompletion:
        """Validate what the engine cannot; tokenize off the event loop."""
        n, best_of = self._choice_counts(req)
        if req.suffix:
            raise ChatRequestError(
                "suffix (fill-in-the-middle) is not supported by this server: the model "
                "has no fill-in-the-middle tokens. Send the prompt without a suffix.",
                param="suffix", code="unsupported_parameter")
        if req.echo and req.logprobs is not None:
            raise ChatRequestError(
                "echo with logprobs would need the log probabilities of the prompt's tokens, "
                "which this server does not compute. Ask without logprobs, or without echo "
                "and prepend the prompt yourself.", param="logprobs",
                code="unsupported_parameter")
        prompts = self._prompts(req.prompt)
        token_lists = await asyncio.to_thread(self._tokenize, prompts)
        limit = DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
        for tokens in token_lists:
            self.limits.max_new_tokens(len(tokens), limit, best_of, what="prompt")  # or 400
        params = self.limits.sampling(
            req, max_new_tokens=max(limit, 1),  # 0: the engine is not asked at all
            logprobs=req.logprobs is not None or best_of > n,  # best_of ranks by them
            top_logprobs=req.logprobs or 0)
        stops = req.stop_list()
        plans = []
        for prompt, tokens in zip(prompts, token_lists, strict=True):
            generation = GenerationRequest(prompt_tokens=tokens, params=params, n=best_of,
                                           final_only=not req.stream and not stops)
            echo = "" if not req.echo else (
                prompt if isinstance(prompt, str) else self.engine.model.detokenize(prompt))
            plans.append(PromptPlan(generation, echo))
        return PreparedCompletion(plans, stops, n, best_of, req.logprobs,
                                  sum(len(t) for t in token_lists), limit)

    def _choice_counts(self, req: Any) -> tuple[int, int]:
        n = req.n or 1
        best_of = n if req.best_of is None else req.best_of
        if best_of < n:
            raise ChatRequestError(f"best_of must be greater than or equal to n (got "
                                   f"best_of={best_of}, n={n}).", param="best_of")
        self.limits.check_n(n)
        self.limits.check_n(best_of, "best_of")
        if req.stream and best_of > n:
            raise ChatRequestError("best_of greater than n cannot be streamed: the best "
                                   "candidates are known only once all have finished.",
                                   param="best_of")
        return n, best_of

    @staticmethod
    def _prompts(prompt: Any) -> list[Prompt]:
        """OpenAI's four prompt forms as a list of prompts (text or token ids)."""
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(t, int) for t in prompt):
            return [list(prompt)]
        return list(prompt)

    def _tokenize(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        model = self.engine.model
        out = []
        for i, prompt in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if isinstance(prompt, str):
                tokens = tokenize_text(model, prompt)
            else:
                bad = [str(t) for t in prompt if not 0 <= t < self.limits.n_vocab]
                if bad:
                    raise ChatRequestError(
                        f"{where} holds token ids outside this model's vocabulary "
                        f"(0..{self.limits.n_vocab - 1}): {', '.join(bad)}.", param="prompt")
                tokens = prompt
            if not tokens:
                raise ChatRequestError(f"{where} is empty.", param="prompt")
            out.append(tokens)
        return out

    # ---- engine events -> deltas ---------------------------------------------------

    async def run(self, prepared: PreparedCompletion, usage: UsageCount, *, streaming: bool
                  ) -> AsyncIterator[CompletionDelta]:
        """Yield deltas for every choice of every prompt; fills `usage` as it goes.

        With best_of > n each prompt's n best candidates come out whole, once all of
        its candidates have finished. Leaving early cancels everything in the engine.
        """
        usage.prompt_tokens = prepared.prompt_tokens
        n = prepared.n
        if prepared.max_new_tokens == 0:  # max_tokens=0: the (echoed) prompt, nothing more
            now = time.perf_counter()
            for p, plan in enumerate(prepared.prompts):
                for i in range(n):
                    yield CompletionDelta(p * n + i, plan.echo, finish_reason="length", at=now)
            return
        want_logprobs = prepared.logprobs is not None
        select = prepared.best_of > n
        candidates = [
            [_Candidate(ChoiceStream(i, prepared.stops, logprobs=want_logprobs or select,
                                     tools=False, streaming=streaming), plan.echo)
             for i in range(prepared.best_of)]
            for plan in prepared.prompts]
        cached = [0] * len(prepared.prompts)
        streams = [self.engine.generate(plan.generation) for plan in prepared.prompts]
        async with contextlib.aclosing(_merge(streams)) as events:
            async for p, event in events:
                cached[p] = event.cached_tokens
                usage.cached_tokens = sum(cached)
                candidate = candidates[p][event.index]
                delta = candidate.feed(streams[p], event, usage)
                if delta is None:
                    continue
                if not select:
                    delta.index += p * n
                    yield delta
                    continue
                candidate.keep(delta)
                if all(c.finish_reason for c in candidates[p]):
                    for best in _best(candidates[p], n, want_logprobs, at=delta.at):
                        best.index += p * n
                        yield best


def _best(candidates: list[_Candidate], n: int, want_logprobs: bool, *, at: float
          ) -> list[CompletionDelta]:
    """The n best finished candidates as whole choices, best first."""
    order = rank_best([c.logprobs.mean() for c in candidates], n)
    return [CompletionDelta(rank, "".join(candidates[i].text),
                            candidates[i].logprobs if want_logprobs else None,
                            candidates[i].finish_reason, at=at)
            for rank, i in enumerate(order)]


async def _merge(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, TokenEvent]]:
    """The events of several engine requests as they come, tagged with the request's
    position; each stream keeps its order. Closing this closes (cancels) them all."""
    if len(streams) == 1:
        try:
            async for event in streams[0]:
                yield 0, event
        finally:
            await streams[0].aclose()
        return
    pending: dict[asyncio.Future[TokenEvent], int] = {}

    def arm(p: int) -> None:
        pending[asyncio.ensure_future(anext(streams[p]))] = p

    try:
        for p in range(len(streams)):
            arm(p)
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                p = pending.pop(task)
                try:
                    event = task.result()
                except StopAsyncIteration:
                    continue
                yield p, event
                arm(p)
    finally:
        for task in pending:
            task.cancel()
        for stream in streams:
            await stream.aclose()

