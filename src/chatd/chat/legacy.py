"""The legacy Completions API's own shapes: its logprobs object and best_of ranking.

Pure functions over the chat layer's per-token logprob entries (see
``chatd.chat.choice.logprob_entry``), so they can be tested without a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from chatd.chat.choice import LogprobEntry


@dataclass
class LegacyLogprobs:
    """OpenAI's ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``.

    ``text_offset`` is each token's first character in the choice's ``text``.
    """

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def extend(self, other: LegacyLogprobs) -> None:
        self.tokens.extend(other.tokens)
        self.token_logprobs.extend(other.token_logprobs)
        self.top_logprobs.extend(other.top_logprobs)
        self.text_offset.extend(other.text_offset)

    def mean(self) -> float:
        """Log probability per token; -inf for no tokens, so such a choice ranks last."""
        if not self.token_logprobs:
            return -math.inf
        return math.fsum(self.token_logprobs) / len(self.token_logprobs)


def legacy_logprobs(entries: Sequence[LogprobEntry], offsets: Sequence[int]) -> LegacyLogprobs:
    """Chat-style entries (token, logprob, top_logprobs list) in the legacy layout.

    The top alternatives become a ``{token: logprob}`` dict; two ids that read the
    same (e.g. both a replacement character) keep the likelier one, as the entries
    come best first.
    """
    if len(entries) != len(offsets):
        raise ValueError(f"{len(entries)} logprob entries but {len(offsets)} offsets")
    out = LegacyLogprobs(text_offset=list(offsets))
    for entry in entries:
        out.tokens.append(entry["token"])
        out.token_logprobs.append(entry["logprob"])
        top: dict[str, float] = {}
        for alt in entry.get("top_logprobs") or []:
            top.setdefault(alt["token"], alt["logprob"])
        out.top_logprobs.append(top)
    return out


def rank_best(scores: Sequence[float], n: int) -> list[int]:
    """Indices of the `n` best candidates, best first; a tie goes to the earlier one.

    OpenAI's ``best_of`` returns "the one with the highest log probability per
    token", so a score is a candidate's mean token logprob (``LegacyLogprobs.mean``):
    a plain sum would favour whichever candidate stopped first.
    """
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[:n]
