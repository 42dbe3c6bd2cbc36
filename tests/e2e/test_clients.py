"""Nested pydantic models ($defs, "$ref": "#/$defs/...") through the agent frameworks people
point at chatd: the OpenAI Agents SDK and pydantic-ai.

Each test drives the real server with the framework's own client code and checks that the
call comes back parsed as the nested model, and that what the framework sent really used
`$defs`/`$ref` (so a framework that starts inlining its schemas does not turn the test into
a no-op). The official client's `pydantic_function_tool` is covered in test_tools.py.
Other clients tried by hand are listed in the README.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest

PROMPT = "Save Ada Lovelace, who lives at 12 Baker Street, London."


class Address(pydantic.BaseModel):
    street: str = pydantic.Field(max_length=40)
    city: str = pydantic.Field(max_length=30)


class Person(pydantic.BaseModel):
    """A person and their home address."""

    name: str = pydantic.Field(max_length=30)
    home: Address


def _recording_client(server_url: str, sent: list[dict[str, Any]]) -> openai.AsyncOpenAI:
    """An AsyncOpenAI client on chatd that keeps the JSON body of every request it sends."""

    async def record(request: Any) -> None:
        if request.url.path.endswith("/chat/completions"):
            sent.append(json.loads(request.content))

    http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [record]})
    return openai.AsyncOpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0,
                              timeout=120.0, http_client=http_client)


def _sent_parameters(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The parameter schema of tool `name` in a sent request, checked to use $defs and $ref."""
    tools = {t["function"]["name"]: t["function"] for t in body.get("tools", [])}
    assert name in tools, f"request declared no tool {name!r}: {list(tools)}"
    params = tools[name]["parameters"]
    text = json.dumps(params)
    assert "$defs" in params and '"$ref": "#/$defs/' in text, \
        f"the framework no longer sends $defs/$ref, this test checks nothing: {text}"
    return params


async def test_openai_agents_function_tool_with_nested_argument(server_url: str,
                                                                model_id: str) -> None:
    """Agents SDK `function_tool` whose argument is a nested model (strict schema, $defs)."""
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)  # the default exporter would post traces to OpenAI

    invocations: list[Person] = []

    @agents.function_tool
    def save_person(person: Person) -> str:
        """Save a person and their home address."""
        invocations.append(person)
        return "saved"

    sent: list[dict[str, Any]] = []
    client = _recording_client(server_url, sent)
    try:
        agent = agents.Agent(
            name="saver", instructions="Save the person the user describes with save_person.",
            tools=[save_person], tool_use_behavior="stop_on_first_tool",
            model=agents.OpenAIChatCompletionsModel(model=model_id, openai_client=client),
            model_settings=agents.ModelSettings(temperature=0, max_tokens=250,
                                                tool_choice="required",
                                                parallel_tool_calls=False))
        result = await agents.Runner.run(agent, PROMPT, max_turns=2)
    finally:
        await client.close()

    assert len(sent) == 1, f"expected one model request, got {len(sent)}"
    _sent_parameters(sent[0], "save_person")
    # The SDK validated the call's arguments into the nested model and invoked the tool.
    assert len(invocations) == 1, invocations
    person = invocations[0]
    assert isinstance(person, Person) and isinstance(person.home, Address), person
    assert person.name and person.home.street and person.home.city, person
    assert result.final_output == "saved"


async def test_pydantic_ai_nested_structured_output(server_url: str, model_id: str) -> None:
    """pydantic-ai's default (tool) output mode with a nested output type."""
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    sent: list[dict[str, Any]] = []
    client = _recording_client(server_url, sent)
    try:
        model = OpenAIChatModel(model_id, provider=OpenAIProvider(openai_client=client))
        agent = Agent(model, output_type=Person, retries=1,
                      instructions="Give the person the user describes.",
                      model_settings={"temperature": 0, "max_tokens": 250,
                                      "parallel_tool_calls": False})
        result = await agent.run(PROMPT)
    finally:
        await client.close()

    assert isinstance(result.output, Person), result.output
    assert isinstance(result.output.home, Address), result.output
    # It came back as a call of the output tool, valid at the first request (the server
    # held the arguments to the schema, so no validation retry was needed).
    assert len(sent) == 1, f"expected one model request (no retry), got {len(sent)}"
    assert sent[0].get("tool_choice") == "required", sent[0].get("tool_choice")
    (output_tool,) = [t["function"]["name"] for t in sent[0]["tools"]]
    _sent_parameters(sent[0], output_tool)
    calls = [part for message in result.all_messages() if isinstance(message, ModelResponse)
             for part in message.parts if isinstance(part, ToolCallPart)]
    assert [c.tool_name for c in calls] == [output_tool], calls
    assert Person.model_validate(calls[0].args_as_dict()) == result.output
