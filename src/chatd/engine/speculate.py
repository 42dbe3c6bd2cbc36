"""Draft tokens without a draft model: prompt lookup (n-gram) speculation.

On a CPU at small batch a step is bound by streaming the weights, so decoding a
sequence's next token plus k guessed ones costs little more than the one. The
guess is what followed the latest earlier occurrence of the text's last few
tokens, in the prompt or the output so far: output that quotes, edits or repeats
(code, documents, JSON with repeated keys) is then emitted several tokens a step.

Verification (engine) samples each row in turn exactly as without speculation and
stops at the first sampled token that differs from the draft. With a one-token
draft that is standard speculative sampling (accept x with probability p(x), else
draw from p without x): the emitted tokens have the model's distribution, greedy
output is unchanged, and each emitted token uses one draw of the sequence's
generator, so a seeded output is the same with speculation on or off.

A drafter adapts: its draft length doubles after a fully accepted draft and halves
after a rejected one; after a rejected single-token draft it rests for a while,
longer each time, so plain chat (which rarely repeats) pays almost nothing.
"""

from __future__ import annotations

from collections.abc import Callable

NGRAM_SIZES = (4, 3, 2)   # longest match first
MAX_DRAFT = 12
START_DRAFT = 4
MAX_REST = 64             # steps a drafter rests after repeated misses
INDEX_WINDOW = 8192       # only the latest tokens are searched


class NgramDrafter:
    """Drafts for one sequence from its own tokens (prompt + output), indexed as it grows."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = tokens  # the sequence's own list, appended to by the engine
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest use
        self._indexed = max(0, len(tokens) - INDEX_WINDOW)
        self.length = START_DRAFT
        self._rest = 0
        self._rest_after_miss = 4

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` guessed next tokens (none when nothing matches or resting)."""
        if self._rest > 0:
            self._rest -= 1
            return []
        tokens = self._tokens
        end = len(tokens)
        latest = self._latest
        # Index every n-gram that has a follower, i.e. ends before the last token.
        for stop in range(max(self._indexed, 1), end):
            for n in NGRAM_SIZES:
                if stop >= n:
                    latest[tuple(tokens[stop - n:stop])] = stop
        self._indexed = max(self._indexed, end)
        count = min(self.length, limit)
        if count <= 0:
            return []
        for n in NGRAM_SIZES:
            if end >= n:
                found = latest.get(tuple(tokens[end - n:end]))
                if found is not None:
                    return tokens[found:found + count]
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        """Adapt the draft length to how much of the last draft was accepted."""
        if accepted == drafted:
            self.length = min(MAX_DRAFT, self.length * 2)
            self._rest_after_miss = 4
        elif accepted == 0:
            if self.length == 1:
                self._rest = self._rest_after_miss
                self._rest_after_miss = min(MAX_REST, self._rest_after_miss * 2)
            self.length = max(1, self.length // 2)
        else:
            self.length = min(MAX_DRAFT, accepted + 1)


def verify(draft: list[int], emit: Callable[[int], int | None]) -> int:
    """Sample rows in order until one disagrees with the draft; return how many guesses
    were accepted.

    `emit(i)` samples row i (the row after the i-th guess) exactly as without
    speculation and returns the token, or None when the sequence ended with it. Row
    i is only sampled when guesses 1..i were all what the model drew.
    """
    for i in range(len(draft) + 1):
        token = emit(i)
        if token is None or i == len(draft) or token != draft[i]:
            return i
    raise AssertionError("unreachable")
