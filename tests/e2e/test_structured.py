"""response_format against the real model: validity is the decoder's guarantee.

Every schema of the corpus is generated greedily and at temperature 1.0 with three
seeds (n=3), and every output must validate with `jsonschema`.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pydantic
import pytest

from .conftest import assert_error
from .schema_corpus import CORPUS

URL = "/v1/chat/completions"
MAX_TOKENS = 400


def _fmt(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                   "strict": True}}


def _validate(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30
    assert len({name for name, _, _ in CORPUS}) == len(CORPUS)


async def test_every_schema_output_validates(aclient: openai.AsyncOpenAI,
                                            model_id: str) -> None:
    """Greedy and three seeded samples at temperature 1.0 for every corpus schema.

    Every output that ends with `stop` must validate. The 135M model sometimes loops
    inside an unbounded string, number or array until `max_tokens`; those end with
    `length` (the client's signal that the JSON is incomplete, as with OpenAI) and
    must stay a minority.
    """
    sem = asyncio.Semaphore(4)

    async def one(name: str, schema: dict, prompt: str, **kw):
        async with sem:
            resp = await aclient.chat.completions.create(
                model=model_id, messages=[{"role": "user", "content": prompt}],
                response_format=_fmt(name, schema), max_tokens=MAX_TOKENS, **kw)
        return name, schema, resp

    jobs = []
    for name, schema, prompt in CORPUS:
        jobs.append(one(name, schema, prompt, temperature=0))
        jobs.append(one(name, schema, prompt, temperature=1.0, seed=7, n=3))
    complete, cut, failures = 0, [], []
    for name, schema, resp in await asyncio.gather(*jobs):
        for choice in resp.choices:
            if choice.finish_reason == "length":
                cut.append(name)
                continue
            assert choice.finish_reason == "stop", (name, choice)
            try:
                _validate(choice.message.content, schema)
                complete += 1
            except (ValueError, jsonschema.ValidationError) as exc:
                failures.append((name, choice.message.content, str(exc)[:200]))
    assert not failures, failures
    total = complete + len(cut)
    print(f"\nstructured corpus: {complete}/{total} complete and valid, "
          f"{len(cut)} cut at max_tokens={MAX_TOKENS}: {sorted(set(cut))}")
    assert complete >= 0.75 * total, f"too many outputs cut by max_tokens: {cut}"


# What the model writes in JSON mode (and whether it loops in a string until
# max_tokens) depends on the prompt and on the CPU's float rounding, so each
# temperature asks two prompts and needs one finished object among six choices.
JSON_OBJECT_PROMPTS = (
    "Give the name and age of a fictional person as a JSON object.",
    'Reply with a JSON object like {"answer": "yes"}: is the sky blue?',
)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_object_always_parses(client: openai.OpenAI, model_id: str,
                                   temperature: float) -> None:
    complete = []
    for prompt in JSON_OBJECT_PROMPTS:
        resp = client.chat.completions.create(
            model=model_id, n=3, seed=11, temperature=temperature, max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": prompt}],
            response_format={"type": "json_object"})
        assert {c.finish_reason for c in resp.choices} <= {"stop", "length"}, resp.choices
        complete += [c for c in resp.choices if c.finish_reason == "stop"]
    assert complete, "no JSON object finished within max_tokens"
    for choice in complete:
        assert isinstance(json.loads(choice.message.content), dict)


def test_streamed_schema_output_validates(client: openai.OpenAI, model_id: str) -> None:
    name, schema, prompt = CORPUS[0]
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": prompt}], stream=True,
        response_format=_fmt(name, schema), temperature=0, max_tokens=MAX_TOKENS)
    text, finish = "", None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), schema)


def test_cut_constrained_output_reports_length(client: openai.OpenAI, model_id: str) -> None:
    name, schema, prompt = next(c for c in CORPUS if c[0] == "many_fields")
    resp = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": prompt}], max_tokens=5,
        response_format=_fmt(name, schema), temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice.message.content)


class Book(pydantic.BaseModel):
    title: str
    author: str
    year: int


def test_parse_with_pydantic_model(client: openai.OpenAI, model_id: str) -> None:
    resp = client.chat.completions.parse(
        model=model_id, messages=[{"role": "user", "content": "Recommend a novel."}],
        response_format=Book, temperature=0, max_tokens=MAX_TOKENS)
    parsed = resp.choices[0].message.parsed
    assert isinstance(parsed, Book)
    assert parsed == Book.model_validate_json(resp.choices[0].message.content)


def test_unsupported_keyword_is_400_naming_it(http: httpx.Client, model_id: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "if": {"required": ["a"]}, "then": {"required": ["a"]}}
    r = http.post(URL, json={"model": model_id, "messages": [{"role": "user", "content": "x"}],
                             "response_format": _fmt("cond", schema)})
    err = assert_error(r, 400)
    assert "if" in err["message"] or "then" in err["message"], err


def test_schema_that_is_not_an_object_is_400(http: httpx.Client, model_id: str) -> None:
    r = http.post(URL, json={"model": model_id, "messages": [{"role": "user", "content": "x"}],
                             "response_format": _fmt("bad", {"type": "no-such-type"})})
    assert_error(r, 400)
