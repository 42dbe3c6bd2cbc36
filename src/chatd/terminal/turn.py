"""One answer streamed to the terminal, stoppable with Ctrl+C.

While the answer streams, the terminal is in its normal mode, so Ctrl+C is a SIGINT;
it cancels only the streaming task (the generation stops in the engine or on the
server) and the program goes back to the prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from chatd.terminal.backends import ChatBackend, TurnStats
from chatd.terminal.render import Output


async def stream_answer(backend: ChatBackend, request: dict[str, Any], output: Output,
                        *, stoppable: bool = True) -> tuple[str, TurnStats]:
    """The answer's text and numbers; `stats.stopped` when Ctrl+C ended it early.
    A failed request raises BackendError (after the output is closed)."""
    stats = TurnStats(started=time.perf_counter())
    pieces: list[str] = []

    async def consume() -> None:
        async with contextlib.aclosing(backend.stream(request, stats)) as stream:
            async for piece in stream:
                pieces.append(piece)
                output.write(piece)

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(consume())
    if stoppable:
        loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this coroutine itself was cancelled: not a Ctrl+C
        stats.stopped = True
    finally:
        if stoppable:
            loop.remove_signal_handler(signal.SIGINT)
        stats.ended = time.perf_counter()
        output.end()
    return "".join(pieces), stats
