"""OpenAI error envelopes and the FastAPI handlers that send them.

Every failure leaves the server as ``{"error": {"message", "type", "param", "code"}}``
(all four keys, nulls included) with the status code OpenAI would use, because the
official SDKs pick their exception class from the status and read ``error`` from the body.
Schema failures are 400 (OpenAI), not FastAPI's 422, and ``param`` is the JSON path the
client sent (``messages[2].content[1]``), never pydantic's internal location.
"""

from __future__ import annotations

import json
import logging
import math
import re
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Discriminator, Tag
from pydantic.fields import FieldInfo
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatd.api import protocol, protocol_responses
from chatd.chat.errors import ChatRequestError

log = logging.getLogger("chatd.api")

INTERNAL_ERROR_MESSAGE = ("The server had an error while processing your request. "
                          "Sorry about that!")
JSON_INVALID_MESSAGE = ("We could not parse the JSON body of your request. The API expects "
                        "a JSON payload, but what was sent was not valid JSON.")


class APIError(Exception):
    """An error the client should see, already in OpenAI's terms.

    Raise it anywhere under a route; ``install_error_handlers`` turns it into the
    envelope. Use the constructors below so codes stay consistent across the server.
    """

    def __init__(self, message: str, *, status_code: int = 400,
                 type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def __repr__(self) -> str:
        return (f"APIError({self.status_code}, {self.message!r}, type={self.type!r}, "
                f"param={self.param!r}, code={self.code!r})")

    def to_body(self) -> dict[str, dict[str, Any]]:
        """The envelope; all four keys are always present, as the spec requires."""
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.to_body(), status_code=self.status_code,
                            headers=self.headers or None)

    # ---- constructors ------------------------------------------------------------

    @classmethod
    def bad_request(cls, message: str, *, param: str | None = None,
                    code: str | None = None) -> APIError:
        """400: the request is well-formed JSON but cannot be served as asked."""
        return cls(message, param=param, code=code)

    @classmethod
    def unsupported_parameter(cls, param: str, message: str) -> APIError:
        """400 for a valid OpenAI parameter this server does not implement."""
        return cls(message, param=param, code="unsupported_parameter")

    @classmethod
    def invalid_api_key(cls, message: str = "Incorrect API key provided.") -> APIError:
        """401, as OpenAI sends it (type invalid_request_error, code invalid_api_key)."""
        return cls(message, status_code=401, code="invalid_api_key",
                   headers={"WWW-Authenticate": "Bearer"})

    @classmethod
    def model_not_found(cls, model: str) -> APIError:
        """404 with OpenAI's wording, so clients that match on it keep working."""
        return cls(f"The model `{model}` does not exist or you do not have access to it.",
                   status_code=404, param="model", code="model_not_found")

    @classmethod
    def context_length_exceeded(cls, message: str, *, param: str | None = "messages"
                                ) -> APIError:
        """400: prompt (plus requested completion) does not fit the context window."""
        return cls(message, param=param, code="context_length_exceeded")

    @classmethod
    def request_too_large(cls, message: str = "The request body is too large.") -> APIError:
        return cls(message, status_code=413, code="request_too_large")

    @classmethod
    def rate_limited(cls, message: str = "Rate limit reached. Please try again later.", *,
                     retry_after: float | None = None, type: str = "requests") -> APIError:
        """429; ``retry_after`` seconds become Retry-After (the SDK honours it)."""
        return cls(message, status_code=429, type=type, code="rate_limit_exceeded",
                   headers=_retry_headers(retry_after))

    @classmethod
    def overloaded(cls, message: str = "The server is currently overloaded with other "
                   "requests. Please retry your request later.", *,
                   retry_after: float | None = None) -> APIError:
        """503: too much queued work; the SDK retries it with backoff."""
        return cls(message, status_code=503, type="server_error", code="server_overloaded",
                   headers=_retry_headers(retry_after))

    @classmethod
    def internal(cls, message: str = INTERNAL_ERROR_MESSAGE) -> APIError:
        """500 with a generic message: details go to the log, never to the client."""
        return cls(message, status_code=500, type="server_error")

    @classmethod
    def not_found(cls, message: str) -> APIError:
        return cls(message, status_code=404)

    @classmethod
    def from_chat_error(cls, exc: ChatRequestError) -> APIError:
        """The chat layer's own 400 (it does not depend on HTTP types)."""
        return cls(exc.message, param=exc.param, code=exc.code)


