"""The engine layer: token ids in, token events out, many sequences per decode."""

from chatd.engine.types import (
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)

__all__ = [
    "FinishReason",
    "GenerationRequest",
    "SamplingParams",
    "TokenEvent",
    "TokenLogprob",
]
