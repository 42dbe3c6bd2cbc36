"""Structured access log: one JSON object per line per request (``--access-log``).

A dedicated logger with its own handler and no propagation, so the lines stay pure
JSON (no level or logger-name prefix) and go where the flag says: stdout for ``-``,
else appended to a file. Keys appear only as their short tag, never in full.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from chatd.api.tracking import RequestRecord


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def access_entry(record: RequestRecord, route: str, duration: float) -> dict[str, Any]:
    """The fields of one line; ``route`` is the matched route's template."""
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": record.request_id,
        "client": record.client,
        "method": record.method,
        "path": record.path,
        "route": route,
        "status": record.status,
        "key": record.key,
        "model": record.model,
        "stream": record.stream,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "queue_ms": _ms(record.queue_wait),
        "ttft_ms": _ms(record.since_start(record.first_token)),
        "duration_ms": _ms(duration),
        "completed": record.completed,
    }


class AccessLog:
    def __init__(self, target: str) -> None:
        self._logger = logging.getLogger(f"chatd.access.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        handler: logging.Handler = (logging.StreamHandler(sys.stdout) if target == "-"
                                    else logging.FileHandler(target, encoding="utf-8"))
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)
        self._handler = handler

    def write(self, record: RequestRecord, route: str, duration: float) -> None:
        self._logger.info(json.dumps(access_entry(record, route, duration),
                                     ensure_ascii=False, separators=(",", ":")))

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
