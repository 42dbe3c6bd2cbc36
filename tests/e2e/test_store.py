"""Stored chat completions end to end: a real `chatd serve` with two API keys and a
SQLite store of this module's own, driven by the official client.

One server serves the module; the durability tests restart it (SIGTERM, kill -9) on
the same store file, so they run last. Every test tags what it creates with metadata
of its own and lists by it, so tests do not see each other's completions.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import KeyedServer, ServerProcess, assert_error, keyed_server

pytestmark = pytest.mark.timeout(300)

KEY_A = "sk-store-alice-0123456789"
KEY_B = "sk-store-bob-0123456789"
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    with keyed_server(store, (KEY_A, KEY_B), "--ctx-size", "1024") as s:
        yield s


@pytest.fixture
def client(server: KeyedServer) -> Iterator[openai.OpenAI]:
    with server.client() as c:
        yield c


@pytest.fixture
def tag() -> dict[str, str]:
    """Metadata that marks (and lists) only this test's completions."""
    return {"test": uuid.uuid4().hex}


def _create(client: openai.OpenAI, prompt: str = "Name a color.", **kw: Any) -> Any:
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], store=True, **kw)


def _stream(client: openai.OpenAI, prompt: str = "Name a color.", **kw: Any) -> str:
    """A stored streamed completion, read to its end; returns its id."""
    kw.setdefault("max_tokens", 8)
    ids = {chunk.id for chunk in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], store=True, stream=True,
        **kw)}
    assert len(ids) == 1
    return ids.pop()


def _comparable(completion: dict[str, Any]) -> tuple[dict[str, Any], list[float]]:
    """A completion without what may differ between two runs of one seeded request: its
    id, its second, how much of its prompt the cache held, and the last bits of its
    logprobs (returned apart, to compare loosely)."""
    data = json.loads(json.dumps(completion))
    for key in ("id", "created"):
        data.pop(key)
    data["usage"]["prompt_tokens_details"] = None
    numbers = []
    for choice in data["choices"]:
        for entry in (choice["logprobs"] or {}).get("content") or []:
            numbers.append(entry.pop("logprob"))
            for top in entry["top_logprobs"]:
                numbers.append(top.pop("logprob"))
    return data, numbers


# ------------------------------------------------------------------------ the API


def test_created_completions_are_stored_as_returned(client: openai.OpenAI,
                                                    tag: dict[str, str]) -> None:
    kw = {"seed": 7, "temperature": 0, "max_tokens": 12, "logprobs": True, "top_logprobs": 2}
    plain = _create(client, "Say something kind.", metadata={**tag, "kind": "plain"}, **kw)
    streamed_id = _stream(client, "Say something kind.", metadata={**tag, "kind": "stream"},
                          stream_options={"include_usage": False}, **kw)
    # listed by the time the response has ended: no wait
    stored_plain = client.chat.completions.retrieve(plain.id)
    stored_stream = client.chat.completions.retrieve(streamed_id)
    assert stored_plain.model_dump(exclude={"metadata"}) == plain.model_dump(
        exclude={"metadata"})
    assert stored_plain.metadata == {**tag, "kind": "plain"}
    assert stored_stream.metadata == {**tag, "kind": "stream"}
    # a stream is stored as the same request without streaming answers it
    raw_plain = json.loads(stored_plain.model_dump_json(exclude={"metadata"}))
    raw_stream = json.loads(stored_stream.model_dump_json(exclude={"metadata"}))
    shape_stream, numbers_stream = _comparable(raw_stream)
    shape_plain, numbers_plain = _comparable(raw_plain)
    assert shape_stream == shape_plain
    assert numbers_stream == pytest.approx(numbers_plain, abs=1e-3)
    assert raw_stream["choices"][0]["logprobs"]["content"]
    assert raw_stream["usage"]["completion_tokens"] > 0