def _retry_headers(retry_after: float | None) -> dict[str, str]:
    if retry_after is None:
        return {}
    seconds = max(0.0, retry_after)
    return {"Retry-After": str(max(1, math.ceil(seconds))),
            "retry-after-ms": str(int(seconds * 1000))}


def sse_error_event(err: APIError) -> str:
    """``data: {"error": ...}`` frame for a failure after the stream's headers went out.

    The official SDK raises ``APIError(error.message)`` when a chunk has an ``error`` key.
    """
    return f"data: {json.dumps(err.to_body(), ensure_ascii=False)}\n\n"


# ------------------------------------------------------------------- validation errors

_LOC_SOURCES = {"body", "query", "path", "header", "cookie"}

_SIZED = (str, list, tuple, dict)

_EXPECTED = {
    "string_type": "a string", "string_unicode": "a string",
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "a boolean", "bool_parsing": "a boolean",
    "list_type": "an array", "tuple_type": "an array",
    "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
    "none_required": "null",
}


def error_for_validation(exc: pydantic.ValidationError | RequestValidationError, *,
                         model: type[BaseModel] | None = None) -> APIError:
    """A 400 APIError naming one problem, with ``param`` as the client's JSON path.

    ``model`` is the root model the location refers to; by default the request body is
    taken to be a ``ChatCompletionRequest`` (pydantic errors name their model themselves).
    Pydantic reports every branch of a failed union; the error that got deepest into the
    input is the one reported, since that is where the client's intent was clearest.
    """
    errors = list(exc.errors())
    if not errors:
        return APIError.bad_request("The request is invalid.")
    for err in errors:
        if err.get("type") == "json_invalid":
            return APIError.bad_request(JSON_INVALID_MESSAGE)

    if isinstance(exc, pydantic.ValidationError):
        found = getattr(protocol, exc.title, None)
        root = model or (found if isinstance(found, type) and issubclass(found, BaseModel)
                         else None)
    else:
        root = model or protocol.ChatCompletionRequest

    located = []
    for err in errors:
        loc = tuple(err.get("loc") or ())
        source = None
        if loc and loc[0] in _LOC_SOURCES:
            source, loc = loc[0], loc[1:]
        walk_root = root if source in (None, "body") else None
        located.append((err, _json_path(walk_root, loc)))

    first_path = located[0][1]
    head = first_path[:2] if len(first_path) > 1 and isinstance(first_path[1], int) \
        else first_path[:1]
    group = [(e, p) for e, p in located if p[:len(head)] == head]
    depth = max(len(p) for _, p in group)
    deepest = [(e, p) for e, p in group if len(p) == depth]
    # Among equally deep branch errors, one that got past the type check is the branch
    # the client meant (an empty array is "too short", not "not a string").
    specific = [(e, p) for e, p in deepest if not _is_type_error(e)
                and e.get("type") != "literal_error"]
    if specific:
        return _describe(*specific[0])
    literal = [(e, p) for e, p in deepest if e.get("type") == "literal_error"]
    if literal and isinstance(literal[0][0].get("input"), str):
        return _describe(*literal[0])
    err, path = deepest[0]
    if len(deepest) > 1:
        return _type_error(path, [e for e, _ in deepest], err.get("input"))
    return _describe(err, path)


