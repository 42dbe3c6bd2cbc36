"""The OpenAI Chat Completions wire format as pydantic v2 models, in one place.

Request models mirror OpenAI's current spec field for field, so an official client is
never rejected for a parameter it legitimately sends; whether a feature is honoured is
decided by the route, not here. Unknown top-level keys, message keys and content-part
keys are errors (``extra="forbid"``), because a silently ignored typo changes the answer.
Peripheral option objects (audio, web search, moderation, ...) allow extra keys, so a
newer client adding a sub-field is not turned away over a feature this server ignores.

Response models serialise to exactly OpenAI's JSON shape through ``to_json()``:
required-but-nullable keys are present as ``null``; optional keys are left out.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

# ---------------------------------------------------------------------------- bases


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class _Loose(BaseModel):
    """Unknown keys are kept: peripheral options whose sub-fields may grow upstream."""

    model_config = ConfigDict(extra="allow")


def _type_tag(default: str) -> Any:
    """Discriminator on ``type`` that treats a missing ``type`` as ``default``.

    Some clients leave ``type`` off tool calls and tools (there is only one common
    kind); a plain discriminator would reject them with an unhelpful tag error.
    """

    def get(value: Any) -> Any:
        if isinstance(value, dict):
            return value.get("type", default)
        return getattr(value, "type", default)

    return Discriminator(get)


FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
"""Names of functions and json_schema formats, as OpenAI restricts them."""

# ---------------------------------------------------------------------- content parts


class PromptCacheBreakpoint(_Loose):
    """Explicit prompt-cache breakpoint on a content part (accepted, not acted on)."""

    mode: Literal["explicit"] = "explicit"


class TextPart(_Strict):
    type: Literal["text"]
    text: str
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class InputAudio(_Strict):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class FileData(_Strict):
    filename: str | None = None
    file_data: str | None = None
    file_id: str | None = None


class FilePart(_Strict):
    type: Literal["file"]
    file: FileData
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


UserContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
"""Parts a user message may hold; the route rejects the media ones a model cannot read."""

AssistantContentPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]

TextParts = Annotated[list[TextPart], Field(min_length=1)]
UserParts = Annotated[list[UserContentPart], Field(min_length=1)]
AssistantParts = Annotated[list[AssistantContentPart], Field(min_length=1)]

# ------------------------------------------------------------------------- tool calls


class FunctionCall(_Strict):
    """A function call as the model produced it: ``arguments`` is a JSON *string*."""

    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class CustomToolCallData(_Strict):
    name: str
    input: str


class CustomToolCall(_Strict):
    id: str
    type: Literal["custom"]
    custom: CustomToolCallData


AnyToolCall = Annotated[
    Annotated[ToolCall, Tag("function")] | Annotated[CustomToolCall, Tag("custom")],
    _type_tag("function"),
]

# --------------------------------------------------------------------------- messages


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str | TextParts
    name: str | None = None


class DeveloperMessage(_Strict):
    role: Literal["developer"]
    content: str | TextParts
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | UserParts
    name: str | None = None


class AssistantAudioRef(_Loose):
    """A previous audio response, referenced by id."""

    id: str


class _ContentRequired:
    """Placeholder for an assistant ``content`` that is absent although required."""


_CONTENT_REQUIRED = _ContentRequired()


class AssistantMessage(_Strict):
    """A previous model turn. ``content`` may be null when the turn called tools."""

    role: Literal["assistant"]
    content: str | AssistantParts | None = None
    refusal: str | None = None
    name: str | None = None
    audio: AssistantAudioRef | None = None
    tool_calls: list[AnyToolCall] | None = None
    function_call: FunctionCall | None = None

    @model_validator(mode="before")
    @classmethod
    def _mark_missing_content(cls, data: Any) -> Any:
        """OpenAI requires content unless the turn carries calls (or a refusal/audio).

        Decided on the raw input, so an invalid ``tool_calls`` is reported as itself,
        not as a missing content; the placeholder makes the error point at ``content``.
        """
        if isinstance(data, dict) and data.get("content") is None and not any(
                data.get(k) for k in ("tool_calls", "function_call", "refusal", "audio")):
            return {**data, "content": _CONTENT_REQUIRED}
        return data

    @field_validator("content", mode="before")
    @classmethod
    def _content_required(cls, value: Any) -> Any:
        if value is _CONTENT_REQUIRED:
            raise ValueError("an assistant message needs 'content' unless it has "
                             "'tool_calls' (or 'function_call')")
        return value


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: str | TextParts
    tool_call_id: str
    name: str | None = None  # not in the spec, but sent by several clients; harmless


class FunctionMessage(_Strict):
    """Deprecated ``function`` role (result of a legacy function call)."""

    role: Literal["function"]
    content: str | None
    name: str


ChatMessageParam = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage
    | FunctionMessage,
    Field(discriminator="role"),
]

# ------------------------------------------------------------------------------ tools


class FunctionDefinition(_Strict):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class CustomTextFormat(_Strict):
    type: Literal["text"]


class CustomGrammar(_Strict):
    definition: str
    syntax: Literal["lark", "regex"]


class CustomGrammarFormat(_Strict):
    type: Literal["grammar"]
    grammar: CustomGrammar


class CustomToolDefinition(_Strict):
    name: str
    description: str | None = None
    format: Annotated[CustomTextFormat | CustomGrammarFormat,
                      Field(discriminator="type")] | None = None


class CustomTool(_Strict):
    """A free-form ``custom`` tool: parsed so the route can reject it by name."""

    type: Literal["custom"]
    custom: CustomToolDefinition


AnyTool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[CustomTool, Tag("custom")],
    _type_tag("function"),
]


class LegacyFunction(_Strict):
    """Deprecated ``functions`` entry (predecessor of tools)."""

    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class NamedCustomToolChoice(_Strict):
    type: Literal["custom"]
    custom: FunctionName


class AllowedTools(_Strict):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class AllowedToolsChoice(_Strict):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[NamedToolChoice | NamedCustomToolChoice | AllowedToolsChoice,
                Field(discriminator="type")]
)

# -------------------------------------------------------------------- response_format


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJSONObject(_Strict):
    type: Literal["json_object"]


class JSONSchemaFormat(BaseModel):
    """``json_schema`` body. ``schema`` shadows a BaseModel attribute, hence ``schema_``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_serializer(mode="wrap")
    def _by_alias(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Always write ``schema`` (the wire name), whether or not by_alias was asked."""
        data = handler(self)
        if "schema_" in data:
            data["schema"] = data.pop("schema_")
        return data


class ResponseFormatJSONSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema,
    Field(discriminator="type"),
]

# ------------------------------------------------------------ peripheral request options


class StreamOptions(_Loose):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class VoiceRef(_Loose):
    id: str


class AudioParams(_Loose):
    voice: str | VoiceRef
    format: Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]


class PredictionContent(_Loose):
    type: Literal["content"]
    content: str | TextParts


class WebSearchLocation(_Loose):
    country: str | None = None
    region: str | None = None
    city: str | None = None
    timezone: str | None = None


class WebSearchUserLocation(_Loose):
    type: Literal["approximate"]
    approximate: WebSearchLocation


class WebSearchOptions(_Loose):
    user_location: WebSearchUserLocation | None = None
    search_context_size: Literal["low", "medium", "high"] | None = None


class ModerationConfig(_Loose):
    mode: Literal["score", "block"]


class ModerationPolicy(_Loose):
    input: ModerationConfig | None = None
    output: ModerationConfig | None = None


class ModerationParam(_Loose):
    model: str
    policy: ModerationPolicy | None = None


class PromptCacheOptions(_Loose):
    ttl: Literal["30m"] | None = None
    mode: Literal["implicit", "explicit"] | None = None


_TOKEN_ID = re.compile(r"^[0-9]+$")

METADATA_MAX_PAIRS = 16


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    """OpenAI's limit on ``metadata`` (keys (64) and values (512) are limited by type),
    and text any database can hold: no NUL, no unpaired surrogate (``"\\ud800"``)."""
    if len(value) > METADATA_MAX_PAIRS:
        raise ValueError(f"too many properties. Expected an object with at most "
                         f"{METADATA_MAX_PAIRS} properties, but got an object with "
                         f"{len(value)} properties instead")
    for text in (*value, *value.values()):
        if "\x00" in text or _unpaired_surrogate(text):
            raise ValueError("keys and values must be text without NUL characters or "
                             "unpaired surrogates")
    return value


def _unpaired_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    AfterValidator(_check_metadata),
    Field(json_schema_extra={"maxProperties": METADATA_MAX_PAIRS}),
]
"""Up to 16 string pairs, keys at most 64 characters, values at most 512 (OpenAI's)."""

# ---------------------------------------------------------------------------- request


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions`` body: every field of OpenAI's spec plus local extras.

    Field order matters for one check: ``logprobs`` precedes ``top_logprobs`` so that
    the latter's validator can see it (and report the error at ``top_logprobs``).
    """

    model: str
    messages: list[ChatMessageParam] = Field(min_length=1)

    # sampling
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    # local extensions (llama.cpp / vLLM style samplers)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=10)

    # streaming
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    # tools and output format
    tools: list[AnyTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    functions: list[LegacyFunction] | None = Field(default=None, min_length=1, max_length=128)
    function_call: Literal["none", "auto"] | FunctionName | None = None

    # accepted; the route decides what is honoured
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioParams | None = None
    reasoning_effort: Literal[
        "none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    store: bool | None = None
    metadata: Metadata | None = None
    prediction: PredictionContent | None = None
    web_search_options: WebSearchOptions | None = None
    moderation: ModerationParam | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    user: str | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        """OpenAI rejects top_logprobs without logprobs; 0 asks for nothing, so it passes."""
        if value and not info.data.get("logprobs"):
            raise ValueError("'logprobs' must be set to true when 'top_logprobs' is used")
        return value

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        """OpenAI allows up to 4 stop sequences."""
        if isinstance(value, list) and len(value) > 4:
            raise ValueError(f"at most 4 stop sequences are allowed, got {len(value)}")
        return value

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _check_logit_bias(cls, value: Any) -> Any:
        """Keys are token ids (non-negative integers as strings); biases lie in -100..100.

        Checked before type coercion so every failure is reported at ``logit_bias``
        itself rather than at a client-chosen key.
        """
        if not isinstance(value, dict):
            return value  # None, or a type error pydantic reports itself
        problems = []
        for key, bias in value.items():
            if not isinstance(key, str) or not _TOKEN_ID.match(key):
                problems.append(f"key {key!r} is not a token id (a non-negative integer)")
            elif isinstance(bias, bool) or not isinstance(bias, int | float):
                problems.append(f"the bias for token {key} must be a number, got {bias!r}")
            elif not -100 <= bias <= 100:
                problems.append(f"the bias for token {key} must be between -100 and 100, "
                                f"got {bias}")
        if problems:  # every bad entry at once, so one correction fixes the request
            raise ValueError("; ".join(problems))
        return value

    def effective_max_tokens(self) -> int | None:
        """The completion limit: ``max_completion_tokens`` wins over deprecated ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def stop_list(self) -> list[str]:
        """Stop sequences as a list; empty strings would stop at once, so they are dropped."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (and other chunks carry ``usage: null``)."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# -------------------------------------------------------------------------- responses


class _Out(BaseModel):
    """Response model: keys named in ``_omit_if_none`` are left out when None.

    Every other key is always written, so required-but-nullable fields come out as
    ``null`` exactly as OpenAI sends them.
    """

    _omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_optional(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in self._omit_if_none:
            if key in data and data[key] is None:
                del data[key]
        return data

    def to_json(self) -> str:
        """Compact JSON in OpenAI's shape."""
        return self.model_dump_json()


class _Sparse(BaseModel):
    """Stream fragment: only the keys the caller set are written (``Delta()`` -> ``{}``)."""

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    audio_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(
        default_factory=CompletionTokensDetails)

    @classmethod
    def from_counts(cls, prompt_tokens: int, completion_tokens: int,
                    cached_tokens: int = 0, audio_tokens: int = 0) -> Usage:
        """Build usage with ``total_tokens`` computed, so it can never disagree."""
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens,
                                                             audio_tokens=audio_tokens))


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """Both keys are required by the spec, so ``refusal`` is written as null."""

    content: list[TokenLogprobOut] | None = None
    refusal: list[TokenLogprobOut] | None = None


