"""Stored Responses in the shared store (SQLite): ownership, status moves, retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.store import CompletionStore, migrations


@pytest.fixture
async def store(tmp_path: Path):
    s = CompletionStore.from_spec(str(tmp_path / "s.db"))
    assert await s.open() == 0
    yield s
    await s.close()


async def _save(store: CompletionStore, owner: str, rid: str, status: str = "completed",
                created: int = 100) -> None:
    await store.save_response(owner=owner, id=rid, created=created, status=status,
                              response=f'{{"id":"{rid}"}}',
                              input_items=[{"id": "msg_1", "type": "message"}],
                              context=[{"id": "msg_1", "type": "message"}])


async def test_responses_live_beside_completions(store: CompletionStore) -> None:
    assert migrations.latest() >= 2
    await _save(store, "a", "resp_1")
    found = await store.get_response("a", "resp_1")
    assert found is not None and found.status == "completed"
    assert found.input_items[0]["id"] == "msg_1" and found.context
    assert await store.get_response("b", "resp_1") is None
    assert not await store.delete_response("b", "resp_1")
    assert await store.delete_response("a", "resp_1")
    assert await store.get_response("a", "resp_1") is None
    assert await store.get_response("a", "resp_\x00") is None


async def test_a_final_status_is_never_rewritten(store: CompletionStore) -> None:
    await _save(store, "a", "resp_bg", status="queued")
    assert await store.beat_response("a", "resp_bg")
    assert not await store.beat_response("b", "resp_bg")
    found = await store.get_response("a", "resp_bg")
    assert found is not None and found.heartbeat is not None
    assert await store.update_response("a", "resp_bg", status="in_progress", response="{}")
    assert await store.update_response("a", "resp_bg", status="cancelled", response="{}")
    assert not await store.update_response("a", "resp_bg", status="completed", response="{}")
    assert not await store.beat_response("a", "resp_bg")  # cancelled: its run must stop
    found = await store.get_response("a", "resp_bg")
    assert found is not None and found.status == "cancelled"


async def test_retention_covers_responses(store: CompletionStore) -> None:
    await _save(store, "a", "resp_old", created=10)
    await _save(store, "a", "resp_new", created=1000)
    assert await store._delete_created_before(500) == 1
    assert await store.get_response("a", "resp_old") is None
    assert await store.get_response("a", "resp_new") is not None
