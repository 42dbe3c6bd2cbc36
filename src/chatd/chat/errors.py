"""Errors the chat layer raises; the HTTP layer turns them into OpenAI envelopes."""

from __future__ import annotations


class ChatRequestError(ValueError):
    """The request cannot be served as asked (maps to HTTP 400)."""

    def __init__(self, message: str, *, param: str | None = None,
                 code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class GenerationFailed(RuntimeError):
    """The engine failed a sequence after the request was accepted (HTTP 500)."""
