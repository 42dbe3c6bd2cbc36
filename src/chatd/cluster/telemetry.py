"""Each replica's health and metrics, shared so that any replica can answer for all.

Every `REPORT_PERIOD_S` each engine replica posts its /health body and /metrics text
to one small shared actor (chatd.cluster.actors) and gets the others' latest back, so
its /health and /metrics answer for the whole deployment (chatd.api.deployment)
without a call in the request's path. Pushing rather than asking each replica at
scrape time also means a scrape never waits behind a replica whose
`max_ongoing_requests` are all taken. A replica that stops reporting (it died) drops
out of the view after `EXPIRE_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from chatd.api.deployment import PeerReport
from chatd.cluster.actors import CALL_TIMEOUT_S, shared_actor

log = logging.getLogger("chatd.cluster")

REPORT_PERIOD_S = 1.0
EXPIRE_S = 5.0
"""A report older than this is of a replica that is gone (Serve checks every 2 s)."""

Report = tuple[str, float, dict[str, Any], str]
"""(replica, age in seconds, health body, metrics text), as the board returns them."""


class Board:
    """The shared actor: every replica's latest report."""

    def __init__(self) -> None:
        self.reports: dict[str, tuple[float, dict[str, Any], str]] = {}

    def post(self, replica: str, health: dict[str, Any], metrics: str) -> list[Report]:
        """Keep this replica's report; return the other live replicas' reports."""
        now = time.monotonic()
        self.reports[replica] = (now, health, metrics)
        for gone in [r for r, (t, _, _) in self.reports.items() if now - t > EXPIRE_S]:
            del self.reports[gone]
        return [(r, now - t, h, m) for r, (t, h, m) in self.reports.items() if r != replica]


class ReplicaPeers:
    """One replica's view of the others (`chatd.api.deployment.Peers`)."""

    def __init__(self, board_name: str, replica: str) -> None:
        self.replica = replica
        self._board = shared_actor(Board, board_name)
        self._seen: list[tuple[float, PeerReport]] = []  # (when received, report)
        self._failing = False

    def others(self) -> list[PeerReport]:
        now = time.monotonic()
        fresh = [replace(r, age_s=r.age_s + now - at) for at, r in self._seen]
        return [r for r in fresh if r.age_s <= EXPIRE_S]

    async def run(self, report: Callable[[], tuple[dict[str, Any], str]]) -> None:
        """Post `report()` and take the others' every period, until cancelled."""
        while True:
            try:
                health, metrics = report()
                got: list[Report] = await asyncio.wait_for(
                    self._board.post.remote(self.replica, health, metrics), CALL_TIMEOUT_S)
                now = time.monotonic()
                self._seen = [(now, PeerReport(*r)) for r in got]
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the board restarts elsewhere; the view ages out
                if not self._failing:
                    log.warning("replica reports unavailable: %r", exc)
                self._failing = True
            await asyncio.sleep(REPORT_PERIOD_S)