def _describe(err: Mapping[str, Any], path: list[str | int]) -> APIError:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    param = render_param(path)

    if not path:  # the body itself
        if kind == "missing":
            return APIError.bad_request("The request body is empty; send a JSON object.")
        if isinstance(value, bytes | bytearray):
            return APIError.bad_request("The request body must be a JSON object sent with "
                                        "'Content-Type: application/json'.")
        if kind in _EXPECTED:
            return APIError.bad_request("The request body must be a JSON object.")
        return APIError.bad_request(_clean_msg(err.get("msg", "The request is invalid.")))

    if kind == "extra_forbidden":
        return APIError.bad_request(f"Unrecognized request argument supplied: {param}",
                                    param=param, code="unknown_parameter")
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        field = _discriminator_name(ctx.get("discriminator"))
        param = render_param([*path, field])
        if kind == "union_tag_not_found":
            return _missing(param)
        return APIError.bad_request(
            f"Invalid value for '{param}': {_show(ctx.get('tag'))}. Supported values are: "
            f"{ctx.get('expected_tags')}.", param=param, code="invalid_value")
    if kind == "missing":
        return _missing(param)
    if _is_type_error(err):
        return _type_error(path, [err], value)
    if kind in ("less_than_equal", "less_than", "greater_than_equal", "greater_than"):
        return _range_error(param, kind, ctx, value)
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        return _length_error(param, kind, ctx, value)
    if kind == "string_pattern_mismatch":
        return APIError.bad_request(
            f"Invalid '{param}': string does not match pattern. Expected a string that "
            f"matches the pattern '{ctx.get('pattern')}'.", param=param, code="invalid_value")
    if kind in ("literal_error", "enum"):
        return APIError.bad_request(
            f"Invalid value for '{param}': {_show(value)}. Supported values are: "
            f"{ctx.get('expected')}.", param=param, code="invalid_value")
    return APIError.bad_request(f"Invalid '{param}': {_clean_msg(err.get('msg', ''))}.",
                                param=param, code="invalid_value")


def _missing(param: str | None) -> APIError:
    return APIError.bad_request(f"Missing required parameter: '{param}'.", param=param,
                                code="missing_required_parameter")


def _is_type_error(err: Mapping[str, Any]) -> bool:
    return err.get("type") in _EXPECTED


def _type_error(path: list[str | int], errs: list[Mapping[str, Any]], value: Any
                ) -> APIError:
    """One message for all union branches that failed on the type of the same value."""
    expected: list[str] = []
    for err in errs:
        if err.get("type") == "literal_error":
            text = f"one of {(err.get('ctx') or {}).get('expected')}"
        else:
            text = _EXPECTED[err["type"]]
            loc = err.get("loc") or ()
            if text == "an array" and loc and isinstance(loc[-1], str) \
                    and loc[-1].startswith("list[str]"):
                text = "an array of strings"
        if text not in expected:
            expected.append(text)
    want = " or ".join(expected)
    param = render_param(path)
    return APIError.bad_request(
        f"Invalid type for '{param}': expected {want}, but got {_kind_of(value)} instead.",
        param=param, code="invalid_type")


def _range_error(param: str, kind: str, ctx: Mapping[str, Any], value: Any) -> APIError:
    number = "integer" if isinstance(value, int) and not isinstance(value, bool) else "decimal"
    if kind.startswith("less"):
        op, limit, where = ("<=" if kind == "less_than_equal" else "<",
                            ctx.get("le", ctx.get("lt")), "above maximum")
    else:
        op, limit, where = (">=" if kind == "greater_than_equal" else ">",
                            ctx.get("ge", ctx.get("gt")), "below minimum")
    return APIError.bad_request(
        f"Invalid '{param}': {number} {where} value. Expected a value {op} "
        f"{_num(limit)}, but got {_num(value)} instead.", param=param, code="invalid_value")


