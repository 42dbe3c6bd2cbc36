"""What the routes need from the running server, in one typed object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from chatd.api.auth import KeyChecker
from chatd.chat.service import ChatService


@dataclass(frozen=True)
class ServerContext:
    chat: ChatService
    stats: Callable[[], dict[str, int]]
    model_name: str
    fingerprint: str
    created: int
    auth: KeyChecker


def context(request: Request) -> ServerContext:
    return request.app.state.ctx