class URLCitation(BaseModel):
    start_index: int
    end_index: int
    url: str
    title: str


class Annotation(BaseModel):
    type: Literal["url_citation"] = "url_citation"
    url_citation: URLCitation


class ChatMessage(_Out):
    """The assistant message of a non-streamed choice."""

    _omit_if_none: ClassVar[frozenset[str]] = frozenset({"tool_calls", "function_call"})

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    annotations: list[Annotation] = Field(default_factory=list)


class Choice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(_Out):
    """Non-streamed response. Serialise with ``to_json()``."""

    _omit_if_none: ClassVar[frozenset[str]] = frozenset({"service_tier"})

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    service_tier: str | None = None


class FunctionCallDelta(_Sparse):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Sparse):
    """One fragment of tool call ``index``; only ``index`` is required."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class Delta(_Sparse):
    """Stream delta; only the keys set are written.

    First chunk: ``Delta(role="assistant", content="")``; content: ``Delta(content="x")``;
    finish chunk: ``Delta()`` -> ``{}``. Passing ``refusal=None`` writes ``"refusal": null``.
    """

    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta = Field(default_factory=Delta)
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One streamed chunk. Serialise with ``to_json(include_usage)`` or ``to_sse(...)``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    service_tier: str | None = None
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None

    def to_dict(self, include_usage: bool = False) -> dict[str, Any]:
        """OpenAI's chunk shape as a dict.

        ``usage`` is written (as null on ordinary chunks) only when the client asked for
        ``stream_options.include_usage``, or when this chunk carries usage itself.
        """
        data = self.model_dump(mode="json")
        if data["service_tier"] is None:
            del data["service_tier"]
        if data["usage"] is None and not include_usage:
            del data["usage"]
        return data

    def to_json(self, include_usage: bool = False) -> str:
        """Compact JSON in OpenAI's shape; see ``to_dict`` for the ``usage`` rule."""
        exclude: set[str] = set()
        if self.service_tier is None:
            exclude.add("service_tier")
        if self.usage is None and not include_usage:
            exclude.add("usage")
        return self.model_dump_json(exclude=exclude or None)

    def to_sse(self, include_usage: bool = False) -> str:
        """The chunk as one data-only SSE event."""
        return f"data: {self.to_json(include_usage)}\n\n"


