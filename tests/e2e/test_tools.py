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


# ------------------------------------------------------------ nested parameter schemas
# Parameters from nested pydantic models carry `$defs` and `$ref`s that point at the
# parameters' own root; `"$ref": "#"` is a recursive tree. Each must resolve against
# the tool's parameters, not against the grammar that wraps the call.

ADDRESS = {"type": "object", "properties": {"street": {"type": "string", "maxLength": 40},
                                            "city": {"type": "string", "maxLength": 30}},
           "required": ["street", "city"], "additionalProperties": False}
PERSON_PARAMS = {
    "$defs": {"Address": ADDRESS},
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 30},
                   "home": {"$ref": "#/$defs/Address"},
                   "work": {"$ref": "#/$defs/Address"}},
    "required": ["name", "home", "work"], "additionalProperties": False,
}
TREE_PARAMS = {
    "type": "object",
    "properties": {"label": {"type": "string", "maxLength": 12},
                   "children": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}},
    "required": ["label", "children"], "additionalProperties": False,
}
NESTED_TOOLS = [
    {"type": "function", "function": {"name": "save_person", "parameters": PERSON_PARAMS,
                                      "description": "Save a person and their addresses"}},
    {"type": "function", "function": {"name": "save_tree", "parameters": TREE_PARAMS,
                                      "description": "Save a labelled tree"}},
]
NESTED_SCHEMAS = {"save_person": PERSON_PARAMS, "save_tree": TREE_PARAMS}
NESTED_PROMPT = ("Save Ada Lovelace, who lives at 12 Baker Street, London and works at "
                 "1 Mint Road, London.")


def _nested(model_id: str, **kw: Any) -> dict[str, Any]:
    body = {"model": model_id, "messages": [{"role": "user", "content": NESTED_PROMPT}],
            "tools": NESTED_TOOLS, "max_tokens": 250, "temperature": 0,
            "parallel_tool_calls": False}
    body.update(kw)
    return body


def _validate_nested(calls: list[tuple[str, str]], finish: str | None) -> None:
    assert finish == "tool_calls" and calls, (finish, calls)
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), NESTED_SCHEMAS[name])


def _stream_calls(client: openai.OpenAI, body: dict[str, Any]
                  ) -> tuple[list[tuple[str, str]], str | None]:
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, ["", ""])
                entry[0] += d.function.name or ""
                entry[1] += d.function.arguments or ""
    return [(n, a) for n, a in (calls[i] for i in sorted(calls))], finish


def _calls(client: openai.OpenAI, body: dict[str, Any], stream: bool
           ) -> tuple[list[tuple[str, str]], str | None]:
    if stream:
        return _stream_calls(client, body)
    resp = client.chat.completions.create(**body)
    message = resp.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    return calls, resp.choices[0].finish_reason


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("choice", [
    "required", {"type": "function", "function": {"name": "save_person"}},
], ids=["required", "named"])
def test_nested_parameter_schemas(client: openai.OpenAI, model_id: str, choice: Any,
                                  stream: bool) -> None:
    """`#/$defs/...` references: the call validates against the client's schema."""
    calls, finish = _calls(client, _nested(model_id, tool_choice=choice), stream)
    _validate_nested(calls, finish)
    if isinstance(choice, dict):
        assert [name for name, _ in calls] == ["save_person"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_recursive_parameter_schema(client: openai.OpenAI, model_id: str,
                                    stream: bool) -> None:
    """`"$ref": "#"` is the parameters themselves: children are trees, never calls.

    The 135M model often nests until max_tokens (how often depends on the CPU's
    rounding); every call, finished or cut, has the tree's shape at every depth, and
    some seed finishes with a valid tree.
    """
    finished = 0
    for seed in range(1, 9):
        body = _nested(model_id, tool_choice={"type": "function",
                                              "function": {"name": "save_tree"}},
                       temperature=1.0, seed=seed,
                       messages=[{"role": "user", "content": "Save a tree: root with "
                                  "children a and b."}])
        calls, finish = _calls(client, body, stream)
        assert [name for name, _ in calls] == ["save_tree"], calls
        arguments = calls[0][1]
        assert arguments.startswith('{"label": ') and '"name"' not in arguments
        if finish == "tool_calls":
            jsonschema.validate(json.loads(arguments), TREE_PARAMS)
            finished += 1
        else:
            assert finish == "length"
            assert arguments.count('"children": [{"label": ') >= 2  # nested, tree-shaped
    assert finished >= 1, "no seed of 8 finished its tree"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_nested_schemas_with_auto_and_none(client: openai.OpenAI, model_id: str,
                                           stream: bool) -> None:
    """`auto` may call (then the call validates) or answer; `none` answers in text."""
    system = {"role": "system", "content": "Use the tools to save what the user gives you."}
    messages = [system, {"role": "user", "content": NESTED_PROMPT}]
    for choice in ("auto", "none"):
        body = _nested(model_id, tool_choice=choice, messages=messages, max_tokens=150)
        calls, finish = _calls(client, body, stream)
        if choice == "none":
            assert not calls and finish in ("stop", "length")
        elif calls:
            _validate_nested(calls, finish)


class Address(pydantic.BaseModel):
    street: str = pydantic.Field(max_length=40)
    city: str = pydantic.Field(max_length=30)


class SavePerson(pydantic.BaseModel):
    """Save a person and their home address."""

    name: str = pydantic.Field(max_length=30)
    home: Address


class Node(pydantic.BaseModel):
    """A labelled tree."""

    label: str = pydantic.Field(max_length=12)
    children: list[Node] = pydantic.Field(max_length=2)


def test_pydantic_function_tool_with_nested_models(client: openai.OpenAI,
                                                   model_id: str) -> None:
    """The official helper's strict schema of a nested model ($defs, $ref)."""
    resp = client.chat.completions.parse(
        model=model_id, messages=[{"role": "user", "content": NESTED_PROMPT}],
        tools=[openai.pydantic_function_tool(SavePerson)], tool_choice="required",
        temperature=0, max_tokens=250, parallel_tool_calls=False)
    call = resp.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, SavePerson)


