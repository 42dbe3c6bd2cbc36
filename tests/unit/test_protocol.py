"""Wire-format models: what the request accepts and rejects, and the exact response JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from chatd.api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ContentChunks,
    CustomTool,
    Delta,
    FunctionCallDelta,
    FunctionTool,
    ImagePart,
    ModelCard,
    ModelList,
    NamedToolChoice,
    ResponseFormatJSONSchema,
    TokenLogprobOut,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
    UserMessage,
)

USER = {"role": "user", "content": "Hi"}


def req(**kw: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    body.update(kw)
    return ChatCompletionRequest.model_validate(body)


def error_of(**kw: Any) -> dict[str, Any]:
    """The single (first) pydantic error for a request built from ``kw``."""
    with pytest.raises(ValidationError) as exc:
        req(**kw)
    return exc.value.errors()[0]


# --------------------------------------------------------------------- accepted input

# Every request property of OpenAI's spec (openai-openapi f85dbe22, CreateChatCompletionRequest)
# with a legitimate value: an official client sending any of them must not be rejected here.
ALL_SPEC_FIELDS: dict[str, Any] = {
    "temperature": 0.7, "top_p": 0.9, "n": 2, "stream": True,
    "stream_options": {"include_usage": True, "include_obfuscation": False},
    "stop": ["\n", "END"], "max_completion_tokens": 50, "max_tokens": 60,
    "frequency_penalty": 0.5, "presence_penalty": -0.5, "logit_bias": {"50256": -100},
    "logprobs": True, "top_logprobs": 5, "seed": -(2**63),
    "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "description": "d", "schema": {"type": "object"}, "strict": True}},
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "w",
                                                 "parameters": {"type": "object"},
                                                 "strict": None}},
              {"type": "custom", "custom": {"name": "sql", "format": {
                  "type": "grammar", "grammar": {"definition": "start: x", "syntax": "lark"}}}}],
    "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}},
    "parallel_tool_calls": False,
    "function_call": {"name": "f"},
    "functions": [{"name": "f", "description": "d", "parameters": {"type": "object"}}],
    "modalities": ["text", "audio"],
    "audio": {"voice": {"id": "voice_1234"}, "format": "pcm16"},
    "reasoning_effort": "xhigh", "verbosity": "low", "service_tier": "flex", "store": False,
    "metadata": {"k": "v"},
    "prediction": {"type": "content", "content": [{"type": "text", "text": "x"}]},
    "web_search_options": {"user_location": {"type": "approximate",
                                             "approximate": {"city": "Paris"}},
                           "search_context_size": "low"},
    "moderation": {"model": "omni-moderation-latest",
                   "policy": {"input": {"mode": "block"}, "output": None}},
    "prompt_cache_key": "k", "prompt_cache_retention": "24h",
    "prompt_cache_options": {"ttl": "30m", "mode": "explicit"},
    "safety_identifier": "user-hash", "user": "u1",
}


def test_every_spec_field_is_accepted() -> None:
    r = req(**ALL_SPEC_FIELDS)
    assert r.top_logprobs == 5
    assert isinstance(r.tools[0], FunctionTool)
    assert isinstance(r.tools[1], CustomTool)  # parsed, so the route can reject it by name
    assert isinstance(r.response_format, ResponseFormatJSONSchema)
    assert r.response_format.json_schema.schema_ == {"type": "object"}


def test_local_sampler_extensions() -> None:
    r = req(top_k=40, min_p=0.05, repetition_penalty=1.1)
    assert (r.top_k, r.min_p, r.repetition_penalty) == (40, 0.05, 1.1)
    for field, bad in [("top_k", -1), ("min_p", 1.5), ("repetition_penalty", 0),
                       ("repetition_penalty", 11)]:
        assert error_of(**{field: bad})["loc"] == (field,)


def test_nulls_are_accepted_for_nullable_fields() -> None:
    nullable = ["temperature", "top_p", "n", "stream", "stream_options", "stop", "max_tokens",
                "max_completion_tokens", "frequency_penalty", "presence_penalty",
                "logit_bias", "logprobs", "top_logprobs", "seed", "modalities", "audio",
                "reasoning_effort", "verbosity", "service_tier", "store", "metadata",
                "prediction", "moderation", "prompt_cache_key", "prompt_cache_retention",
                "safety_identifier"]
    r = req(**dict.fromkeys(nullable))
    assert r.effective_max_tokens() is None
    assert r.stop_list() == []


def test_all_message_roles_and_part_types() -> None:
    r = req(messages=[
        {"role": "system", "content": "s", "name": "rules"},
        {"role": "developer", "content": [{"type": "text", "text": "d"}]},
        {"role": "user", "name": "bob", "content": [
            {"type": "text", "text": "look", "prompt_cache_breakpoint": {"mode": "explicit"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-1"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "custom", "custom": {"name": "sql", "input": "select 1"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "1"}],
         "name": "sql"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "function", "name": "legacy", "content": None},
        USER,
    ])
    user = r.messages[2]
    assert isinstance(user, UserMessage)
    assert isinstance(user.content, list)
    assert isinstance(user.content[1], ImagePart)  # rejecting images is the route's job
    assert user.content[1].image_url.url.startswith("data:")
    assistant = r.messages[3]
    assert isinstance(assistant, AssistantMessage) and assistant.content is None
    assert isinstance(assistant.tool_calls[0], ToolCall)
    # The chat layer reads messages back as plain dicts.
    dumped = r.messages[3].model_dump(exclude_none=True)
    assert dumped["tool_calls"][0]["function"]["arguments"] == "{\"city\": \"Paris\"}"


def test_tool_call_type_may_be_omitted() -> None:
    r = req(messages=[USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "{}"}}]}])
    assert r.messages[1].tool_calls[0].type == "function"


def test_tool_choice_forms() -> None:
    for mode in ("none", "auto", "required"):
        assert req(tool_choice=mode).tool_choice == mode
    named = req(tool_choice={"type": "function", "function": {"name": "f"}}).tool_choice
    assert isinstance(named, NamedToolChoice) and named.function.name == "f"
    assert req(tool_choice={"type": "custom", "custom": {"name": "sql"}}).tool_choice


def test_json_schema_alias_round_trip() -> None:
    r = req(response_format={"type": "json_schema",
                             "json_schema": {"name": "a", "schema": {"type": "object"}}})
    dumped = r.response_format.model_dump(exclude_none=True)
    assert dumped == {"type": "json_schema",
                      "json_schema": {"name": "a", "schema": {"type": "object"}}}
    assert "schema_" not in r.model_dump_json()


# ------------------------------------------------------------------------ helpers


def test_effective_max_tokens_prefers_max_completion_tokens() -> None:
    assert req().effective_max_tokens() is None
    assert req(max_tokens=20).effective_max_tokens() == 20
    assert req(max_completion_tokens=6, max_tokens=20).effective_max_tokens() == 6


def test_stop_list_normalised() -> None:
    assert req(stop="END").stop_list() == ["END"]
    assert req(stop=["a", "", "b"]).stop_list() == ["a", "b"]
    assert req(stop="").stop_list() == []
    assert req(stop=[]).stop_list() == []


def test_include_usage() -> None:
    assert not req().include_usage()
    assert not req(stream=True).include_usage()
    assert not req(stream=True, stream_options={"include_usage": False}).include_usage()
    assert req(stream=True, stream_options={"include_usage": True}).include_usage()
    assert not req(stream=False, stream_options={"include_usage": True}).include_usage()


# ---------------------------------------------------------------------- rejections


def test_unknown_top_level_field() -> None:
    err = error_of(foo=1)
    assert (err["type"], err["loc"]) == ("extra_forbidden", ("foo",))


def test_unknown_message_key() -> None:
    err = error_of(messages=[{"role": "user", "content": "x", "colour": "red"}])
    assert err["type"] == "extra_forbidden"
    assert err["loc"][-1] == "colour"


def test_top_logprobs_requires_logprobs() -> None:
    err = error_of(top_logprobs=3)
    assert err["loc"] == ("top_logprobs",)
    assert error_of(top_logprobs=3, logprobs=False)["loc"] == ("top_logprobs",)
    assert req(top_logprobs=3, logprobs=True).top_logprobs == 3
    assert req(top_logprobs=0).top_logprobs == 0  # asks for nothing: harmless
    assert error_of(top_logprobs=21, logprobs=True)["loc"] == ("top_logprobs",)


def test_stop_at_most_four() -> None:
    assert req(stop=["a", "b", "c", "d"]).stop_list() == ["a", "b", "c", "d"]
    err = error_of(stop=["a", "b", "c", "d", "e"])
    assert err["loc"] == ("stop",)
    assert "4" in err["msg"]


@pytest.mark.parametrize("bias", [{"abc": 5}, {"-1": 5}, {"1.5": 5}, {"28": 200},
                                  {"28": -101}, {"28": "x"}, {"28": True}])
def test_logit_bias_invalid(bias: dict[str, Any]) -> None:
    assert error_of(logit_bias=bias)["loc"] == ("logit_bias",)


def test_logit_bias_valid() -> None:
    assert req(logit_bias={"28": 100, "2": -100, "5": 0.5}).logit_bias == {
        "28": 100.0, "2": -100.0, "5": 0.5}


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", 3), ("temperature", -0.1), ("top_p", 1.5), ("n", 0), ("n", 129),
    ("presence_penalty", 2.5), ("frequency_penalty", -3), ("max_tokens", 0),
    ("max_completion_tokens", -1), ("seed", 2**63), ("top_logprobs", -1),
])
def test_out_of_range(field: str, value: Any) -> None:
    assert error_of(**{field: value})["loc"] == (field,)


def test_messages_required_and_non_empty() -> None:
    assert error_of(messages=[])["type"] == "too_short"
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate({"model": "m"})
    assert exc.value.errors()[0]["loc"] == ("messages",)


def test_tool_message_needs_tool_call_id() -> None:
    err = error_of(messages=[USER, {"role": "tool", "content": "x"}])
    assert err["type"] == "missing"
    assert err["loc"][0] == "messages" and err["loc"][1] == 1
    assert err["loc"][-1] == "tool_call_id"


def test_assistant_needs_content_unless_tool_calls() -> None:
    err = error_of(messages=[USER, {"role": "assistant"}])
    assert err["loc"][-1] == "content"
    # An invalid tool_calls is reported as itself, not as a missing content.
    err = error_of(messages=[USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "f"}}]}])
    assert err["loc"][-1] == "arguments"


def test_system_message_takes_text_parts_only() -> None:
    err = error_of(messages=[{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "u"}}]}])
    assert err["loc"][:2] == ("messages", 0)


def test_function_name_pattern() -> None:
    err = error_of(tools=[{"type": "function", "function": {"name": "bad name"}}])
    assert err["type"] == "string_pattern_mismatch"
    err = error_of(response_format={"type": "json_schema", "json_schema": {"name": "a/b"}})
    assert err["type"] == "string_pattern_mismatch"


def test_invalid_enum_values() -> None:
    assert error_of(tool_choice="sometimes")["loc"][0] == "tool_choice"
    assert error_of(reasoning_effort="huge")["loc"] == ("reasoning_effort",)
    assert error_of(response_format={"type": "xml"})["loc"][0] == "response_format"


# ----------------------------------------------------------------- response shapes

CHUNK = {"id": "chatcmpl-1", "created": 1694268190, "model": "m", "system_fingerprint": "fp_1"}


def chunk_json(include_usage: bool = False, **kw: Any) -> dict[str, Any]:
    return json.loads(ChatCompletionChunk(**CHUNK, **kw).to_json(include_usage))


def test_first_chunk_has_role_and_empty_content() -> None:
    data = chunk_json(choices=[ChunkChoice(index=0, delta=Delta(role="assistant", content=""))])
    assert data == {**CHUNK, "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
         "finish_reason": None}]}


def test_content_chunk_and_final_chunk_deltas() -> None:
    content = chunk_json(choices=[ChunkChoice(index=0, delta=Delta(content="Hel"))])
    assert content["choices"][0]["delta"] == {"content": "Hel"}
    final = chunk_json(choices=[ChunkChoice(index=0, delta=Delta(), finish_reason="stop")])
    assert final["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                   "finish_reason": "stop"}
    assert chunk_json(choices=[ChunkChoice(index=1, finish_reason="length")]
                      )["choices"][0]["delta"] == {}
    # An explicitly set null is written (OpenAI sends "refusal": null on the first chunk).
    assert Delta(role="assistant", content="", refusal=None).model_dump() == {
        "role": "assistant", "content": "", "refusal": None}


def test_tool_call_delta_only_set_keys() -> None:
    first = ToolCallDelta(index=0, id="call_1", type="function",
                          function=FunctionCallDelta(name="f", arguments=""))
    later = ToolCallDelta(index=0, function=FunctionCallDelta(arguments="{\"a\""))
    data = chunk_json(choices=[ChunkChoice(index=0, delta=Delta(tool_calls=[first, later]))])
    assert data["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": "{\"a\""}},
    ]


def test_usage_key_only_when_asked() -> None:
    choices = [ChunkChoice(index=0, delta=Delta(content="x"))]
    assert "usage" not in chunk_json(choices=choices)
    with_null = chunk_json(True, choices=choices)
    assert "usage" in with_null and with_null["usage"] is None
    last = chunk_json(True, usage=Usage.from_counts(5, 3))
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == 8
    # A chunk that carries usage always shows it.
    assert chunk_json(False, usage=Usage.from_counts(5, 3))["usage"]["prompt_tokens"] == 5


def test_chunk_to_sse_and_to_dict() -> None:
    chunk = ChatCompletionChunk(**CHUNK, choices=[ChunkChoice(index=0, delta=Delta())])
    frame = chunk.to_sse()
    assert frame.startswith("data: {") and frame.endswith("}\n\n")
    assert "\n" not in frame[:-2]
    assert json.loads(frame[len("data: "):]) == chunk.to_dict()
    assert "usage" in chunk.to_dict(include_usage=True)
    assert "service_tier" not in chunk.to_dict()


@pytest.mark.parametrize("include_usage", [False, True])
def test_templated_content_chunks_match_the_model(include_usage: bool) -> None:
    chunks = ContentChunks(CHUNK, include_usage)
    texts = ["Hel", "", 'say "hi"\\n', "line\nbreak\ttab", "\x00\x1f\x7f", "é 中文 🙂",
             "\u2028\u2029", "</script>", ContentChunks._MARK]
    for index in (0, 2):
        for text in texts:
            frame = chunks.sse(index, text)
            assert frame.startswith("data: {") and frame.endswith("}\n\n")
            assert "\n" not in frame[:-2]
            model = ChatCompletionChunk(**CHUNK, choices=[
                ChunkChoice(index=index, delta=Delta(content=text))]).to_sse(include_usage)
            assert json.loads(frame[len("data: "):]) == json.loads(model[len("data: "):])


def test_templated_content_chunks_survive_the_marker_in_a_field() -> None:
    fields = {**CHUNK, "model": "m-" + ContentChunks._MARK}
    frame = ContentChunks(fields, False).sse(0, "x")
    data = json.loads(frame[len("data: "):])
    assert data["model"] == fields["model"]
    assert data["choices"][0]["delta"] == {"content": "x"}


def test_chunk_logprobs_shape() -> None:
    lp = ChoiceLogprobs(content=[TokenLogprobOut(
        token="Hi", logprob=-0.5, bytes=[72, 105],
        top_logprobs=[TopLogprob(token="Hi", logprob=-0.5, bytes=[72, 105])])])
    data = chunk_json(choices=[ChunkChoice(index=0, delta=Delta(content="Hi"), logprobs=lp)])
    assert data["choices"][0]["logprobs"] == {"content": [{
        "token": "Hi", "logprob": -0.5, "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}],
        "refusal": None}


def test_completion_shape() -> None:
    completion = ChatCompletion(
        id="chatcmpl-1", created=1741569952, model="m", system_fingerprint="fp_1",
        choices=[Choice(index=0, message=ChatMessage(content="Hello!"), finish_reason="stop")],
        usage=Usage.from_counts(19, 10, cached_tokens=4))
    data = json.loads(completion.to_json())
    assert data == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1741569952, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!",
                                             "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                  "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
        "system_fingerprint": "fp_1",
    }


def test_completion_with_logprobs_and_tool_calls() -> None:
    message = ChatMessage(content=None, tool_calls=[
        ToolCall(id="call_1", function={"name": "f", "arguments": "{}"})])
    completion = ChatCompletion(
        id="c", created=1, model="m", service_tier="default",
        choices=[Choice(index=0, message=message, finish_reason="tool_calls",
                        logprobs=ChoiceLogprobs(content=[]))],
        usage=Usage())
    data = json.loads(completion.to_json())
    msg = data["choices"][0]["message"]
    assert msg["content"] is None and msg["refusal"] is None
    assert msg["tool_calls"] == [{"id": "call_1", "type": "function",
                                  "function": {"name": "f", "arguments": "{}"}}]
    assert "function_call" not in msg
    assert data["choices"][0]["logprobs"] == {"content": [], "refusal": None}
    assert data["service_tier"] == "default"
    assert data["system_fingerprint"] is None


def test_model_list_shape() -> None:
    data = json.loads(ModelList(data=[ModelCard(id="m", created=1, owned_by="chatd")]).to_json())
    assert data == {"object": "list",
                    "data": [{"id": "m", "object": "model", "created": 1, "owned_by": "chatd",
                              "input_modalities": ["text"]}]}