class ContentChunks:
    """Plain content chunks of one stream, written from a template.

    Nearly every chunk of a stream is one token of content. Building and serialising
    three models for it costs ~0.1 ms on the event loop, which shares two cores with
    llama.cpp's threads: a few percent of a single stream's speed. The template is
    the model's own serialisation of a chunk whose content is a marker, split
    around it, so the shape cannot drift from ``ChatCompletionChunk``.
    """

    _MARK = "chatd-content-marker-7f3a"

    def __init__(self, fields: dict[str, Any], include_usage: bool) -> None:
        self._fields = fields
        self._include_usage = include_usage
        self._templates: dict[int, tuple[str, str] | None] = {}

    def sse(self, index: int, content: str) -> str:
        """The data-only SSE event carrying `content` for choice `index`."""
        if index not in self._templates:
            self._templates[index] = self._template(index)
        template = self._templates[index]
        if template is None:  # the marker also occurs in a field: the slow path
            return self._chunk(index, content)
        return template[0] + json.dumps(content, ensure_ascii=False)[1:-1] + template[1]

    def _chunk(self, index: int, content: str) -> str:
        return ChatCompletionChunk(
            **self._fields, choices=[ChunkChoice(index=index, delta=Delta(content=content))],
        ).to_sse(self._include_usage)

    def _template(self, index: int) -> tuple[str, str] | None:
        parts = self._chunk(index, self._MARK).split(self._MARK)
        return (parts[0], parts[1]) if len(parts) == 2 else None


