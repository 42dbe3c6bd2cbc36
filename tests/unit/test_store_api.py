"""The stored-completion routes over a real store, without a model: parameters, pages,
errors in OpenAI's envelope, and ownership by API key. Also the pieces the chat
route uses to keep a completion (input messages, a stream's assembled answer).
"""

from __future__ import annotations

import hashlib
import json
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from chatd.api.app import create_app
from chatd.api.errors import APIError
from chatd.api.protocol import ChatCompletion, ChatCompletionRequest, Usage
from chatd.api.routes.chat import _Answer
from chatd.api.storing import Keeping, stored_messages
from chatd.chat.choice import ChoiceDelta
from chatd.chat.service import UsageCount
from chatd.chat.toolcalls import ToolCallDelta
from chatd.config import Settings
from chatd.store import CompletionStore

KEY_A, KEY_B = "sk-alice-0123456789", "sk-bob-0123456789"


class _Engine:
    def alive(self) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        return {}


def _owner(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _app(store: CompletionStore | None, keys: tuple[str, ...] = (KEY_A, KEY_B)) -> Any:
    runtime = types.SimpleNamespace(settings=Settings(api_keys=keys), engine=_Engine(),
                                    chat=None, model_name="m", fingerprint="fp_x",
                                    store=store)
    return create_app(runtime)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CompletionStore]:
    s = CompletionStore.from_spec(str(tmp_path / "store.sqlite3"))
    await s.start()
    yield s
    await s.close()


async def _fill(store: CompletionStore, count: int, *, key: str = KEY_A, prefix: str = "c",
                model: str = "m", metadata: dict[str, str] | None = None) -> list[str]:
    ids = []
    for i in range(count):
        cid = f"chatcmpl-{prefix}{i:03d}"
        completion = ChatCompletion.model_validate({
            "id": cid, "created": 1000 + i, "model": model, "usage": Usage(),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"content": f"answer {i}"}}]})
        await store.save(owner=_owner(key), id=cid, created=1000 + i, model=model,
                         completion=completion.to_json(),
                         messages=[{"role": "system", "content": "s", "name": None,
                                    "content_parts": None},
                                   {"role": "user", "content": f"q{i}", "name": "u",
                                    "content_parts": None}],
                         metadata=metadata or {})
        ids.append(cid)
    return ids


@pytest.fixture
async def http(store: CompletionStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                 headers={"Authorization": f"Bearer {KEY_A}"}) as client:
        yield client


def _error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


async def test_list_pages_with_a_cursor(store: CompletionStore, http: httpx.AsyncClient) -> None:
    ids = await _fill(store, 25)
    page = (await http.get("/v1/chat/completions")).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [c["id"] for c in page["data"]] == ids[:20]  # default limit 20, ascending
    assert (page["first_id"], page["last_id"]) == (ids[0], ids[19])
    assert page["data"][0]["metadata"] == {}
    assert page["data"][0]["choices"][0]["message"]["content"] == "answer 0"
    rest = (await http.get("/v1/chat/completions", params={"after": ids[19]})).json()
    assert [c["id"] for c in rest["data"]] == ids[20:] and rest["has_more"] is False
    exact = (await http.get("/v1/chat/completions", params={"limit": 25})).json()
    assert len(exact["data"]) == 25 and exact["has_more"] is False
    desc = (await http.get("/v1/chat/completions",
                           params={"order": "desc", "limit": 3, "after": ids[10]})).json()
    assert [c["id"] for c in desc["data"]] == ids[7:10][::-1] and desc["has_more"] is True


async def test_list_filters(store: CompletionStore, http: httpx.AsyncClient) -> None:
    await _fill(store, 3, prefix="x", metadata={"team": "a", "run": "1"})
    wanted = await _fill(store, 2, prefix="y", metadata={"team": "a", "run": "2"}, model="m2")
    got = (await http.get("/v1/chat/completions?metadata[team]=a&metadata[run]=2")).json()
    assert [c["id"] for c in got["data"]] == wanted
    got = (await http.get("/v1/chat/completions", params={"model": "m2"})).json()
    assert [c["id"] for c in got["data"]] == wanted
    empty = (await http.get("/v1/chat/completions", params={"model": "nope"})).json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None,
                     "has_more": False}


