"""The routing key and the replica ranking, without a cluster."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tests.cluster.conftest import require_ray

require_ray()

from chatd.cluster.routing import SessionHomes, rank  # noqa: E402
from chatd.cluster.session import session_key  # noqa: E402


def _body(**fields: object) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


def test_prompt_cache_key_then_header_then_opening() -> None:
    turn1 = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}]
    turn2 = [*turn1, {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"}]
    assert session_key(_body(messages=turn1, prompt_cache_key="c"), {"x-session-id": "h"}) \
        == "k:c"
    assert session_key(_body(messages=turn1), {"x-session-id": "h"}) == "h:h"
    assert session_key(_body(messages=turn1), {}) == session_key(_body(messages=turn2), {})
    other = [{"role": "user", "content": "different"}]
    assert session_key(_body(messages=other), {}) != session_key(_body(messages=turn1), {})
    assert session_key(b"not json", {}) is None
    assert session_key(b"", {}) is None
    assert session_key(_body(prompt="once upon"), {}).startswith("p:")


@dataclass(frozen=True)
class _ID:
    unique_id: str


@dataclass(frozen=True)
class _Replica:
    replica_id: _ID


def test_rank_is_stable_and_moves_only_the_lost_replicas_sessions() -> None:
    replicas = [_Replica(_ID(f"r{i}")) for i in range(4)]
    keys = [f"chat-{i}" for i in range(200)]
    first = {k: rank(k, replicas)[0] for k in keys}  # type: ignore[arg-type]
    assert first == {k: rank(k, list(reversed(replicas)))[0] for k in keys}  # type: ignore[arg-type]
    assert len(set(first.values())) == 4  # spread over all replicas
    survivors = replicas[1:]
    after = {k: rank(k, survivors)[0] for k in keys}  # type: ignore[arg-type]
    moved = [k for k in keys if after[k] != first[k]]
    assert all(first[k] == replicas[0] for k in moved)



def test_new_sessions_go_to_the_least_busy_replica_and_then_stay_there() -> None:
    replicas = [_Replica(_ID("a")), _Replica(_ID("b"))]
    homes = SessionHomes()
    placed = {}
    for i in range(8):  # 8 concurrent new chats, each sent as soon as it is placed
        home = homes.choose(f"chat-{i}", replicas)[0][0]  # type: ignore[arg-type]
        homes.in_flight[home.replica_id.unique_id] += 1
        placed[f"chat-{i}"] = home
    assert sorted(homes.in_flight.values()) == [4, 4]
    # Turn 2 of every chat: its home first, however busy, then the other replica.
    homes.in_flight["a"] += 10
    for key, home in placed.items():
        first, rest = homes.choose(key, replicas)  # type: ignore[arg-type]
        assert first == [home] and rest == [r for r in replicas if r is not home]
    # The home went away: the chat is placed again, on a live replica, and stays.
    gone = placed["chat-0"]
    survivors = [r for r in replicas if r is not gone]
    assert homes.choose("chat-0", survivors)[0] == survivors  # type: ignore[arg-type]
    assert homes.choose("chat-0", replicas)[0] == survivors  # type: ignore[arg-type]
    # A request its saturated home turned away makes the other replica its home.
    homes.moved("chat-1", "b" if placed["chat-1"].replica_id.unique_id == "a" else "a")
    assert homes.choose("chat-1", replicas)[0] != [placed["chat-1"]]  # type: ignore[arg-type]


def test_homes_forget_the_least_recently_used_sessions() -> None:
    replicas = [_Replica(_ID("a")), _Replica(_ID("b"))]
    homes = SessionHomes(capacity=2)
    homes.choose("old", replicas)  # type: ignore[arg-type]
    homes.choose("mid", replicas)  # type: ignore[arg-type]
    homes.choose("old", replicas)  # type: ignore[arg-type]
    homes.choose("new", replicas)  # type: ignore[arg-type]
    assert list(homes._homes) == ["old", "new"]

async def test_waiting_body_chunks_go_out_as_one() -> None:
    import asyncio

    from chatd.cluster.engine import _coalesce

    out: asyncio.Queue = asyncio.Queue()
    for part in (b"b", b"c"):
        out.put_nowait({"type": "http.response.body", "body": part, "more_body": True})
    out.put_nowait({"type": "http.response.body", "body": b"d", "more_body": False})
    out.put_nowait(None)
    first = {"type": "http.response.body", "body": b"a", "more_body": True}
    assert _coalesce(first, out) == {"type": "http.response.body", "body": b"abcd",
                                     "more_body": False}
    assert out.get_nowait() is None
    alone = {"type": "http.response.body", "body": b"x", "more_body": True}
    assert _coalesce(alone, out) == alone