SSE_DONE = "data: [DONE]\n\n"
"""The event that ends every stream."""

# ------------------------------------------------------- stored chat completions (store)


class ChatCompletionUpdateRequest(_Strict):
    """``POST /v1/chat/completions/{id}``: only the metadata of a stored one can change
    (null clears it)."""

    metadata: Metadata | None


class StoredChatCompletion(ChatCompletion):
    """A stored completion as retrieved and listed: the POST's answer plus its metadata.
    (Documentation only: the routes write the stored JSON as it was kept.)"""

    metadata: dict[str, str] = Field(default_factory=dict)


class ChatCompletionList(BaseModel):
    """A page of stored completions; ``first_id`` / ``last_id`` are null when it is empty."""

    object: Literal["list"] = "list"
    data: list[StoredChatCompletion]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoredMessage(_Loose):
    """An input message of a stored completion, id ``{completion_id}-{index}``; with
    content parts, ``content`` is their text joined and ``content_parts`` the parts.
    Other keys the message was sent with (``tool_calls``, ``tool_call_id``) are kept."""

    id: str
    role: str
    content: str | None
    name: str | None = None
    content_parts: list[dict[str, Any]] | None = None


class ChatCompletionMessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredMessage]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ChatCompletionDeleted(BaseModel):
    id: str
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    deleted: bool = True


