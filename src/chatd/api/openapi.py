"""The OpenAPI document at ``/openapi.json``, completed with what FastAPI cannot infer.

FastAPI derives the request schema from the pydantic models (a superset of the seed
contract's ``CreateChatCompletionRequest``), but the routes return hand-built
responses, so FastAPI would document "200: anything" and a 422 this server never
sends. This fills in the real contract: response bodies from the response models,
the OpenAI error envelope for every error status, the headers every response
carries, and bearer auth. Fuzzers (schemathesis, in the tests) check the server
against exactly this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from chatd.api import protocol

_REF = "#/components/schemas/{model}"

_ERROR_RESPONSE = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        },
    }},
}

_COMMON_HEADERS: dict[str, Any] = {
    "x-request-id": {"description": "The client's X-Request-ID, or a generated id.",
                     "required": True, "schema": {"type": "string"}},
    "openai-processing-ms": {"description": "Milliseconds until the response headers.",
                             "schema": {"type": "integer", "minimum": 0}},
    **{f"x-ratelimit-{kind}-{what}": {
        "description": f"Per-key {what}-per-minute limit: {kind} (sent when configured).",
        "schema": {"type": "string"} if kind == "reset" else {"type": "integer",
                                                               "minimum": 0}}
       for kind in ("limit", "remaining", "reset") for what in ("requests", "tokens")},
}

_RETRY_HEADERS = {
    "Retry-After": {"description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 1}},
    "retry-after-ms": {"description": "Milliseconds to wait before retrying.",
                       "schema": {"type": "integer", "minimum": 0}},
}

_ERROR_STATUSES = {
    "400": "Invalid request (schema, value or context length).",
    "401": "Missing or wrong API key (code invalid_api_key).",
    "404": "Unknown model (code model_not_found).",
    "413": "Request body too large.",
    "429": "Per-key rate limit reached (code rate_limit_exceeded).",
    "500": "Server error.",
    "503": "Server overloaded or shutting down (code server_overloaded).",
}


def _error(description: str, status: str) -> dict[str, Any]:
    headers = {**_COMMON_HEADERS, **(_RETRY_HEADERS if status in ("429", "503") else {})}
    return {"description": description, "headers": headers, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def _ok(description: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "headers": _COMMON_HEADERS, "content": content}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _, defs = models_json_schema(
        [(m, "validation") for m in (protocol.ChatCompletion, protocol.ChatCompletionChunk,
                                     protocol.Completion, protocol.ModelList,
                                     protocol.ModelCard)],
        ref_template=_REF)
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    schemas["ErrorResponse"] = _ERROR_RESPONSE
    components["securitySchemes"] = {"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "An API key given with --api-key (open when none is configured)."}}

    paths = doc.get("paths", {})
    chat = paths.get("/v1/chat/completions", {}).get("post")
    if chat is not None:
        chat["operationId"] = "createChatCompletion"
        chat["security"] = [{"bearerAuth": []}, {}]
        chat["responses"] = {
            "200": _ok("A completion (JSON), or with `stream: true` a data-only SSE stream "
                       "of chat.completion.chunk objects ending with `data: [DONE]`.",
                       {**_json("ChatCompletion"),
                        "text/event-stream": {"schema": {"type": "string"}}}),
            **{status: _error(text, status) for status, text in _ERROR_STATUSES.items()},
        }
    legacy = paths.get("/v1/completions", {}).get("post")
    if legacy is not None:
        legacy["operationId"] = "createCompletion"
        legacy["security"] = [{"bearerAuth": []}, {}]
        legacy["responses"] = {
            "200": _ok("A text_completion (JSON), or with `stream: true` a data-only SSE "
                       "stream of text_completion objects ending with `data: [DONE]`.",
                       {**_json("Completion"),
                        "text/event-stream": {"schema": {"type": "string"}}}),
            **{status: _error(text, status) for status, text in _ERROR_STATUSES.items()},
        }
    listing = paths.get("/v1/models", {}).get("get")
    if listing is not None:
        listing["security"] = [{"bearerAuth": []}, {}]
        listing["responses"] = {"200": _ok("The model this server runs.", _json("ModelList")),
                                "401": _error(_ERROR_STATUSES["401"], "401")}
    card = paths.get("/v1/models/{model_id}", {}).get("get")
    if card is not None:
        card["security"] = [{"bearerAuth": []}, {}]
        card["responses"] = {"200": _ok("The model.", _json("ModelCard")),
                             "401": _error(_ERROR_STATUSES["401"], "401"),
                             "404": _error(_ERROR_STATUSES["404"], "404")}
    health = paths.get("/health", {}).get("get")
    if health is not None:
        health["responses"] = {"200": _ok("Alive, with the engine's counters.", {
            "application/json": {"schema": {"type": "object", "required": ["status"],
                                            "properties": {"status": {"const": "ok"}}}}}),
            "503": _error("The inference engine has stopped (code engine_stopped).", "503")}
    for item in paths.values():  # anything else: at least the envelope, never 422
        for operation in item.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            responses.setdefault("default", _error("Error.", "default"))
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