@pytest.mark.parametrize(("query", "param", "words"), [
    ({"limit": 0}, "limit", "Expected a value >= 1, but got 0"),
    ({"limit": 101}, "limit", "Expected a value <= 100, but got 101"),
    ({"limit": 1000}, "limit", "Expected a value <= 100, but got 1000"),
    ({"limit": "ten"}, "limit", "expected an integer"),
    ({"order": "up"}, "order", "'asc' or 'desc'"),
    ({"after": "chatcmpl-nope"}, "after", "chatcmpl-nope"),
])
async def test_bad_list_parameters_are_400s(store: CompletionStore, http: httpx.AsyncClient,
                                            query: dict[str, Any], param: str,
                                            words: str) -> None:
    await _fill(store, 1)
    for path in ("/v1/chat/completions", "/v1/chat/completions/chatcmpl-c000/messages"):
        err = _error(await http.get(path, params=query), 400, param)
        assert words in err["message"] or param == "after", err
        assert err["type"] == "invalid_request_error"


async def test_retrieve_update_delete(store: CompletionStore, http: httpx.AsyncClient) -> None:
    (cid,) = await _fill(store, 1, metadata={"a": "1"})
    got = (await http.get(f"/v1/chat/completions/{cid}")).json()
    assert got["id"] == cid and got["object"] == "chat.completion"
    assert got["metadata"] == {"a": "1"}
    updated = (await http.post(f"/v1/chat/completions/{cid}",
                               json={"metadata": {"b": "2"}})).json()
    assert updated["metadata"] == {"b": "2"} and updated["choices"] == got["choices"]
    assert (await http.get(f"/v1/chat/completions/{cid}")).json()["metadata"] == {"b": "2"}
    cleared = (await http.post(f"/v1/chat/completions/{cid}", json={"metadata": None})).json()
    assert cleared["metadata"] == {}
    _error(await http.post(f"/v1/chat/completions/{cid}",
                           json={"metadata": {f"k{i}": "v" for i in range(17)}}), 400,
           "metadata")
    _error(await http.post(f"/v1/chat/completions/{cid}", json={}), 400, "metadata")
    _error(await http.post(f"/v1/chat/completions/{cid}",
                           json={"metadata": {}, "model": "x"}), 400, "model")
    deleted = await http.delete(f"/v1/chat/completions/{cid}")
    assert deleted.json() == {"id": cid, "object": "chat.completion.deleted", "deleted": True}
    for r in (await http.get(f"/v1/chat/completions/{cid}"),
              await http.delete(f"/v1/chat/completions/{cid}"),
              await http.get(f"/v1/chat/completions/{cid}/messages"),
              await http.post(f"/v1/chat/completions/{cid}", json={"metadata": {}})):
        assert cid in _error(r, 404)["message"]


async def test_messages(store: CompletionStore, http: httpx.AsyncClient) -> None:
    (cid,) = await _fill(store, 1)
    page = (await http.get(f"/v1/chat/completions/{cid}/messages")).json()
    assert page == {"object": "list", "data": [
        {"id": f"{cid}-0", "role": "system", "content": "s", "name": None,
         "content_parts": None},
        {"id": f"{cid}-1", "role": "user", "content": "q0", "name": "u",
         "content_parts": None}],
        "first_id": f"{cid}-0", "last_id": f"{cid}-1", "has_more": False}
    first = (await http.get(f"/v1/chat/completions/{cid}/messages",
                            params={"limit": 1, "order": "desc"})).json()
    assert [m["id"] for m in first["data"]] == [f"{cid}-1"] and first["has_more"] is True
    second = (await http.get(f"/v1/chat/completions/{cid}/messages",
                             params={"limit": 1, "order": "desc", "after": f"{cid}-1"})).json()
    assert [m["id"] for m in second["data"]] == [f"{cid}-0"] and second["has_more"] is False
    _error(await http.get(f"/v1/chat/completions/{cid}/messages", params={"after": "x-1"}),
           400, "after")


