"""Cancel a request's work when its client goes away before the response starts.

uvicorn does not cancel a handler whose client disconnected. A streaming response
notices once it has started (Starlette listens for the disconnect beside it), but
before that, and for the whole of a non-streaming completion, nothing would: the
generation ran to `max_tokens` for nobody and kept its slot. That is the common case
of a timeout: the official OpenAI client gives up after its timeout and retries, so
each abandoned attempt would have run beside its own retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response started; its work was cancelled."""


async def _disconnected(receive: Receive) -> None:
    # The body has been read, so the next message the server hands the app is the
    # disconnect (uvicorn sends it when the connection drops).
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request is cancelled itself (shutdown)
        watcher.cancel()
        task.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(Exception):
        watcher.result()  # a receive() that failed means the connection is gone too
    raise ClientGone()
