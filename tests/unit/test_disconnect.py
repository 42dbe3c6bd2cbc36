"""Work for a client is cancelled when the client disconnects first, and only then."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chatd.api.disconnect import ClientGone, unless_disconnected


def _receive_after(delay: float | None, extra: list[dict[str, Any]] | None = None):
    """An ASGI receive: optional other messages, then a disconnect after `delay` (never
    if None)."""
    pending = list(extra or [])

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(delay or 0)
        return {"type": "http.disconnect"}
    return receive


def test_result_when_the_work_finishes_first() -> None:
    async def work() -> str:
        await asyncio.sleep(0.01)
        return "done"
    assert asyncio.run(unless_disconnected(_receive_after(None), work())) == "done"


def test_disconnect_cancels_the_work() -> None:
    state = {"cancelled": False}

    async def work() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        return "never"

    async def main() -> None:
        receive = _receive_after(0.01, extra=[{"type": "http.request", "body": b"",
                                                "more_body": False}])
        with pytest.raises(ClientGone):
            await unless_disconnected(receive, work())
    asyncio.run(main())
    assert state["cancelled"]


def test_the_works_own_error_propagates() -> None:
    async def work() -> str:
        raise ValueError("bad request")
    with pytest.raises(ValueError, match="bad request"):
        asyncio.run(unless_disconnected(_receive_after(None), work()))
