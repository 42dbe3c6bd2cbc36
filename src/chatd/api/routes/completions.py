"""POST /v1/completions (OpenAI's legacy Completions API): JSON or SSE around the
chat layer's text-completion deltas.

The same gate as the chat route (auth, per-key limits, the admission queue), the
same cancellation when the client goes away, the same error envelope; only the
wire objects differ (``text_completion`` for the response and every chunk alike).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatd.api.context import ServerContext
from chatd.api.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
)
from chatd.api.serving import checked, respond
from chatd.chat.completion import CompletionDelta, PreparedCompletion
from chatd.chat.generation import UsageCount
from chatd.chat.legacy import LegacyLogprobs
from chatd.chat.service import ChatService

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    ctx, prepared = await checked(request, body, ChatService.prepare_completion)
    head = Completion(id="cmpl-" + uuid.uuid4().hex, created=int(time.time()),
                      model=ctx.model_name, system_fingerprint=ctx.fingerprint)
    return await respond(
        ctx, request, prepared, stream=bool(body.stream),
        events=lambda: _sse(ctx, prepared, head, body.include_usage()),
        complete=lambda: _complete(ctx, prepared, head))


def _logprobs(legacy: LegacyLogprobs | None) -> CompletionLogprobs | None:
    if legacy is None:
        return None
    return CompletionLogprobs(tokens=legacy.tokens, token_logprobs=legacy.token_logprobs,
                              top_logprobs=legacy.top_logprobs,
                              text_offset=legacy.text_offset)  # type: ignore[arg-type]


def _usage(count: UsageCount) -> Usage:
    return Usage.from_counts(count.prompt_tokens, count.completion_tokens, count.cached_tokens)


def _choice(delta: CompletionDelta) -> CompletionChoice:
    return CompletionChoice(text=delta.text, index=delta.index,
                            logprobs=_logprobs(delta.logprobs),
                            finish_reason=delta.finish_reason)  # type: ignore[arg-type]


async def _complete(ctx: ServerContext, prepared: PreparedCompletion,
                    head: Completion) -> Response:
    count = prepared.choices
    texts: list[list[str]] = [[] for _ in range(count)]
    logprobs = [LegacyLogprobs() if prepared.logprobs is not None else None
                for _ in range(count)]
    finish = ["stop"] * count
    usage = UsageCount()
    async with contextlib.aclosing(
            ctx.chat.run_completion(prepared, usage, streaming=False)) as deltas:
        async for delta in deltas:
            texts[delta.index].append(delta.text)
            whole = logprobs[delta.index]
            if whole is not None and delta.logprobs is not None:
                whole.extend(delta.logprobs)
            if delta.finish_reason:
                finish[delta.index] = delta.finish_reason
    choices = [_choice(CompletionDelta(i, "".join(texts[i]), logprobs[i], finish[i]))
               for i in range(count)]
    completion = head.model_copy(update={"choices": choices, "usage": _usage(usage)})
    return Response(completion.to_json(), media_type="application/json")


async def _sse(ctx: ServerContext, prepared: PreparedCompletion, head: Completion,
               include_usage: bool) -> AsyncIterator[str]:
    """A chunk per delta (its text, logprobs and, on the last, finish_reason), then the
    optional usage chunk (``choices: []``); `respond` adds [DONE], or an error event."""
    usage = UsageCount()
    async with contextlib.aclosing(
            ctx.chat.run_completion(prepared, usage, streaming=True)) as deltas:
        async for delta in deltas:
            chunk = head.model_copy(update={"choices": [_choice(delta)]})
            yield chunk.to_sse(include_usage)
    if include_usage:
        yield head.model_copy(update={"usage": _usage(usage)}).to_sse(include_usage)