async def test_keys_own_their_completions(store: CompletionStore) -> None:
    (mine,) = await _fill(store, 1, key=KEY_A)
    app = _app(store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as anon:
        _error(await anon.get("/v1/chat/completions"), 401)
        _error(await anon.get(f"/v1/chat/completions/{mine}"), 401)
        other = {"Authorization": f"Bearer {KEY_B}"}
        listed = (await anon.get("/v1/chat/completions", headers=other)).json()
        assert listed["data"] == []
        for r in (await anon.get(f"/v1/chat/completions/{mine}", headers=other),
                  await anon.get(f"/v1/chat/completions/{mine}/messages", headers=other),
                  await anon.post(f"/v1/chat/completions/{mine}", headers=other,
                                  json={"metadata": {"x": "y"}}),
                  await anon.delete(f"/v1/chat/completions/{mine}", headers=other)):
            _error(r, 404)
        _error(await anon.get("/v1/chat/completions", params={"after": mine},
                              headers=other), 400, "after")
    got = await store.get(_owner(KEY_A), mine)
    assert got is not None and got.metadata == {}  # bob changed nothing


async def test_official_client_pages_through_everything(store: CompletionStore) -> None:
    ids = await _fill(store, 230)
    transport = httpx.ASGITransport(app=_app(store))
    async with openai.AsyncOpenAI(
            base_url="http://t/v1", api_key=KEY_A, max_retries=0,
            http_client=httpx.AsyncClient(transport=transport, base_url="http://t")) as client:
        seen = [c.id async for c in client.chat.completions.list(limit=100)]
        assert seen == ids
        seen = [c.id async for c in client.chat.completions.list(limit=100, order="desc")]
        assert seen == ids[::-1]


async def test_a_server_that_keeps_nothing() -> None:
    transport = httpx.ASGITransport(app=_app(None, keys=()))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/chat/completions")).json()["data"] == []
        _error(await client.get("/v1/chat/completions", params={"after": "x"}), 400, "after")
        _error(await client.get("/v1/chat/completions/x"), 404)
        _error(await client.delete("/v1/chat/completions/x"), 404)


# ------------------------------------------------------------------ keeping an answer


def _request(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", **kw})


def test_input_messages_are_kept_as_openai_lists_them() -> None:
    body = _request(messages=[
        {"role": "developer", "content": "be brief", "name": "ops"},
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}])
    assert stored_messages(body) == [
        {"role": "developer", "content": "be brief", "name": "ops", "content_parts": None},
        {"role": "user", "content": "ab", "name": None, "content_parts": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "name": None, "content_parts": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "name": None, "content_parts": None,
         "tool_call_id": "call_1"}]


def test_metadata_limits_are_openai_s() -> None:
    ok = {f"k{i}": "v" * 512 for i in range(16)} | {"k" * 64: "v"}
    ok.pop("k0")
    assert _request(messages=[{"role": "user", "content": "x"}], metadata=ok).metadata == ok
    for bad in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513},
                {"k\x00": "v"}, {"k": "\ud800"}):
        with pytest.raises(ValueError):
            _request(messages=[{"role": "user", "content": "x"}], metadata=bad)


def _ctx() -> Any:
    return types.SimpleNamespace(model_name="m", fingerprint="fp_x")


def test_a_streamed_answer_is_assembled_as_the_unstreamed_one() -> None:
    usage = UsageCount(prompt_tokens=5, completion_tokens=4)
    lp = [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]
    streamed = _Answer(2, logprobs=True)
    for delta in [
        ChoiceDelta(0, content="Hel", logprobs=lp), ChoiceDelta(1, content=""),
        ChoiceDelta(0, content="lo", logprobs=lp, finish_reason="stop"),
        ChoiceDelta(1, tool_calls=[ToolCallDelta(0, id="call_x", name="f")]),
        ChoiceDelta(1, tool_calls=[ToolCallDelta(0, arguments='{"a": ')]),
        ChoiceDelta(1, tool_calls=[ToolCallDelta(0, arguments="1}"),
                                   ToolCallDelta(1, id="call_y", name="g")]),
        ChoiceDelta(1, tool_calls=[ToolCallDelta(1, arguments="{}")],
                    finish_reason="tool_calls")]:
        streamed.add(delta)
    whole = _Answer(2, logprobs=True)
    for delta in [
        ChoiceDelta(0, content="Hello", logprobs=lp + lp, finish_reason="stop"),
        ChoiceDelta(1, tool_calls=[ToolCallDelta(0, id="call_x", name="f", arguments='{"a": 1}'),
                                   ToolCallDelta(1, id="call_y", name="g", arguments="{}")],
                    finish_reason="tool_calls")]:
        whole.add(delta)
    a = streamed.completion(_ctx(), "chatcmpl-1", 7, usage)
    b = whole.completion(_ctx(), "chatcmpl-1", 7, usage)
    assert a.to_json() == b.to_json()
    data = json.loads(a.to_json())
    assert data["choices"][1]["message"]["content"] is None
    assert [c["function"] for c in data["choices"][1]["message"]["tool_calls"]] == [
        {"name": "f", "arguments": '{"a": 1}'}, {"name": "g", "arguments": "{}"}]


async def test_a_completion_that_cannot_be_stored_is_a_500() -> None:
    class Broken:
        async def save(self, **kw: Any) -> None:
            raise OSError("disk full")

    keep = Keeping(storage=Broken(), owner="", messages=[], metadata={})  # type: ignore[arg-type]
    completion = _Answer(1, logprobs=False).completion(_ctx(), "chatcmpl-1", 7, UsageCount())
    with pytest.raises(APIError) as info:
        await keep.save(completion)
    assert info.value.status_code == 500