def _length_error(param: str, kind: str, ctx: Mapping[str, Any], value: Any) -> APIError:
    what = "string" if kind.startswith("string") or isinstance(value, str) else "array"
    actual = len(value) if isinstance(value, _SIZED) else ctx.get("actual_length")
    if kind.endswith("too_short"):
        limit = ctx.get("min_length")
        if what == "array" and actual == 0:
            return APIError.bad_request(
                f"Invalid '{param}': empty array. Expected an array with minimum length "
                f"{limit}, but got an empty array instead.", param=param, code="empty_array")
        return APIError.bad_request(
            f"Invalid '{param}': {what} too short. Expected a {what} with minimum length "
            f"{limit}, but got a {what} with length {actual} instead.",
            param=param, code="invalid_value")
    limit = ctx.get("max_length")
    return APIError.bad_request(
        f"Invalid '{param}': {what} too long. Expected a {what} with maximum length "
        f"{limit}, but got a {what} with length {actual} instead.",
        param=param, code="invalid_value")


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a value of another type"


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _clean_msg(msg: str) -> str:
    """Drop pydantic's 'Value error, ' prefix: the message is ours and already human."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _discriminator_name(raw: Any) -> str:
    """The field a discriminated union is tagged on (pydantic quotes it: "'role'")."""
    if isinstance(raw, str):
        m = re.fullmatch(r"'(\w+)'", raw)
        if m:
            return m.group(1)
    return "type"


def render_param(path: Sequence[str | int]) -> str | None:
    """``["messages", 2, "content", 1]`` -> ``"messages[2].content[1]"``; ``[]`` -> None."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


# ---- loc -> JSON path -------------------------------------------------------------
#
# Pydantic puts union bookkeeping into ``loc``: a discriminated union adds the tag
# (``messages.0.user.content``), a plain union adds the branch's label
# (``content.list[tagged-union[...]].0``). Tags can equal real field names ("image_url"
# is both a part type and its field), so they cannot be filtered by spelling; instead the
# location is walked alongside the model's type annotations, which says exactly where a
# union (and therefore one extra element) occurs.

_NONE_TYPE = type(None)
_LABEL = re.compile(r"^(str|int|float|bool|bytes|none|any|dict|list|\[key\])$|[\[(]")
_UNION_ORIGINS: tuple[Any, ...] = (Union, types.UnionType)


def _json_path(root: Any, loc: Sequence[str | int]) -> list[str | int]:
    if root is None:
        return _heuristic(loc)
    try:
        return _walk(root, None, list(loc))
    except Exception:  # a shape this walker does not know: never fail the error path
        return _heuristic(loc)


def _heuristic(loc: Sequence[str | int]) -> list[str | int]:
    """Without a model: drop elements that look like pydantic union labels."""
    return [p for p in loc if isinstance(p, int) or not _LABEL.search(p)]


def _unwrap(tp: Any, disc: Any) -> tuple[Any, Any]:
    """Strip Annotated and Optional, keeping any discriminator found on the way."""
    while True:
        if get_origin(tp) is Annotated:
            tp, *meta = get_args(tp)
            for m in meta:
                if isinstance(m, Discriminator):
                    disc = m
                elif isinstance(m, FieldInfo) and m.discriminator is not None:
                    disc = m.discriminator
            continue
        if get_origin(tp) in _UNION_ORIGINS:
            members = [a for a in get_args(tp) if a is not _NONE_TYPE]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp, disc


def _walk(tp: Any, disc: Any, loc: list[str | int]) -> list[str | int]:
    if not loc:
        return []
    tp, disc = _unwrap(tp, disc)
    head, rest = loc[0], loc[1:]
    origin = get_origin(tp)

    if origin in _UNION_ORIGINS:  # a real union: ``head`` is a tag or a branch label
        members = list(get_args(tp))
        member = (_member_by_tag(members, disc, head) if disc is not None
                  else _member_by_label(members, head))
        if member is None:
            return _heuristic(rest)
        return _walk(member, None, rest)

    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if not isinstance(head, str):
            return [head, *_heuristic(rest)]
        for name, field in tp.model_fields.items():
            if head in (name, field.alias):
                return [head, *_walk(field.annotation, field.discriminator, rest)]
        return [head, *_heuristic(rest)]  # an extra key

    if origin in (list, tuple, set, frozenset, Sequence) and isinstance(head, int):
        args = get_args(tp)
        return [head, *_walk(args[0] if args else Any, None, rest)]

    if origin in (dict, Mapping):
        args = get_args(tp)
        rest = [p for p in rest if p != "[key]"]
        return [head, *_walk(args[1] if len(args) == 2 else Any, None, rest)]

    return _heuristic(loc)


