"""The completion store on its own (no model, no HTTP), on SQLite and on PostgreSQL:
migrations, ownership, pages and cursors, filters, metadata updates, deletes,
retention, and concurrent writers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from chatd.store import CompletionStore, StoreConfigError, database_url, migrations, parse_duration
from chatd.store.retention import Retention, sweep_interval

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "data" / "store.sqlite3")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
async def store(store_spec: str) -> AsyncIterator[CompletionStore]:
    s = CompletionStore.from_spec(store_spec)
    await s.start()
    yield s
    await s.close()


async def _save(store: CompletionStore, cid: str, *, owner: str = "alice", created: int = 1000,
                model: str = "m", metadata: dict[str, str] | None = None) -> None:
    await store.save(owner=owner, id=cid, created=created, model=model,
                     completion=json.dumps({"id": cid, "object": "chat.completion"}),
                     messages=[{"role": "user", "content": f"for {cid}", "name": None,
                                "content_parts": None}],
                     metadata=metadata or {})


async def _ids(store: CompletionStore, owner: str = "alice", **kw) -> tuple[list[str], bool]:
    page = await store.page(owner, after=kw.pop("after", None), limit=kw.pop("limit", 100),
                            order=kw.pop("order", "asc"), **kw)
    assert page is not None
    return [r.id for r in page[0]], page[1]


# ------------------------------------------------------------------------ migrations


async def test_a_new_store_is_migrated_once(store_spec: str) -> None:
    first = CompletionStore.from_spec(store_spec)
    assert await first.open() == 0
    await first.close()
    again = CompletionStore.from_spec(store_spec)
    assert await again.open() == migrations.latest()
    await again.close()


def test_sqlite_store_uses_wal_and_a_private_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.sqlite3"
    CompletionStore.from_spec(str(path)).prepare()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM chatd_schema").fetchone()[0] == \
            migrations.latest()
    assert path.parent.stat().st_mode & 0o077 == 0


async def test_later_migrations_run_in_order_exactly_once(tmp_path: Path) -> None:
    ran: list[int] = []

    nxt = migrations.latest() + 1

    def following(conn: sa.Connection) -> None:
        ran.append(nxt)
        conn.execute(sa.text("ALTER TABLE chat_completions ADD COLUMN note TEXT"))

    store = CompletionStore.from_spec(str(tmp_path / "s.db"))
    await store.open()  # at this chatd's latest version
    steps = [*migrations.MIGRATIONS, following]
    for _ in range(2):
        async with store.db.transaction(write=True) as conn:
            await conn.run_sync(migrations.upgrade, steps)
    assert ran == [nxt]
    async with store.db.transaction() as conn:
        assert (await conn.execute(sa.text("SELECT version FROM chatd_schema"))).scalar() == nxt
        await conn.execute(sa.text("SELECT note FROM chat_completions"))
    await store.close()


def test_a_store_from_a_newer_chatd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    CompletionStore.from_spec(str(path)).prepare()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE chatd_schema SET version = 99")
    with pytest.raises(migrations.SchemaTooNew, match="99"):
        CompletionStore.from_spec(str(path)).prepare()


def test_store_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert database_url(None).database == str(tmp_path / "chatd" / "store.sqlite3")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert database_url(None).database == str(
        tmp_path / "home" / ".local" / "share" / "chatd" / "store.sqlite3")
    assert database_url("rel.db").database == str(Path("rel.db").resolve())
    for spec in ("postgresql://u:p@h:5/db", "postgres://u:p@h:5/db"):
        url = database_url(spec)
        assert (url.drivername, url.host, url.port, url.database) == \
            ("postgresql+asyncpg", "h", 5, "db")
    assert "p@" not in CompletionStore.from_spec("postgresql://u:p@h/db").location
    with pytest.raises(StoreConfigError, match="mysql"):
        database_url("mysql://h/db")


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("90m") == 5400
    assert parse_duration("45") == parse_duration("45s") == 45
    assert parse_duration("1.5h") == 5400
    for bad in ("", "0d", "-1d", "10y", "d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert sweep_interval(2) == 1.0 and sweep_interval(30 * 86400) == 600.0


# -------------------------------------------------------------------- reads and writes


async def test_each_owner_sees_only_its_own(store: CompletionStore) -> None:
    await _save(store, "c-a", owner="alice", metadata={"k": "v"})
    await _save(store, "c-b", owner="bob")
    got = await store.get("alice", "c-a")
    assert got is not None and json.loads(got.completion)["id"] == "c-a"
    assert got.metadata == {"k": "v"}
    assert await store.get("bob", "c-a") is None
    assert await store.messages("bob", "c-a") is None
    assert await store.set_metadata("bob", "c-a", {"x": "y"}) is None
    assert not await store.delete("bob", "c-a")
    assert await _ids(store, "alice") == (["c-a"], False)
    assert await _ids(store, "bob") == (["c-b"], False)
    assert await store.page("bob", after="c-a", limit=10, order="asc") is None
    assert await store.messages("alice", "c-a") == [
        {"role": "user", "content": "for c-a", "name": None, "content_parts": None}]


async def test_pages_follow_created_then_insertion_order(store: CompletionStore) -> None:
    # created seconds out of insertion order, with ties
    created = {"c0": 5, "c1": 3, "c2": 5, "c3": 1, "c4": 3, "c5": 9, "c6": 5}
    for cid, when in created.items():
        await _save(store, cid, created=when)
    expected = ["c3", "c1", "c4", "c0", "c2", "c6", "c5"]
    assert await _ids(store) == (expected, False)
    assert await _ids(store, order="desc") == (expected[::-1], False)
    for order, want in (("asc", expected), ("desc", expected[::-1])):
        seen: list[str] = []
        after = None
        while True:
            ids, more = await _ids(store, after=after, limit=3, order=order)
            seen += ids
            if not more:
                break
            after = ids[-1]
        assert seen == want
    assert await _ids(store, limit=7) == (expected, False)
    assert await _ids(store, limit=6) == (expected[:6], True)
    assert await _ids(store, after="c5") == ([], False)
    assert await store.page("alice", after="nope", limit=3, order="asc") is None


async def test_filters_by_model_and_metadata(store: CompletionStore) -> None:
    odd = {'we"ird.key': "va'l", "$.x[0]": "ü"}
    await _save(store, "a", model="m1", metadata={"team": "x", "run": "1"})
    await _save(store, "b", model="m2", metadata={"team": "x", "run": "2"})
    await _save(store, "c", model="m1", metadata={"team": "y", **odd})
    assert await _ids(store, model="m1") == (["a", "c"], False)
    assert await _ids(store, metadata={"team": "x"}) == (["a", "b"], False)
    assert await _ids(store, metadata={"team": "x", "run": "2"}) == (["b"], False)
    assert await _ids(store, metadata={"team": "x"}, model="m2") == (["b"], False)
    assert await _ids(store, metadata=odd) == (["c"], False)
    assert await _ids(store, metadata={"team": "z"}) == ([], False)
    assert await _ids(store, metadata={"team": "x"}, after="a") == (["b"], False)


async def test_metadata_is_replaced_and_filters_follow(store: CompletionStore) -> None:
    await _save(store, "a", metadata={"old": "1"})
    updated = await store.set_metadata("alice", "a", {"new": "2"})
    assert updated is not None and updated.metadata == {"new": "2"}
    assert json.loads(updated.completion)["id"] == "a"
    assert await _ids(store, metadata={"old": "1"}) == ([], False)
    assert await _ids(store, metadata={"new": "2"}) == (["a"], False)
    cleared = await store.set_metadata("alice", "a", {})
    assert cleared is not None and cleared.metadata == {}
    got = await store.get("alice", "a")
    assert got is not None and got.metadata == {}


async def test_delete(store: CompletionStore) -> None:
    await _save(store, "a", metadata={"k": "v"})
    await _save(store, "b")
    assert await store.delete("alice", "a")
    assert not await store.delete("alice", "a")
    assert await store.get("alice", "a") is None
    assert await _ids(store) == (["b"], False)
    assert await _ids(store, metadata={"k": "v"}) == ([], False)


async def test_retention_deletes_what_is_older_than_the_age(store: CompletionStore) -> None:
    import time

    now = int(time.time())
    await _save(store, "old", created=now - 7200, metadata={"k": "v"})
    await _save(store, "new", created=now - 60, owner="bob")
    retention = Retention(3600, store.records.delete_created_before)
    assert await retention.sweep() == 1
    assert await store.get("alice", "old") is None
    assert await store.get("bob", "new") is not None
    assert await retention.sweep() == 0


async def test_retention_runs_in_the_background(tmp_path: Path) -> None:
    import time

    store = CompletionStore.from_spec(str(tmp_path / "s.db"), max_age=2)
    await store.start()
    try:
        await _save(store, "stale", created=int(time.time()) - 3)
        for _ in range(50):
            if await store.get("alice", "stale") is None:
                break
            await asyncio.sleep(0.1)
        assert await store.get("alice", "stale") is None
    finally:
        await store.close()


async def test_concurrent_writers_lose_nothing(store: CompletionStore) -> None:
    ids = [f"c{i:02d}" for i in range(40)]
    await asyncio.gather(*(_save(store, cid, metadata={"batch": "1"}) for cid in ids),
                         *(store.page("alice", after=None, limit=5, order="desc")
                           for _ in range(10)))
    got, more = await _ids(store, metadata={"batch": "1"})
    assert sorted(got) == ids and not more


async def test_a_write_finishes_even_if_its_caller_is_cancelled(tmp_path: Path) -> None:
    store = CompletionStore.from_spec(str(tmp_path / "s.db"))
    await store.start()
    task = asyncio.ensure_future(_save(store, "kept"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.close()  # waits for the write still running
    reopened = CompletionStore.from_spec(str(tmp_path / "s.db"))
    await reopened.start()
    assert await reopened.get("alice", "kept") is not None
    await reopened.close()


async def test_text_no_database_can_hold_is_never_sent_to_it(store: CompletionStore) -> None:
    """PostgreSQL text holds no NUL: lookups with one find nothing (rather than fail),
    and stored JSON escapes whatever the client sent."""
    odd = "nul\x00 and a lone surrogate \ud800 and ü"
    await store.save(owner="alice", id="a", created=1, model="m", completion="{}",
                     messages=[{"role": "user", "content": odd}], metadata={"k": "v"})
    assert await store.messages("alice", "a") == [{"role": "user", "content": odd}]
    nul = "a\x00"
    assert await store.get("alice", nul) is None
    assert await store.messages("alice", nul) is None
    assert await store.set_metadata("alice", nul, {}) is None
    assert not await store.delete("alice", nul)
    assert await store.page("alice", after=nul, limit=5, order="asc") is None
    assert await _ids(store, model=nul) == ([], False)
    assert await _ids(store, metadata={"k\x00": "v"}) == ([], False)
    assert await _ids(store, metadata={"k": "v\x00"}) == ([], False)
    assert await _ids(store, metadata={"k": "v"}) == (["a"], False)
