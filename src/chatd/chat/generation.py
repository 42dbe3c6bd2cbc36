"""What chat and text completions share on the way to the engine and back.

Both endpoints end in the same GenerationRequest: the same context and KV-cache
limits, the same mapping of OpenAI's sampling fields onto SamplingParams, and the
same handling of one engine event (stop strings, token counts, cancelling a choice
whose stop string matched). Only how the prompt is made differs (a chat template
there, the text as given here), so everything else lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from chatd.chat.choice import ChoiceDelta, ChoiceStream
from chatd.chat.errors import ChatRequestError, GenerationFailed
from chatd.engine.types import SamplingParams, TokenEvent

if TYPE_CHECKING:
    from chatd.engine.llama import LlamaModel


@dataclass
class UsageCount:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    audio_tokens: int = 0   # of the prompt tokens, those an audio clip became


class Cancellable(Protocol):
    """The part of the engine's GenerationStream a choice needs: stop one choice."""

    def cancel(self, index: int | None = None) -> None: ...


@dataclass(frozen=True)
class Limits:
    """The server's bounds on one request: context, KV pool, choices, vocabulary."""

    ctx_size: int
    kv_cells: int
    max_n: int
    n_vocab: int

    def check_n(self, n: int, param: str = "n") -> None:
        if n > self.max_n:
            raise ChatRequestError(f"{param}={n} is more than this server allows per request "
                                   f"({self.max_n}).", param=param)

    def max_new_tokens(self, prompt_len: int, limit: int | None, n: int, *,
                       what: str = "messages") -> int:
        """The completion budget for `n` choices after a `prompt_len`-token prompt.

        The prompt plus `limit` must fit the context, and the KV pool must hold the
        prompt plus every choice's worst case at once, or the request could never be
        admitted: a default (None) limit shrinks to fit, an explicit one that cannot
        fit is the client's to change. `what` names the prompt in messages ("messages"
        for chat, "prompt" for text completions) and is the error's param.
        """
        room = self.ctx_size - prompt_len
        if room <= 0 or (limit is not None and limit > room):
            asked = f" plus max_tokens={limit}" if limit is not None else ""
            raise ChatRequestError(
                f"This model's maximum context length is {self.ctx_size} tokens. However, "
                f"your {what} resulted in {prompt_len} tokens{asked}. Please reduce the "
                f"length of the {what} or the completion.",
                param=what, code="context_length_exceeded")
        pool = self.kv_cells
        share = (pool - prompt_len) // n
        if limit is None:
            room = min(room, share)
        elif limit > share:
            raise ChatRequestError(
                f"n={n} choices of max_tokens={limit} after a {prompt_len}-token prompt "
                f"need {prompt_len + n * limit} KV cache cells; this server holds {pool}. "
                f"Lower n or max_tokens (at most {max(share, 0)} for n={n}).",
                param="max_tokens")
        if room <= 0:
            raise ChatRequestError(
                f"This prompt of {prompt_len} tokens leaves no room for {n} choices in the "
                f"server's KV cache of {pool} cells. Lower n or shorten the {what}.",
                param="n")
        return limit if limit is not None else room

    def logit_bias(self, bias: Mapping[str, float] | None) -> dict[int, float]:
        """Token ids as ints; every id outside the vocabulary is named in one error."""
        if not bias:
            return {}
        n_vocab = self.n_vocab
        out = {int(key): float(value) for key, value in bias.items()}
        outside = [str(token) for token in out if not 0 <= token < n_vocab]
        if outside:
            raise ChatRequestError(f"logit_bias names token ids outside this model's "
                                   f"vocabulary (0..{n_vocab - 1}): {', '.join(outside)}.",
                                   param="logit_bias")
        return out

    def sampling(self, req: Any, *, max_new_tokens: int, logprobs: bool,
                 top_logprobs: int) -> SamplingParams:
        """OpenAI's sampling fields (and the local top_k/min_p/repetition_penalty)
        of either request model, with OpenAI's defaults for the ones left out."""
        return SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            min_p=req.min_p or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            logit_bias=self.logit_bias(req.logit_bias),
            seed=req.seed,
            max_new_tokens=max_new_tokens,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )


def tokenize_text(model: LlamaModel, text: str) -> list[int]:
    """Text to token ids as llama-server and vLLM do it: special tokens written in the
    text (``<|im_start|>``) are parsed as such, and BOS is added when the model wants
    it, unless the text already begins with it (a template that writes it itself)."""
    bos_text = model.token_text(model.bos_id) if model.bos_id >= 0 else ""
    add_bos = model.add_bos and not (bos_text and text.startswith(bos_text))
    return model.tokenize(text, add_special=add_bos, parse_special=True)


def feed_event(stream: Cancellable, choice: ChoiceStream, event: TokenEvent,
               usage: UsageCount) -> ChoiceDelta | None:
    """One engine event through its choice; None when there is nothing to pass on.

    Counts the token, and cancels the choice in the engine as soon as a stop string
    matched (the tokens it decoded meanwhile are dropped here).
    """
    if choice.finished:
        return None  # tokens decoded after a stop string matched
    if event.finish_reason == "error":
        raise GenerationFailed(event.error or "generation failed")
    if event.token_id >= 0:
        usage.completion_tokens += 1
    delta = choice.feed(event)
    if delta.finish_reason and event.finish_reason is None:
        stream.cancel(event.index)  # stop string matched
    if delta.content or delta.tool_calls or delta.logprobs or delta.finish_reason:
        if choice.held_at:
            delta.held, choice.held_at = tuple(choice.held_at), []
        return delta
    if event.token_id >= 0:
        choice.held_at.append(event.at)
    return None