def test_list_parameters_and_auto_pagination(server: KeyedServer,
                                             tag: dict[str, str]) -> None:
    count = 105

    async def create_all() -> list[str]:
        async with server.aclient() as aclient:
            turns = asyncio.Semaphore(16)

            async def one(i: int) -> str:
                async with turns:
                    meta = {**tag, "i": str(i)}
                    messages = [{"role": "user", "content": f"Item {i}."}]
                    if i % 4 == 0:
                        stream = await aclient.chat.completions.create(
                            model=MODEL, messages=messages, max_tokens=1, store=True,
                            metadata=meta, stream=True)
                        ids = {c.id async for c in stream}  # read to the end
                        return ids.pop()
                    done = await aclient.chat.completions.create(
                        model=MODEL, messages=messages, max_tokens=1, store=True,
                        metadata=meta)
                    return done.id

            return await asyncio.gather(*(one(i) for i in range(count)))

    created = asyncio.run(create_all())
    with server.client() as client:
        everything = list(client.chat.completions.list(metadata=tag, limit=100))
        ids = [c.id for c in everything]
        assert sorted(ids) == sorted(created) and len(set(ids)) == count
        stamps = [c.created for c in everything]
        assert stamps == sorted(stamps)
        desc = [c.id for c in client.chat.completions.list(metadata=tag, limit=100,
                                                           order="desc")]
        assert desc == ids[::-1]

        first = client.chat.completions.list(metadata=tag, limit=100)
        assert len(first.data) == 100 and first.has_more is True
        last = client.chat.completions.list(metadata=tag, limit=100, after=ids[99])
        assert [c.id for c in last.data] == ids[100:] and last.has_more is False
        exact = client.chat.completions.list(metadata=tag, limit=5, after=ids[99])
        assert len(exact.data) == 5 and exact.has_more is False
        small = [c.id for c in client.chat.completions.list(metadata=tag, limit=7)]
        assert small == ids

        one = client.chat.completions.list(metadata={**tag, "i": "17"})
        assert [c.metadata["i"] for c in one.data] == ["17"] and one.has_more is False
        assert len(client.chat.completions.list(metadata=tag, model=MODEL,
                                                limit=100).data) == 100
        assert client.chat.completions.list(metadata=tag, model="other").data == []


def test_sixteen_concurrent_storing_clients_lose_nothing(server: KeyedServer,
                                                         tag: dict[str, str]) -> None:
    def one(i: int, out: list[str]) -> None:
        with server.client() as c:
            if i % 2:
                out.append(_stream(c, f"Client {i} says hi.", metadata=tag, max_tokens=6))
            else:
                out.append(_create(c, f"Client {i} says hi.", metadata=tag,
                                   max_tokens=6).id)

    done: list[str] = []
    threads = [threading.Thread(target=one, args=(i, done)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert len(done) == 16
    with server.client() as client:
        listed = [c.id for c in client.chat.completions.list(metadata=tag, limit=100)]
    assert sorted(listed) == sorted(done)


def test_update_metadata_and_list_messages(client: openai.OpenAI,
                                           tag: dict[str, str]) -> None:
    done = client.chat.completions.create(
        model=MODEL, store=True, max_tokens=4, metadata={**tag, "stage": "draft"},
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [{"type": "text", "text": "Name "},
                                               {"type": "text", "text": "a fruit."}]}])
    updated = client.chat.completions.update(done.id, metadata={**tag, "stage": "final"})
    assert updated.id == done.id and updated.metadata == {**tag, "stage": "final"}
    assert updated.choices == done.choices
    assert client.chat.completions.retrieve(done.id).metadata["stage"] == "final"
    assert client.chat.completions.list(metadata={**tag, "stage": "draft"}).data == []
    assert [c.id for c in client.chat.completions.list(
        metadata={**tag, "stage": "final"})] == [done.id]

    messages = client.chat.completions.messages.list(done.id)
    assert [m.id for m in messages.data] == [f"{done.id}-0", f"{done.id}-1"]
    assert messages.has_more is False
    system, user = (m.model_dump() for m in messages.data)
    assert (system["role"], system["content"], system["content_parts"]) == \
        ("system", "You are terse.", None)
    assert (user["role"], user["content"]) == ("user", "Name a fruit.")
    assert [p["text"] for p in user["content_parts"]] == ["Name ", "a fruit."]
    one_by_one = [m.id for m in client.chat.completions.messages.list(done.id, limit=1)]
    assert one_by_one == [f"{done.id}-0", f"{done.id}-1"]
    backwards = client.chat.completions.messages.list(done.id, order="desc", limit=1)
    assert [m.id for m in backwards.data] == [f"{done.id}-1"] and backwards.has_more
    rest = client.chat.completions.messages.list(done.id, order="desc",
                                                 after=f"{done.id}-1")
    assert [m.id for m in rest.data] == [f"{done.id}-0"] and not rest.has_more

    cleared = client.chat.completions.update(done.id, metadata=None)
    assert cleared.metadata == {}


