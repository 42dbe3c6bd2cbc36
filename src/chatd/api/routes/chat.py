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
from chatd.api.storing import Keeping, keeping
from chatd.chat.choice import ChoiceDelta
from chatd.chat.service import ChatService, PreparedChat, UsageCount

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    ctx, prepared = await checked(request, body, ChatService.prepare)
    keep = keeping(request, body)  # `store: true` (400 on a server that keeps nothing)
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    return await respond(
        ctx, request, prepared, stream=bool(body.stream),
        events=lambda: _sse(ctx, prepared, body, completion_id, created, keep),
        complete=lambda: _complete(ctx, prepared, body, completion_id, created, keep))


def _logprobs(entries: list[dict] | None) -> ChoiceLogprobs | None:
    if entries is None:
        return None
    return ChoiceLogprobs(content=[TokenLogprobOut.model_validate(e) for e in entries])


def _usage(count: UsageCount) -> Usage:
    return Usage.from_counts(count.prompt_tokens, count.completion_tokens, count.cached_tokens,
                             count.audio_tokens)


class _Answer:
    """A completion's choices gathered from its deltas: the non-streamed answer, and
    what a stored stream keeps, so that the two are the same object. A streamed call
    comes in fragments (the first with its id and name, then argument text)."""

    def __init__(self, n: int, logprobs: bool) -> None:
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.logprobs: list[list[dict] | None] = [[] if logprobs else None for _ in range(n)]
        self.finish: list[str] = ["stop"] * n
        self.calls: list[list[ToolCall]] = [[] for _ in range(n)]

    def add(self, delta: ChoiceDelta) -> None:
        index = delta.index
        self.texts[index].append(delta.content)
        calls = self.calls[index]
        for c in delta.tool_calls:
            if c.id is None and c.index < len(calls):
                calls[c.index].function.arguments += c.arguments
            else:
                calls.append(ToolCall(id=c.id or "", type="function", function=FunctionCall(
                    name=c.name or "", arguments=c.arguments)))
        entries = self.logprobs[index]
        if entries is not None and delta.logprobs:
            entries.extend(delta.logprobs)
        if delta.finish_reason:
            self.finish[index] = delta.finish_reason

    def completion(self, ctx: ServerContext, completion_id: str, created: int,
                   usage: UsageCount) -> ChatCompletion:
        texts, calls = self.texts, self.calls
        return ChatCompletion(
            id=completion_id, created=created, model=ctx.model_name,
            system_fingerprint=ctx.fingerprint,
            choices=[
                Choice(index=i, message=ChatMessage(content="".join(texts[i]) or (
                           None if calls[i] else ""), tool_calls=calls[i] or None),
                       logprobs=_logprobs(self.logprobs[i]),
                       finish_reason=self.finish[i])  # type: ignore[arg-type]
                for i in range(len(texts))
            ],
            usage=_usage(usage),
        )


async def _complete(ctx: ServerContext, prepared: PreparedChat, body: ChatCompletionRequest,
                    completion_id: str, created: int, keep: Keeping | None = None) -> Response:
    answer = _Answer(prepared.n, bool(body.logprobs))
    usage = UsageCount()
    async with contextlib.aclosing(ctx.chat.run(prepared, usage, streaming=False)) as deltas:
        async for delta in deltas:
            answer.add(delta)
    completion = answer.completion(ctx, completion_id, created, usage)
    if keep is not None:  # stored before the answer goes out: listed once it is received
        await keep.save(completion)
    return Response(completion.to_json(), media_type="application/json")


async def _sse(ctx: ServerContext, prepared: PreparedChat, body: ChatCompletionRequest,
               completion_id: str, created: int, keep: Keeping | None = None
               ) -> AsyncIterator[str]:
    """OpenAI's sequence: role chunk per choice, content chunks, one finish chunk per
    choice, the optional usage chunk (`respond` adds [DONE], or an error event). A
    stored stream is written after its last chunk has gone out, before [DONE]."""
    include_usage = body.include_usage()
    want_logprobs = bool(body.logprobs)
    answer = _Answer(prepared.n, want_logprobs) if keep is not None else None
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
            if answer is not None:
                answer.add(delta)
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
    if keep is not None and answer is not None:
        await keep.save(answer.completion(ctx, completion_id, created, usage))
