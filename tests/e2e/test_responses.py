"""The Responses API end to end: a real `chatd serve` with two API keys and a SQLite
store of this module's own, driven by the official client (and the OpenAI Agents SDK).

The restart test runs last: it stops the server and starts it again on the same
store file, and continues a conversation made before the restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from .conftest import KeyedServer, keyed_server, running_server

pytestmark = pytest.mark.timeout(300)

KEY_A = "sk-resp-alice-0123456789"
KEY_B = "sk-resp-bob-0123456789"
MODEL = "SmolLM2-135M-Instruct"
WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    store = tmp_path_factory.mktemp("responses") / "store.sqlite3"
    with keyed_server(store, (KEY_A, KEY_B), "--ctx-size", "2048") as s:
        yield s


@pytest.fixture
def client(server: KeyedServer) -> Iterator[openai.OpenAI]:
    with server.client() as c:
        yield c


def _create(client: openai.OpenAI, input: Any = "Name a color.", **kw: Any) -> Any:
    kw.setdefault("max_output_tokens", 16)
    return client.responses.create(model=MODEL, input=input, **kw)


# ------------------------------------------------------------------------ create


def test_create_retrieve_delete(client: openai.OpenAI) -> None:
    r = _create(client, "Say hello.", instructions="You are terse.", temperature=0,
                metadata={"case": "basic"})
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status in ("completed", "incomplete")
    assert r.output and r.output[0].type == "message"
    part = r.output[0].content[0]
    assert part.type == "output_text" and part.text == r.output_text and r.output_text
    assert r.instructions == "You are terse." and r.metadata == {"case": "basic"}
    assert r.usage is not None and r.usage.input_tokens > 5
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    again = client.responses.retrieve(r.id)
    assert again.model_dump() == r.model_dump()
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    r = _create(client, "Write a long story about a dragon and a knight.",
                max_output_tokens=16)
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 16
    assert r.output[0].status == "incomplete"


def test_seed_reproduces_the_output(client: openai.OpenAI) -> None:
    texts = {_create(client, "Tell me a fact.", temperature=1.0, max_output_tokens=24,
                     extra_body={"seed": 1234}).output_text for _ in range(2)}
    assert len(texts) == 1


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    r = _create(client, store=False)
    assert r.status in ("completed", "incomplete")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_text_format_json_schema_and_json_object(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = _create(client, "Give a person as JSON.", max_output_tokens=64, temperature=0,
                text={"format": {"type": "json_schema", "name": "person", "schema": schema,
                                 "strict": True}})
    data = json.loads(r.output_text)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)
    assert r.text is not None and r.text.format.type == "json_schema"
    r = _create(client, "Reply in JSON.", max_output_tokens=48, temperature=0,
                text={"format": {"type": "json_object"}})
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)
    else:
        assert r.output_text.lstrip().startswith("{")


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    r = client.responses.parse(model=MODEL, input="Name a city.", text_format=City,
                               max_output_tokens=64, temperature=0)
    assert isinstance(r.output_parsed, City) and r.output_parsed.name


def test_logprobs_are_included_when_asked(client: openai.OpenAI) -> None:
    r = _create(client, "Hi", include=["message.output_text.logprobs"], top_logprobs=2,
                temperature=0)
    part = r.output[0].content[0]
    assert part.logprobs and len(part.logprobs) <= 16
    assert "".join(lp.token for lp in part.logprobs) == part.text
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in part.logprobs)
    assert r.top_logprobs == 2
    plain = _create(client, "Hi")
    assert plain.output[0].content[0].logprobs == []


# --------------------------------------------------------------------- streaming


def test_stream_helper_and_event_sequence(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=256,
                                 temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response() if events[-1].type == "response.completed" \
            else None
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]
    tail = ["response.output_text.done", "response.content_part.done",
            "response.output_item.done"]
    assert types[-4:-1] == tail
    assert types[-1] in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == text and text
    last = events[-1].response
    assert last.output_text == text and last.usage is not None
    if final is not None:
        assert final.output_text == text
    assert client.responses.retrieve(last.id).output_text == text


def test_stream_raw_framing(server: KeyedServer) -> None:
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 16, "stream": True}
    r = httpx.post(server.url + "/v1/responses", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {KEY_A}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = r.text.split("\n\n")
    assert frames[-1] == "" and "[DONE]" not in r.text
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}"
        assert "error" not in data or data["type"] == "response.failed"


# ------------------------------------------------------------------------- tools


def test_function_call_round_trip(client: openai.OpenAI) -> None:
    r1 = _create(client, "What is the weather in Paris?", tools=[WEATHER_TOOL],
                 tool_choice="required", max_output_tokens=64, temperature=0)
    assert r1.status == "completed"
    calls = [item for item in r1.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    call = calls[0]
    assert call.id.startswith("fc_") and call.call_id and call.status == "completed"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert r1.tools[0].name == "get_weather"
    # Continue with the tool's result, from the stored state.
    r2 = _create(client, [{"type": "function_call_output", "call_id": call.call_id,
                           "output": "Sunny, 21 C"}], previous_response_id=r1.id,
                 tools=[WEATHER_TOOL], tool_choice="none", max_output_tokens=32)
    assert r2.status in ("completed", "incomplete")
    assert r2.output[0].type == "message" and r2.output_text
    assert r2.previous_response_id == r1.id
    assert r2.usage is not None and r2.usage.input_tokens > r1.usage.input_tokens
    # And statelessly: the call and its output sent back as items.
    r3 = _create(client, [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ], tools=[WEATHER_TOOL], tool_choice="none", store=False)
    assert r3.output[0].type == "message"


def test_named_tool_choice_streamed(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Weather in Oslo?", tools=[WEATHER_TOOL],
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 max_output_tokens=64, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[2] == "response.output_item.added"
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    args = "".join(e.delta for e in events
                   if e.type == "response.function_call_arguments.delta")
    assert done.arguments == args and json.loads(args)["city"]
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == args


# ------------------------------------------------------- state, items, ownership


def test_previous_response_id_uses_the_prefix_cache(client: openai.OpenAI) -> None:
    r1 = _create(client, "My name is Ada. Remember it.", instructions="Be brief.")
    r2 = _create(client, "What is my name?", previous_response_id=r1.id,
                 instructions="Be brief.")
    assert r2.usage is not None and r1.usage is not None
    assert r2.usage.input_tokens > r1.usage.input_tokens + r1.usage.output_tokens - 2
    assert r2.usage.input_tokens_details.cached_tokens > 0
    items = list(client.responses.input_items.list(r2.id))
    assert len(items) == 1 and items[0].content[0].text == "What is my name?"


def test_input_items_pagination(client: openai.OpenAI) -> None:
    sent = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    r = _create(client, sent)
    page = client.responses.input_items.list(r.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    desc = [item.content[0].text for item in client.responses.input_items.list(r.id,
                                                                               limit=2)]
    assert desc == [f"message {i}" for i in reversed(range(5))]
    asc = [item.content[0].text
           for item in client.responses.input_items.list(r.id, limit=3, order="asc")]
    assert asc == [f"message {i}" for i in range(5)]
    assert all(item.id for item in page.data)


def test_another_key_sees_nothing(server: KeyedServer, client: openai.OpenAI) -> None:
    r = _create(client)
    with server.client(KEY_B) as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(r.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.input_items.list(r.id)
        with pytest.raises(openai.NotFoundError) as err:
            _create(other, "Hi", previous_response_id=r.id)
        assert err.value.code == "previous_response_not_found"
    assert client.responses.retrieve(r.id).id == r.id
    with (openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as bad,
          pytest.raises(openai.AuthenticationError)):
        bad.responses.retrieve(r.id)


# -------------------------------------------------------------------- unsupported


@pytest.mark.parametrize(("extra", "param", "named"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type",
     "file_search"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 10, "display_height": 10,
                 "environment": "linux"}]}, "tools[0].type", "computer_use_preview"),
    ({"reasoning": {"effort": "high"}}, "reasoning", "reasoning"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0].type",
     "reasoning"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type",
     "item_reference"),
    ({"truncation": "auto"}, "truncation", "auto"),
    ({"conversation": "conv_1"}, "conversation", "conversation"),
    ({"include": ["reasoning.encrypted_content"]}, "include[0]", "reasoning.encrypted"),
])
def test_unsupported_is_a_400_naming_it(client: openai.OpenAI, extra: dict[str, Any],
                                        param: str, named: str) -> None:
    body: dict[str, Any] = {"input": "Hi", **extra}
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, **body)
    assert err.value.param == param
    assert named in err.value.message


def test_too_long_input_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _create(client, "word " * 3000, truncation="disabled")
    assert err.value.code == "context_length_exceeded"


# -------------------------------------------------------------------- background


def _poll(client: openai.OpenAI, response_id: str, until: set[str],
          timeout: float = 60) -> tuple[Any, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.responses.retrieve(response_id)
        if not seen or seen[-1] != r.status:
            seen.append(r.status)
        if r.status in until:
            return r, seen
        time.sleep(0.05)
    raise AssertionError(f"{response_id} stayed {seen}")


def test_background_completes(client: openai.OpenAI) -> None:
    r = _create(client, "Name three fruits.", background=True, max_output_tokens=24)
    assert r.status == "queued" and r.background
    done, seen = _poll(client, r.id, {"completed", "incomplete"})
    assert set(seen) <= {"queued", "in_progress", "completed", "incomplete"}
    assert done.output_text and done.usage is not None


def test_background_cancel(client: openai.OpenAI) -> None:
    # The schema makes the output long whatever the model would rather say.
    many = {"type": "object", "properties": {"n": {
        "type": "array", "items": {"type": "integer"}, "minItems": 400}},
        "required": ["n"], "additionalProperties": False}
    r = _create(client, "List numbers.", background=True, max_output_tokens=1500,
                text={"format": {"type": "json_schema", "name": "numbers", "schema": many}})
    _poll(client, r.id, {"in_progress"})
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"
    foreground = _create(client)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(foreground.id)


def test_limits_apply_to_responses() -> None:
    """Tokens per minute: a background response reserves its worst case at the POST
    (429), and settles what it used when it ends; /metrics counts the route."""
    with running_server(["--tpm", "400", "--api-key", KEY_A]) as s, \
            openai.OpenAI(base_url=s.url + "/v1", api_key=KEY_A, max_retries=0) as c:
        small = _create(c, "Hi", background=True)
        with pytest.raises(openai.RateLimitError):
            _create(c, "Hi", background=True, max_output_tokens=1000)
        with pytest.raises(openai.RateLimitError):
            _create(c, "Hi", max_output_tokens=1000)
        done, _ = _poll(c, small.id, {"completed", "incomplete"})
        assert done.usage is not None
        metrics = httpx.get(s.url + "/metrics", timeout=10).text
        assert 'route="/v1/responses"' in metrics


def test_background_stream_and_resume(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Name three fruits.",
                                          background=True, stream=True,
                                          max_output_tokens=24))
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0].response.status == "queued" and events[0].response.background
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    rid = events[0].response.id
    assert client.responses.retrieve(rid).output_text == events[-1].response.output_text
    # The SDK's helper resumes after a sequence number (it filters a full replay).
    with client.responses.stream(response_id=rid, starting_after=4) as stream:
        resumed = list(stream)
    assert [e.sequence_number for e in resumed] == list(range(5, len(events)))
    assert [e.type for e in resumed] == types[5:]
    foreground = _create(client)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.retrieve(foreground.id, stream=True)
    assert err.value.param == "stream"


def test_cancel_ends_a_followed_stream(client: openai.OpenAI) -> None:
    many = {"type": "object", "properties": {"n": {
        "type": "array", "items": {"type": "integer"}, "minItems": 400}},
        "required": ["n"], "additionalProperties": False}
    stream = client.responses.create(model=MODEL, input="List numbers.", background=True,
                                     stream=True, max_output_tokens=1500,
                                     text={"format": {"type": "json_schema",
                                                      "name": "numbers", "schema": many}})
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) == 8:
            assert client.responses.cancel(seen[0].response.id).status == "cancelled"
    assert seen[-1].type == "error" and seen[-1].code == "response_cancelled"
    assert not any(e.type == "response.completed" for e in seen)


# ------------------------------------------------------------------ Agents SDK


def test_openai_agents_sdk_with_a_function_tool(server: KeyedServer) -> None:
    import asyncio

    from agents import (
        Agent,
        ModelSettings,
        Runner,
        function_tool,
        set_default_openai_client,
        set_tracing_disabled,
    )

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"Sunny in {city}"

    async def run() -> Any:
        set_tracing_disabled(True)
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY_A,
                                    max_retries=0, timeout=120.0)
        set_default_openai_client(client, use_for_tracing=False)
        agent = Agent(name="weather", instructions="Use the tool to answer.", model=MODEL,
                      tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                      model_settings=ModelSettings(tool_choice="required", max_tokens=64,
                                                   temperature=0))
        result = await Runner.run(agent, "What is the weather in Paris?")
        # The default behaviour: the tool's output goes back to the model (as a
        # function_call_output item beside the function_call), which then answers.
        again = agent.clone(tool_use_behavior="run_llm_again",
                            model_settings=ModelSettings(tool_choice="required",
                                                         max_tokens=128, temperature=0))
        answered = await Runner.run(again, "What is the weather in Paris?", max_turns=4)
        plain = Agent(name="plain", instructions="Answer in one short sentence.",
                      model=MODEL, model_settings=ModelSettings(max_tokens=256,
                                                                temperature=0))
        answer = await Runner.run(plain, "Say hi.")
        await client.close()
        return result, answered, answer

    result, answered, answer = asyncio.run(run())
    assert calls and result.final_output == f"Sunny in {calls[0]}"
    kinds = [type(item).__name__ for item in answered.new_items]
    calls_made = kinds.count("ToolCallItem")  # the model may call it more than once
    assert calls_made >= 1 and kinds.count("ToolCallOutputItem") == calls_made, kinds
    assert kinds[-1] == "MessageOutputItem" and isinstance(answered.final_output, str)
    assert isinstance(answer.final_output, str) and answer.final_output


# ----------------------------------------------------------------- restart (last)

LONG_FORMAT = {"format": {"type": "json_schema", "name": "numbers", "schema": {
    "type": "object", "properties": {"n": {"type": "array", "items": {"type": "integer"},
                                           "minItems": 400}},
    "required": ["n"], "additionalProperties": False}}}


def test_conversation_survives_a_restart(server: KeyedServer) -> None:
    with server.client() as client:
        r1 = _create(client, "My favourite number is 7.")
        running = _create(client, "List numbers.", background=True, max_output_tokens=1500,
                          text=LONG_FORMAT)
        _poll(client, running.id, {"in_progress"})
    server.stop()  # SIGTERM: a background response still running is cancelled
    server.start()
    with server.client() as client:
        assert client.responses.retrieve(r1.id).output_text == r1.output_text
        r2 = _create(client, "What is my favourite number?", previous_response_id=r1.id)
        assert client.responses.retrieve(running.id).status == "cancelled"
    assert r2.status in ("completed", "incomplete")
    assert r2.usage is not None and r1.usage is not None
    assert r2.usage.input_tokens > r1.usage.input_tokens


def test_a_response_whose_server_was_killed_is_failed(server: KeyedServer) -> None:
    with server.client() as client:
        running = _create(client, "List numbers.", background=True, max_output_tokens=1500,
                          text=LONG_FORMAT)
        _poll(client, running.id, {"in_progress"})
    server.kill_9()  # no chance to write anything: its heartbeat just stops
    server.start()
    with server.client() as client:
        found, seen = _poll(client, running.id, {"failed"}, timeout=40)
    assert set(seen) <= {"in_progress", "failed"}  # in_progress until the beat is 15 s old
    assert found.error is not None and "stopped" in found.error.message