def test_delete_then_404(client: openai.OpenAI, tag: dict[str, str]) -> None:
    done = _create(client, metadata=tag, max_tokens=2)
    deleted = client.chat.completions.delete(done.id)
    assert (deleted.id, deleted.object, deleted.deleted) == \
        (done.id, "chat.completion.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(done.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(done.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list(done.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.update(done.id, metadata={"x": "y"})
    assert client.chat.completions.list(metadata=tag).data == []


def test_two_keys_are_isolated(server: KeyedServer, tag: dict[str, str]) -> None:
    with server.client(KEY_A) as alice, server.client(KEY_B) as bob:
        mine = _create(alice, metadata=tag, max_tokens=2)
        theirs = _create(bob, metadata=tag, max_tokens=2)
        for call in (lambda: bob.chat.completions.retrieve(mine.id),
                     lambda: bob.chat.completions.messages.list(mine.id),
                     lambda: bob.chat.completions.update(mine.id, metadata={"x": "y"}),
                     lambda: bob.chat.completions.delete(mine.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        assert [c.id for c in alice.chat.completions.list(metadata=tag)] == [mine.id]
        assert [c.id for c in bob.chat.completions.list(metadata=tag)] == [theirs.id]
        with pytest.raises(openai.BadRequestError):  # another key's id is no cursor
            bob.chat.completions.list(after=mine.id)
        assert alice.chat.completions.retrieve(mine.id).metadata == tag
    with server.client("sk-nobody-0123456789") as stranger, \
            pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.list()


def test_bad_parameters_are_openai_400s(server: KeyedServer, tag: dict[str, str]) -> None:
    with server.client() as client:
        done = _create(client, metadata=tag, max_tokens=2)
        for call, param in [
            (lambda: client.chat.completions.list(limit=0), "limit"),
            (lambda: client.chat.completions.list(limit=1000), "limit"),
            (lambda: client.chat.completions.list(order="sideways"), "order"),  # type: ignore[arg-type]
            (lambda: client.chat.completions.list(after="chatcmpl-nonexistent"), "after"),
            (lambda: client.chat.completions.messages.list(done.id, limit=0), "limit"),
            (lambda: client.chat.completions.messages.list(done.id, after="x-9"), "after"),
            (lambda: client.chat.completions.update(
                done.id, metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
            (lambda: _create(client, metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
            (lambda: _create(client, metadata={"k": "v" * 513}), "metadata.k"),
        ]:
            with pytest.raises(openai.BadRequestError) as info:
                call()
            body = info.value.body
            assert isinstance(body, dict) and body.get("param") == param, body
            assert body["type"] == "invalid_request_error"
    with server.http() as http:
        err = assert_error(http.get("/v1/chat/completions", params={"limit": 1000}), 400,
                           param="limit", code="invalid_value")
        assert "<= 100" in err["message"]
        assert_error(http.get("/v1/chat/completions", params={"limit": "many"}), 400,
                     param="limit")
        assert_error(http.get("/v1/chat/completions", params={"order": "up"}), 400,
                     param="order")


def test_storing_never_delays_the_tokens(server: KeyedServer, tag: dict[str, str]) -> None:
    """With the database's write lock held by someone else, a stored stream still gets
    every token and its finish chunk; only [DONE] waits for the write. Other requests
    are answered meanwhile (the event loop is not blocked)."""
    blocker = sqlite3.connect(server.store, timeout=30, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    locked = True
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to five."}],
                "max_tokens": 8, "stream": True, "store": True, "metadata": tag}
        with server.http() as http, http.stream("POST", "/v1/chat/completions",
                                               json=body) as response:
            lines = response.iter_lines()
            finished = None
            for line in lines:
                if line.startswith("data: {"):
                    chunk = json.loads(line[len("data: "):])
                    if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                        finished = chunk
                        break
            assert finished is not None and locked
            completion_id = finished["id"]
            with server.client() as client, pytest.raises(openai.NotFoundError):
                client.chat.completions.retrieve(completion_id)  # not written yet
            started = time.monotonic()
            with server.http() as other:
                r = other.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 2})
                assert r.status_code == 200, r.text
            assert time.monotonic() - started < 20
            blocker.execute("COMMIT")
            locked = False
            rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]", rest
        with server.client() as client:
            assert client.chat.completions.retrieve(completion_id).metadata == tag
    finally:
        if locked:
            blocker.execute("ROLLBACK")
        blocker.close()


def fuzz_stored_endpoints(url: str, key: str, real: list[str]) -> None:
    """The five endpoints against the server's own OpenAPI document: no 5xx, and every
    response as documented. Generated ids are swapped for the `real` ones half the
    time, so the fuzzer gets past the 404s (and deletes some of them)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    auth = {"Authorization": f"Bearer {key}"}
    # (an id alone, any string, has no invalid form: no negative cases for those two)
    operations = [("/v1/chat/completions", "GET", True),
                  ("/v1/chat/completions/{completion_id}", "GET", False),
                  ("/v1/chat/completions/{completion_id}", "POST", True),
                  ("/v1/chat/completions/{completion_id}/messages", "GET", True),
                  ("/v1/chat/completions/{completion_id}", "DELETE", False)]
    for path, method, negative in operations:
        modes = [(GenerationMode.POSITIVE, 25)]
        if negative:
            modes.append((GenerationMode.NEGATIVE, 15))
        for mode, examples in modes:

            @settings(deadline=None, derandomize=True, database=None, max_examples=examples,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=schema[path][method].as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                ids = case.path_parameters or {}
                pick = zlib.crc32(str(ids.get("completion_id")).encode())
                if "completion_id" in ids and pick % 2:
                    ids["completion_id"] = real[pick % len(real)]
                case.call_and_validate(headers=auth, timeout=60, checks=checks)

            run()


def test_schemathesis_finds_no_server_error(server: KeyedServer, tag: dict[str, str]) -> None:
    with server.client() as client:
        real = [_create(client, metadata=tag, max_tokens=2).id for _ in range(3)]
    fuzz_stored_endpoints(server.url, KEY_A, real)


# --------------------------------------------------------------- durability (last)


def test_restart_keeps_everything(server: KeyedServer, tag: dict[str, str]) -> None:
    def everything() -> dict[str, list[tuple[str, dict[str, str]]]]:
        seen = {}
        for key in (KEY_A, KEY_B):
            with server.client(key) as c:
                seen[key] = [(x.id, x.metadata or {})
                             for x in c.chat.completions.list(limit=100)]
        return seen

    for key in (KEY_A, KEY_B):
        with server.client(key) as c:
            _create(c, metadata=tag, max_tokens=2)
    before = everything()
    assert before[KEY_A] and before[KEY_B] and before[KEY_A] != before[KEY_B]
    server.stop()
    server.start()
    assert everything() == before


def test_kill_9_keeps_what_was_acknowledged(server: KeyedServer,
                                            tag: dict[str, str]) -> None:
    with server.client() as client:
        streamed = _stream(client, metadata=tag, max_tokens=4)
    server.kill_9()  # right after [DONE]
    server.start()
    with server.client() as client:
        plain = _create(client, metadata=tag, max_tokens=4)
    server.kill_9()  # right after the JSON answer
    server.start()
    with server.client() as client:
        assert client.chat.completions.retrieve(streamed).id == streamed
        assert client.chat.completions.retrieve(plain.id).choices == plain.choices
        assert {c.id for c in client.chat.completions.list(metadata=tag)} == \
            {streamed, plain.id}


def test_store_max_age_deletes_old_completions(server: KeyedServer,
                                               tag: dict[str, str]) -> None:
    server.stop()
    server.start("--store-max-age", "4s")
    with server.client() as client:
        # everything from the tests above is older than 4 seconds: swept at start-up
        deadline = time.monotonic() + 30
        while client.chat.completions.list(limit=1).data and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.chat.completions.list(limit=1).data == []
        fresh = _create(client, metadata=tag, max_tokens=2)
        assert client.chat.completions.retrieve(fresh.id).id == fresh.id
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                client.chat.completions.retrieve(fresh.id)
            except openai.NotFoundError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("a completion older than --store-max-age was not deleted")


def test_store_off_refuses_store_true(tmp_path: Path) -> None:
    off = ServerProcess(["--store", "off", "--ctx-size", "512"])
    try:
        off.wait_ready()
        with httpx.Client(base_url=off.url, timeout=60) as http:
            r = http.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 2, "store": True})
            err = assert_error(r, 400, param="store", code="unsupported_parameter")
            assert "--store off" in err["message"]
            r = http.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 2, "store": False, "metadata": {"a": "b"}})
            assert r.status_code == 200, r.text
            assert http.get("/v1/chat/completions").json()["data"] == []
    finally:
        off.stop()
        off.log_path.unlink(missing_ok=True)
