"""The database behind stored completions: where it is, and one async engine for it.

SQLite (the default, one file in the user's data directory) and PostgreSQL (several
replicas sharing one store) go through the same SQLAlchemy Core code; only the
connection set-up differs. Every call is awaited on the event loop and runs its I/O
in a driver thread (aiosqlite) or on the loop's sockets (asyncpg), so a slow disk
never holds up other requests' tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a write waits for another process's write lock before it fails."""

_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://")


class StoreConfigError(ValueError):
    """A `--store` value that cannot name a database; reported in one line."""


def default_path() -> Path:
    """``$XDG_DATA_HOME/chatd/store.sqlite3``, else ``~/.local/share/chatd/...``: the
    XDG place for data a user keeps (not a cache: nothing here can be rebuilt)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "chatd" / "store.sqlite3"


def database_url(spec: str | None) -> URL:
    """A ``--store`` value (None: the default file) -> the SQLAlchemy async URL."""
    if spec is not None and spec.startswith(_POSTGRES_SCHEMES):
        try:
            url = make_url(spec)
        except Exception as exc:  # SQLAlchemy's ArgumentError and friends
            raise StoreConfigError(f"--store: not a PostgreSQL URL: {exc}") from exc
        return url.set(drivername="postgresql+asyncpg")
    if spec is not None and "://" in spec:
        raise StoreConfigError(
            f"--store: {spec.split('://')[0]}:// is not supported; give a file path "
            "(SQLite), a postgresql:// URL, or 'off'")
    path = default_path() if spec is None else Path(spec).expanduser()
    return URL.create("sqlite+aiosqlite", database=str(path.resolve()))


def describe(url: URL) -> str:
    """The store's location for logs, without a password."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite {url.database}"
    return f"PostgreSQL {url.render_as_string(hide_password=True)}"


class Database:
    """One engine; `transaction(write=...)` is the only way in.

    SQLite allows one writer at a time: writes in this process take turns on an
    asyncio lock (no thread spins on the file lock), and begin IMMEDIATE, so a
    transaction never has to upgrade a read lock and fail with "database is locked";
    another process's writer is waited for (busy timeout). WAL lets reads run beside
    a write. ``synchronous=NORMAL`` in WAL mode keeps every committed transaction
    through a crash of the process (kill -9): the commit is in the WAL file, in the
    OS's hands; only a power cut can lose the last few.
    """

    def __init__(self, url: URL) -> None:
        self.url = url
        self.is_sqlite = url.get_backend_name() == "sqlite"
        self._engine: AsyncEngine | None = None
        self._write_turn: asyncio.Lock | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    async def open(self) -> None:
        if self._engine is not None:
            return
        if self.is_sqlite:
            assert self.url.database
            folder = Path(self.url.database).parent
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            engine = create_async_engine(
                self.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            _sqlite_transactions(engine)
            self._write_turn = asyncio.Lock()
        else:
            engine = create_async_engine(self.url, pool_size=5, max_overflow=10,
                                         pool_pre_ping=True)
        self._engine = engine

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction, committed when the block ends."""
        turn = self._write_turn if write and self.is_sqlite else None
        async with contextlib.AsyncExitStack() as stack:
            if turn is not None:
                await stack.enter_async_context(turn)
            conn = await stack.enter_async_context(self.engine.connect())
            if self.is_sqlite:
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE" if write else "")
            await stack.enter_async_context(conn.begin())
            yield conn


def _sqlite_transactions(engine: AsyncEngine) -> None:
    """Take BEGIN away from Python's sqlite3 module (which never begins before DDL, so
    a migration would not be atomic) and issue it ourselves, IMMEDIATE for writes."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                       f"busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())
