"""The Responses API's request body (``POST /v1/responses``), as OpenAI specifies it.

Only the shape is checked here (types, ranges, names): what chatd cannot honour is
refused with a 400 naming it in `chatd.api.responses_input`, which turns the request
into a chat request. Input items and tools stay plain objects at this level, so that
an unsupported item or built-in tool is named by its own ``type`` in the error,
rather than lost in a union's validation message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatd.api.protocol import (
    JSONSchemaFormat,
    Metadata,
    ResponseFormatJSONObject,
    ResponseFormatText,
)

MIN_OUTPUT_TOKENS = 16
"""OpenAI's lower bound on ``max_output_tokens``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


FormatText = ResponseFormatText
FormatJSONObject = ResponseFormatJSONObject


class FormatJSONSchema(JSONSchemaFormat):
    """Flat, unlike Chat Completions: ``name`` and ``schema`` sit beside ``type``, and
    ``schema`` is required."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


TextFormat = Annotated[FormatText | FormatJSONObject | FormatJSONSchema,
                       Field(discriminator="type")]


class TextOptions(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class CreateResponseRequest(_Strict):
    """``POST /v1/responses``. ``seed`` is chatd's own (as in chat): a fixed seed
    gives the same output for the same request."""

    model: str
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    background: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    include: list[str] | None = None

    max_output_tokens: int | None = Field(default=None, ge=MIN_OUTPUT_TOKENS)
    max_tool_calls: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    truncation: Literal["auto", "disabled"] | None = None

    text: TextOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningOptions | None = None

    metadata: Metadata | None = None
    user: str | None = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None

    # Accepted so that a request using them gets a 400 naming them, not "extra field".
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    context_management: list[Any] | dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
