"""POST /v1/chat/completions: JSON or SSE around the chat layer's deltas."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatd.api.context import ServerContext
from chatd.api.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ContentChunks,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    TokenLogprobOut,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from chatd.api.serving import checked, respond
from chatd.chat.choice import ChoiceDelta
from chatd.chat.service import ChatService, PreparedChat, UsageCount

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    ctx, prepared = await checked(request, body, ChatService.prepare)
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    return await respond(
        ctx, request, prepared, stream=bool(body.stream),
        events=lambda: _sse(ctx, prepared, body, completion_id, created),
        complete=lambda: _complete(ctx, prepared, body, completion_id, created))


def _logprobs(entries: list[dict] | None) -> ChoiceLogprobs | None:
    if entries is None:
        return None
    return ChoiceLogprobs(content=[TokenLogprobOut.model_validate(e) for e in entries])


def _usage(count: UsageCount) -> Usage:
    return Usage.from_counts(count.prompt_tokens, count.completion_tokens, count.cached_tokens)


async def _complete(ctx: ServerContext, prepared: PreparedChat, body: ChatCompletionRequest,
                    completion_id: str, created: int) -> Response:
    n = prepared.n
    texts: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list[dict] | None] = [
        [] if body.logprobs else None for _ in range(n)]
    finish: list[str] = ["stop"] * n
    calls: list[list[ToolCall]] = [[] for _ in range(n)]
    usage = UsageCount()
    async with contextlib.aclosing(ctx.chat.run(prepared, usage, streaming=False)) as deltas:
        async for delta in deltas:
            texts[delta.index].append(delta.content)
            calls[delta.index].extend(
                ToolCall(id=c.id or "", type="function",
                         function=FunctionCall(name=c.name or "", arguments=c.arguments))
                for c in delta.tool_calls)
            entries = logprobs[delta.index]
            if entries is not None and delta.logprobs:
                entries.extend(delta.logprobs)
            if delta.finish_reason:
                finish[delta.index] = delta.finish_reason
    completion = ChatCompletion(
        id=completion_id, created=created, model=ctx.model_name,
        system_fingerprint=ctx.fingerprint,
        choices=[
            Choice(index=i, message=ChatMessage(content="".join(texts[i]) or (
                       None if calls[i] else ""), tool_calls=calls[i] or None),
                   logprobs=_logprobs(logprobs[i]), finish_reason=finish[i])  # type: ignore[arg-type]
            for i in range(n)
        ],
        usage=_usage(usage),
    )
    return Response(completion.to_json(), media_type="application/json")


async def _sse(ctx: ServerContext, prepared: PreparedChat, body: ChatCompletionRequest,
               completion_id: str, created: int) -> AsyncIterator[str]:
    """OpenAI's sequence: role chunk per choice, content chunks, one finish chunk per
    choice, the optional usage chunk (`respond` adds [DONE], or an error event)."""
    include_usage = body.include_usage()
    want_logprobs = bool(body.logprobs)
    fields = {"id": completion_id, "created": created, "model": ctx.model_name,
              "system_fingerprint": ctx.fingerprint}
    plain = ContentChunks(fields, include_usage)

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return ChatCompletionChunk(**fields, choices=choices, usage=usage).to_sse(include_usage)

    def content_chunk(delta: ChoiceDelta) -> str:
        if not want_logprobs:
            return plain.sse(delta.index, delta.content)
        return chunk([ChunkChoice(index=delta.index, delta=Delta(content=delta.content),
                                  logprobs=_logprobs(delta.logprobs))])

    def fragments(delta: ChoiceDelta) -> list[ToolCallDelta]:
        return [
            ToolCallDelta(index=c.index, id=c.id, type="function",
                          function=FunctionCallDelta(name=c.name, arguments=c.arguments))
            if c.id is not None else
            ToolCallDelta(index=c.index, function=FunctionCallDelta(arguments=c.arguments))
            for c in delta.tool_calls]

    def role_chunk(index: int, calls: list[ToolCallDelta] | None = None) -> str:
        # OpenAI's first delta of a choice: `content: ""` when it answers in text;
        # `content: null` with the first call fragment when it answers with a call.
        opening = (Delta(role="assistant", content=None, refusal=None, tool_calls=calls)
                   if calls else Delta(role="assistant", content="", refusal=None))
        return chunk([ChunkChoice(index=index, delta=opening)])

    # Without tools the output can only be text, so the role goes out at once; with
    # tools, a choice's first chunk waits until the output shows which it is.
    announced = [not prepared.output.tools_active] * prepared.n
    for i in range(prepared.n):
        if announced[i]:
            yield role_chunk(i)
    usage = UsageCount()
    async with contextlib.aclosing(ctx.chat.run(prepared, usage, streaming=True)) as deltas:
        async for delta in deltas:
            index = delta.index
            calls = fragments(delta) if delta.tool_calls else None
            if not announced[index]:
                announced[index] = True
                opens_with_call = calls is not None and not delta.content
                yield role_chunk(index, calls if opens_with_call else None)
                if opens_with_call:
                    calls = None
            if delta.content or (want_logprobs and delta.logprobs):
                yield content_chunk(delta)
            if calls:
                yield chunk([ChunkChoice(index=index, delta=Delta(tool_calls=calls))])
            if delta.finish_reason:
                yield chunk([ChunkChoice(index=index, delta=Delta(),
                                         finish_reason=delta.finish_reason)])  # type: ignore[arg-type]
    if include_usage:
        yield chunk([], usage=_usage(usage))
