"""The HTTP layer's side of stored completions: who owns what, and keeping an answer.

The store itself (`chatd.store`) sits beside this layer, not under it: the routes know
it only as the `CompletionStorage` protocol below, and the start-up wiring hands the
app one (or none, with ``--store off``). A completion belongs to the API key that
created it, known here by the key's SHA-256 (never the key); a server without keys
has one owner for everything.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fastapi import Request

from chatd.api.context import context
from chatd.api.errors import APIError
from chatd.api.protocol import ChatCompletion, ChatCompletionRequest

log = logging.getLogger("chatd.api")

OPEN_OWNER = ""
"""The owner of everything stored by a server that has no API keys."""


class StoredItem(Protocol):
    """A stored completion as the store returns it."""

    @property
    def id(self) -> str: ...

    @property
    def completion(self) -> str: ...  # JSON text, as the POST returned it

    @property
    def metadata(self) -> dict[str, str]: ...


class CompletionStorage(Protocol):
    """What the routes need of the store (`chatd.store.CompletionStore` is one)."""

    async def save(self, *, owner: str, id: str, created: int, model: str, completion: str,
                   messages: list[dict[str, Any]], metadata: Mapping[str, str]) -> None: ...

    async def get(self, owner: str, completion_id: str) -> StoredItem | None: ...

    async def page(self, owner: str, *, after: str | None, limit: int,
                   order: Literal["asc", "desc"], model: str | None = None,
                   metadata: Mapping[str, str] | None = None
                   ) -> tuple[list[Any], bool] | None: ...

    async def set_metadata(self, owner: str, completion_id: str,
                           metadata: Mapping[str, str]) -> StoredItem | None: ...

    async def delete(self, owner: str, completion_id: str) -> bool: ...

    async def messages(self, owner: str, completion_id: str) -> list[dict[str, Any]] | None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class StoredResponseItem(Protocol):
    """A stored Response as the store returns it (`chatd.store.StoredResponse`)."""

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def response(self) -> str: ...  # JSON text of the Response object

    @property
    def input_items(self) -> list[dict[str, Any]]: ...

    @property
    def context(self) -> list[dict[str, Any]]: ...

    @property
    def heartbeat(self) -> int | None: ...  # unix seconds; a background run's last beat


class ResponseStorage(Protocol):
    """What the Responses routes need of the store: the same database, other rows."""

    async def save_response(self, *, owner: str, id: str, created: int, status: str,
                            response: str, input_items: list[dict[str, Any]],
                            context: list[dict[str, Any]]) -> None: ...

    async def update_response(self, owner: str, response_id: str, *, status: str,
                              response: str) -> bool: ...

    async def beat_response(self, owner: str, response_id: str) -> bool: ...

    async def get_response(self, owner: str, response_id: str
                           ) -> StoredResponseItem | None: ...

    async def delete_response(self, owner: str, response_id: str) -> bool: ...


def response_storage_of(request: Request) -> ResponseStorage | None:
    """The store, as the Responses routes see it; None with ``--store off``."""
    store = getattr(request.app.state, "store", None)
    return store if store is not None and hasattr(store, "save_response") else None


def storage_of(request: Request) -> CompletionStorage | None:
    """The app's store; None when the server keeps nothing (``--store off``)."""
    return getattr(request.app.state, "store", None)


def owner_of(request: Request) -> str:
    """The caller's owner id (401 for a missing or wrong key on a keyed server)."""
    if context(request).auth.check(request) is None:
        return OPEN_OWNER
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    return hashlib.sha256(token.encode()).hexdigest()


def stored_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The request's messages as OpenAI lists them back (ids are added when read):
    ``role``, ``content`` (parts' text joined), ``name``, ``content_parts``, plus any
    other key the message was sent with."""
    out = []
    for message in body.messages:
        data = message.model_dump(mode="json", exclude_none=True)
        content = data.pop("content", None)
        parts = None
        if isinstance(content, list):
            parts = content
            content = "".join(p.get("text") or "" for p in parts if p.get("type") == "text")
        out.append({"role": data.pop("role"), "content": content,
                    "name": data.pop("name", None), "content_parts": parts, **data})
    return out


@dataclass(frozen=True)
class Keeping:
    """A completion that asked to be stored: where, for whom, with what."""

    storage: CompletionStorage
    owner: str
    messages: list[dict[str, Any]]
    metadata: Mapping[str, str]

    async def save(self, completion: ChatCompletion) -> None:
        """Write it, once the answer is complete; a failure is the client's 500 (an
        error event in a stream), never a silent loss."""
        try:
            await self.storage.save(
                owner=self.owner, id=completion.id, created=completion.created,
                model=completion.model, completion=completion.to_json(),
                messages=self.messages, metadata=self.metadata)
        except Exception as exc:
            log.exception("could not store completion %s", completion.id)
            raise APIError("The completion was generated but could not be stored.",
                           status_code=500, type="server_error") from exc


def keeping(request: Request, body: ChatCompletionRequest) -> Keeping | None:
    """How to keep this request's completion; None unless it asked (``store: true``).
    On a server that keeps nothing, asking is a 400 rather than a silent no."""
    if not body.store:
        return None
    storage = storage_of(request)
    if storage is None:
        raise APIError.unsupported_parameter(
            "store", "This server does not store completions (it was started with "
                     "--store off). Send the request without 'store: true'.")
    return Keeping(storage=storage, owner=owner_of(request),
                   messages=stored_messages(body), metadata=dict(body.metadata or {}))
