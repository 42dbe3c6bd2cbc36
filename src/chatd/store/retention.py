"""`--store-max-age`: completions older than it are deleted in the background.

A sweep runs at start-up and then every so often (a tenth of the age, between one
second and ten minutes), so an entry outlives its age by at most that interval. A
sweep that fails (the database briefly away) is logged and tried again next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("chatd.store")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a bare number of seconds."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 30d, 12h, 90m or 45s)")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"a maximum age must be more than zero, got {text!r}")
    return seconds


def sweep_interval(max_age: float) -> float:
    return min(600.0, max(1.0, max_age / 10))


class Retention:
    """Calls `delete_before(cutoff)` on a timer while started."""

    def __init__(self, max_age: float,
                 delete_before: Callable[[int], Awaitable[int]]) -> None:
        self.max_age = max_age
        self.delete_before = delete_before
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="chatd-store-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def sweep(self) -> int:
        cutoff = int(time.time() - self.max_age)
        deleted = await self.delete_before(cutoff)
        if deleted:
            log.info("store retention: deleted %d completion(s) created before %d",
                     deleted, cutoff)
        return deleted

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("store retention sweep failed; retrying later")
            await asyncio.sleep(sweep_interval(self.max_age))