def test_pydantic_function_tool_with_a_recursive_model(client: openai.OpenAI,
                                                       model_id: str) -> None:
    parsed = []
    for seed in range(1, 9):
        try:
            resp = client.chat.completions.parse(
                model=model_id, tools=[openai.pydantic_function_tool(Node)],
                messages=[{"role": "user", "content": "Save a tree: root with children."}],
                tool_choice="required", temperature=1.0, seed=seed, max_tokens=250,
                parallel_tool_calls=False)
        except openai.LengthFinishReasonError:
            continue  # the small model nested until max_tokens
        parsed.append(resp.choices[0].message.tool_calls[0].function.parsed_arguments)
    assert parsed and all(isinstance(p, Node) for p in parsed), parsed


def test_objects_without_additional_properties_are_closed(client: openai.OpenAI,
                                                          model_id: str) -> None:
    """Listed keys are the keys: no extra key, even one the schema would tolerate."""
    schema = {"type": "object", "properties": {"result": {"type": "integer"}},
              "required": ["result"]}
    closed = {**schema, "additionalProperties": False}
    for seed in range(4):
        resp = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "What is 7 times 6?"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "answer", "schema": schema}},
            temperature=1.0, seed=seed, max_tokens=40)
        if resp.choices[0].finish_reason == "stop":
            jsonschema.validate(json.loads(resp.choices[0].message.content), closed)
    tool = {"type": "function", "function": {"name": "answer", "parameters": schema}}
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "What is 7 times 6?"}],
        tools=[tool], tool_choice="required", temperature=1.0, seed=3, max_tokens=40)
    call = resp.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), closed)


def test_unenforceable_tool_schema_names_the_tool(http: httpx.Client, model_id: str) -> None:
    bad = {"type": "object", "properties": {"code": {"type": "string", "if": {"minLength": 2},
                                                     "then": {"maxLength": 3}}}}
    tools = [TOOLS[0], {"type": "function", "function": {"name": "lookup", "parameters": bad}}]
    r = http.post(URL, json={"model": model_id, "tools": tools,
                             "messages": [{"role": "user", "content": "hi"}]})
    err = assert_error(r, 400, param="tools[1].function.parameters", code="invalid_schema")
    assert "lookup" in err["message"] and '"if"' in err["message"]


# ------------------------------------------------------------ a call stream's first chunk

def test_call_stream_opens_with_null_content(http: httpx.Client, model_id: str) -> None:
    """As OpenAI streams a call: the first chunk has role, `content: null` and the call's
    first fragment; no content chunk at all."""
    body = _ask(model_id, tool_choice="required", stream=True, parallel_tool_calls=False)
    with http.stream("POST", URL, json=body) as r:
        text = r.read().decode()
    chunks = [json.loads(line[6:]) for line in text.split("\n\n")
              if line.startswith("data: {")]
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    assert first["tool_calls"][0]["id"].startswith("call_")
    assert first["tool_calls"][0]["function"]["arguments"] == ""
    assert all("content" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])


def test_text_stream_with_tools_opens_with_empty_content(http: httpx.Client,
                                                         model_id: str) -> None:
    body = _ask(model_id, tool_choice="none", stream=True, max_tokens=10)
    with http.stream("POST", URL, json=body) as r:
        text = r.read().decode()
    chunks = [json.loads(line[6:]) for line in text.split("\n\n")
              if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                                "refusal": None}


def test_stream_helper_sees_no_content_in_a_call(client: openai.OpenAI, model_id: str) -> None:
    body = _ask(model_id, tool_choice="required", parallel_tool_calls=False)
    with client.chat.completions.stream(**body) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.delta" not in kinds and "content.done" not in kinds
    assert final.choices[0].message.content is None
    assert final.choices[0].message.tool_calls
