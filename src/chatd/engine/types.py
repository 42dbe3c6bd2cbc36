"""The seam between the chat layer and the engine: plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-sequence sampling settings; defaults are OpenAI's."""

    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # llama.cpp/HF style, over prompt and output
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    max_new_tokens: int = 256
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to continue `n` times; the prompt is prefilled once for all n.

    `grammar` (an llguidance grammar: JSON schema, Lark or regex) constrains every
    choice from its first token; the engine compiles it once and caches it.

    `final_only`: the consumer reads nothing before the request ends (a non-streaming
    completion with no stop string to watch for), so the engine hands all events over
    at once when every choice has finished, instead of waking the event loop for each
    token. Events still carry their own emission time (`TokenEvent.at`).

    `media`: the prompt's image/audio chunks (chatd.engine.multimodal.MediaSpan), in
    order; their rows stand in `prompt_tokens` as negative placeholder ids.
    """

    prompt_tokens: list[int]
    params: SamplingParams
    n: int = 1
    grammar: str | None = None
    request_id: str = ""
    final_only: bool = False
    media: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of a token under the model (before sampling transforms)."""

    token_id: int
    token_bytes: bytes
    logprob: float


@dataclass(slots=True)
class TokenEvent:
    """One generated token of one choice.

    `text` is the UTF-8-safe text this token completes: bytes of a character split
    across tokens are held back until the character is whole, so `text` may be "".
    The last event of a choice has `finish_reason` set; its `token_id` is -1 when the
    choice ended without a new token (cancellation, error). `at` is when the engine
    produced it (time.perf_counter), whenever the consumer gets to see it.
    """

    index: int
    token_id: int
    text: str
    logprob: TokenLogprob | None = None
    top_logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    at: float = 0.0