def _member_by_tag(members: list[Any], disc: Any, tag: Any) -> Any:
    for member in members:
        inner, _ = _unwrap(member, None)
        if get_origin(member) is Annotated and any(
                isinstance(m, Tag) and m.tag == tag for m in get_args(member)[1:]):
            return member
        if isinstance(disc, str) and isinstance(inner, type) and issubclass(inner, BaseModel):
            field = inner.model_fields.get(disc)
            if field is not None and get_origin(field.annotation) is Literal \
                    and tag in get_args(field.annotation):
                return member
    return None


def _member_by_label(members: list[Any], label: Any) -> Any:
    if not isinstance(label, str):
        return None
    for member in members:
        inner, _ = _unwrap(member, None)
        origin = get_origin(inner)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            if label == inner.__name__:
                return member
        elif origin in (list, tuple, set, frozenset, Sequence):
            if label.startswith(("list[", "tuple[", "set[", "frozenset[")):
                return member
        elif origin in (dict, Mapping):
            if label.startswith("dict["):
                return member
        elif origin is Literal:
            if label.startswith("literal["):
                return member
        elif origin in _UNION_ORIGINS:
            if label.startswith(("tagged-union[", "union[")):
                return member
        elif isinstance(inner, type) and label == inner.__name__:
            return member
    return None


# -------------------------------------------------------------------------- handlers

_RESPONSE_MODELS = frozenset(cls.__name__ for cls in (
    protocol.ChatCompletion, protocol.ChatCompletionChunk, protocol.ChatMessage,
    protocol.Choice, protocol.ChunkChoice, protocol.Delta, protocol.ToolCallDelta,
    protocol.FunctionCallDelta, protocol.Usage, protocol.PromptTokensDetails,
    protocol.CompletionTokensDetails, protocol.ChoiceLogprobs, protocol.TokenLogprobOut,
    protocol.TopLogprob, protocol.ModelCard, protocol.ModelList, protocol.Completion,
    protocol.CompletionChoice, protocol.CompletionLogprobs))

# The body model of each route whose body is not a ChatCompletionRequest, so that a
# schema error's ``param`` is the path the client wrote in that body.
_BODY_MODELS: dict[str, type[BaseModel]] = {
    "/v1/completions": protocol.CompletionRequest,
    "/v1/responses": protocol_responses.CreateResponseRequest}


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.to_response()


async def _chat_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ChatRequestError)
    return APIError.from_chat_error(exc).to_response()


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    model = _BODY_MODELS.get(request.url.path)
    return error_for_validation(exc, model=model).to_response()


async def _pydantic_validation(request: Request, exc: Exception) -> JSONResponse:
    """A request model failing is the client's 400; a response model failing is our bug."""
    assert isinstance(exc, pydantic.ValidationError)
    if exc.title in _RESPONSE_MODELS:
        log.error("building a %s response failed", exc.title, exc_info=exc)
        return APIError.internal().to_response()
    return error_for_validation(exc).to_response()


_HTTP_CODES = {413: "request_too_large", 429: "rate_limit_exceeded"}


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the OpenAI envelope."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else None
    where = f"{request.method} {request.url.path}"
    if status == 404 and detail in (None, "Not Found"):
        message = f"Invalid URL ({where})"
    elif status == 405 and detail in (None, "Method Not Allowed"):
        message = f"Method not allowed ({where})"
    else:
        message = detail or f"HTTP {status}"
    err = APIError(message, status_code=status,
                   type="invalid_request_error" if status < 500 else "server_error",
                   code=_HTTP_CODES.get(status), headers=exc.headers)
    return err.to_response()


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: log the traceback here, send only a generic 500."""
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return APIError.internal().to_response()


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through the OpenAI envelope (400 for schema errors, not 422).

    The catch-all is served by Starlette's outermost middleware, which re-raises after
    responding; the server (uvicorn) may therefore log the same exception once more.
    """
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(ChatRequestError, _chat_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(pydantic.ValidationError, _pydantic_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unhandled)


__all__ = [
    "INTERNAL_ERROR_MESSAGE",
    "JSON_INVALID_MESSAGE",
    "APIError",
    "error_for_validation",
    "install_error_handlers",
    "render_param",
    "sse_error_event",
]