# ----------------------------------------------------------------------------- models


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # chatd's extra (as LiteLLM and vLLM add fields): what a request may carry.
    input_modalities: list[str] = Field(default_factory=lambda: ["text"])


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)

# ------------------------------------------------------- legacy completions (/v1/completions)


TokenId = Annotated[int, Field(ge=0, strict=True)]


class CompletionRequest(_Strict):
    """``POST /v1/completions`` body: every field of OpenAI's legacy Completions spec,
    plus the chat endpoint's local sampler extensions. Stops and ``logit_bias`` obey
    the chat endpoint's rules (shared, not copied)."""

    model: str
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    best_of: int | None = Field(default=None, ge=0, le=20)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    user: str | None = None

    # local extensions (llama.cpp / vLLM style samplers)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=10)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_kind_of_prompt(cls, value: Any) -> Any:
        """A list mixing texts, token ids and token lists fits no form; say so plainly
        rather than report each form's type error at some element."""
        if isinstance(value, list) and len({type(item) for item in value}) > 1:
            raise ValueError("a list prompt holds only strings, only token ids, or only "
                             "arrays of token ids")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        """An empty prompt gives the model nothing to continue (OpenAI's default, a lone
        end-of-text token, is no use to anyone)."""
        if value == "" or value == []:
            raise ValueError("the prompt must not be empty")
        if isinstance(value, list) and any(p == "" or p == [] for p in value):
            raise ValueError("no prompt in the list may be empty")
        return value

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        return ChatCompletionRequest._at_most_four_stops(value)

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _check_logit_bias(cls, value: Any) -> Any:
        return ChatCompletionRequest._check_logit_bias(value)

    stop_list = ChatCompletionRequest.stop_list
    include_usage = ChatCompletionRequest.include_usage


CompletionFinishReason = Literal["stop", "length", "content_filter"]


class CompletionLogprobs(BaseModel):
    """The legacy logprobs object: parallel lists, one entry per returned token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: CompletionFinishReason | None = None


class Completion(BaseModel):
    """A ``text_completion``: the whole response, or one streamed chunk of it (the same
    object; a chunk's ``usage`` is null, or left out without ``include_usage``)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: Usage | None = None

    def to_json(self, include_usage: bool = False) -> str:
        """Compact JSON; ``usage`` is written when set, or as null with ``include_usage``."""
        exclude = {"usage"} if self.usage is None and not include_usage else None
        return self.model_dump_json(exclude=exclude)

    def to_sse(self, include_usage: bool = False) -> str:
        """The chunk as one data-only SSE event."""
        return f"data: {self.to_json(include_usage)}\n\n"
