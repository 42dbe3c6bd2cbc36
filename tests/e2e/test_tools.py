"""Tool calling against the real model: every tool_choice mode, streamed and not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pydantic
import pytest

from .conftest import assert_error

URL = "/v1/chat/completions"

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"},
                   "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMS = {"type": "object", "properties": {"timezone": {"type": "string"}},
               "required": ["timezone"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather",
                                      "description": "Current weather in a city",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time",
                                      "description": "Current time in a timezone",
                                      "parameters": TIME_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
PROMPT = "What is the weather in Paris and the time in Tokyo?"


def _ask(model_id: str, **kw: Any) -> dict[str, Any]:
    body = {"model": model_id, "messages": [{"role": "user", "content": PROMPT}],
            "tools": TOOLS, "max_tokens": 200, "temperature": 0}
    body.update(kw)
    return body


def _assert_valid_calls(message, *, names: frozenset[str] = frozenset(SCHEMAS)) -> None:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function"
        assert call.id.startswith("call_") and len(call.id) > 5
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in message.tool_calls}) == len(message.tool_calls)


def test_required_calls_validate(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(**_ask(model_id, tool_choice="required"))
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    _assert_valid_calls(choice.message)


def test_required_calls_validate_when_sampling(client: openai.OpenAI, model_id: str) -> None:
    # At temperature 1.0 the 135M model sometimes rambles inside a string argument
    # until max_tokens; which seeds do depends on the CPU's float rounding. So: every
    # finished call validates, a cut one says "length", and most seeds finish.
    finished = 0
    for seed in range(1, 7):
        resp = client.chat.completions.create(**_ask(
            model_id, tool_choice="required", temperature=1.0, seed=seed,
            parallel_tool_calls=False))
        choice = resp.choices[0]
        assert choice.finish_reason in ("tool_calls", "length"), (seed, choice)
        if choice.finish_reason == "tool_calls":
            _assert_valid_calls(choice.message)
            assert len(choice.message.tool_calls) == 1
            finished += 1
    assert finished >= 4, f"only {finished} of 6 seeds finished their tool call"


def test_named_function_is_the_only_call(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(**_ask(
        model_id, tool_choice={"type": "function", "function": {"name": "get_time"}}))
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    _assert_valid_calls(choice.message, names={"get_time"})
    assert len(choice.message.tool_calls) == 1


def test_parallel_off_allows_one_call(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.create(**_ask(
        model_id, tool_choice="required", parallel_tool_calls=False))
    _assert_valid_calls(resp.choices[0].message)
    assert len(resp.choices[0].message.tool_calls) == 1


def test_parallel_on_allows_several_calls(client: openai.OpenAI, model_id: str) -> None:
    """With parallel calls the grammar lets the model go on after its first call."""
    resp = client.chat.completions.create(**_ask(
        model_id, tool_choice="required", parallel_tool_calls=True, max_tokens=120))
    message = resp.choices[0].message
    assert len(message.tool_calls) >= 1
    for call in message.tool_calls[:-1]:  # all but a call cut by max_tokens are whole
        jsonschema.validate(json.loads(call.function.arguments),
                            SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_tool_choice_none_never_calls(client: openai.OpenAI, model_id: str,
                                      seed: int) -> None:
    """Even when told to call a tool, the decoder cannot produce a call."""
    messages = [{"role": "system", "content": "Always answer with a <tool_call> block."},
                {"role": "user", "content": PROMPT}]
    resp = client.chat.completions.create(**_ask(
        model_id, tool_choice="none", temperature=1.0, seed=seed, max_tokens=60,
        messages=messages))
    choice = resp.choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    assert "<tool_call>" not in (choice.message.content or "")


def test_auto_calls_are_valid_when_made(client: openai.OpenAI, model_id: str) -> None:
    """The model decides; whichever it picks, the output is well-formed."""
    for seed in range(4):
        resp = client.chat.completions.create(**_ask(
            model_id, tool_choice="auto", temperature=0.8, seed=seed))
        choice = resp.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            _assert_valid_calls(choice.message)
        else:
            assert choice.finish_reason in ("stop", "length")
            assert "<tool_call>" not in (choice.message.content or "")


def test_streamed_calls_equal_non_streamed(client: openai.OpenAI, model_id: str) -> None:
    body = _ask(model_id, tool_choice="required", seed=5)
    whole = client.chat.completions.create(**body).choices[0].message
    chunks = list(client.chat.completions.create(**body, stream=True))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                if delta.index not in calls:
                    # The first delta of a call carries its id, type, name, empty args.
                    assert delta.id and delta.id.startswith("call_")
                    assert delta.type == "function"
                    assert delta.function.name and delta.function.arguments == ""
                    calls[delta.index] = {"name": delta.function.name, "arguments": ""}
                else:
                    assert delta.id is None and delta.function.name is None
                    calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert sorted(calls) == list(range(len(calls)))
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls]


def test_stream_helper_assembles_calls(client: openai.OpenAI, model_id: str) -> None:
    body = _ask(model_id, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    with client.chat.completions.stream(**body) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    _assert_valid_calls(choice.message, names={"get_weather"})


class GetWeather(pydantic.BaseModel):
    """Current weather in a city."""

    city: str
    unit: str


def test_pydantic_function_tool(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.parse(
        model=model_id, messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required",
        temperature=0, max_tokens=200, parallel_tool_calls=False)
    call = resp.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_round_trip_puts_results_in_context(client: openai.OpenAI, model_id: str) -> None:
    first = client.chat.completions.create(**_ask(
        model_id, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False))
    call = first.choices[0].message.tool_calls[0]
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    ]
    result = "Sunny, 23 degrees celsius, light wind from the west."
    base = {"model": model_id, "tools": TOOLS, "temperature": 0, "max_tokens": 60}
    answer = client.chat.completions.create(
        **base, messages=[*history, {"role": "tool", "tool_call_id": call.id,
                                     "content": result}])
    without = client.chat.completions.create(
        **base, messages=[*history, {"role": "tool", "tool_call_id": call.id,
                                     "content": "ok"}])
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    # The tool result reached the prompt: it costs its tokens there ...
    assert answer.usage.prompt_tokens > without.usage.prompt_tokens + 8
    # ... and the model, reading it, answers with it.
    assert "23" in (choice.message.content or ""), choice.message.content


@pytest.mark.parametrize("tools", [
    [{"type": "function", "function": {"name": "bad name!", "parameters": WEATHER_PARAMS}}],
    [{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}],
    [{"type": "function"}],
    [{"type": "retrieval", "function": {"name": "f"}}],
    [{"type": "function", "function": {"name": "f"}},
     {"type": "function", "function": {"name": "f"}}],
], ids=["bad_name", "params_not_object", "no_function", "unknown_type", "duplicate"])
def test_malformed_tools_are_400(http: httpx.Client, model_id: str, tools: list) -> None:
    r = http.post(URL, json={"model": model_id, "tools": tools,
                             "messages": [{"role": "user", "content": "hi"}]})
    assert_error(r, 400)


@pytest.mark.parametrize("extra", [
    {"tool_choice": {"type": "function", "function": {"name": "no_such_tool"}}},
    {"tool_choice": "sometimes"},
    {"tool_choice": "required", "tools": None},
], ids=["unknown_function", "bad_mode", "required_without_tools"])
def test_bad_tool_choice_is_400(http: httpx.Client, model_id: str, extra: dict) -> None:
    body = {"model": model_id, "tools": TOOLS,
            "messages": [{"role": "user", "content": "hi"}], **extra}
    if body.get("tools") is None:
        body.pop("tools")
    r = http.post(URL, json=body)
    assert_error(r, 400)
