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

How long a draft is worth depends on what a row costs. On a small model on a few
CPU cores a step is compute-bound, not bandwidth-bound (SmolLM2-135M on 2 cores:
~7.4 ms for 1 row, ~23 ms for 4), so a guess pays only when it is likely to be
taken. `StepCost` learns the step time as a + b x rows from the steps the engine
runs, each drafter keeps an estimate of how often its guesses are taken, and the
draft length is the one that maximises expected tokens per second of the step
(none at all when no length beats plain decoding). After a draft that was wholly
rejected a drafter rests a few steps, longer each time, so text that does not
repeat costs nothing.

The line is fitted mostly on small steps, and rows get cheaper as a step grows
(2 cores, 2 sequences: 8 ms a row at 2 rows, 5 ms at 26), so it undervalues long
drafts. A drafter whose guesses are taken at least `SURE_RATE` of the time drafts
all it can, up to `MAX_DRAFT`: a step costs ~5 ms plus ~5.3 ms a row for one
sequence on 2 cores (10 ms for 1 row, 76 ms for 13, 175 ms for 33), so only long,
wholly taken drafts spread the fixed part thin, and a cap of 32 gave 1.13x the
tokens per second of 12 on "repeat this text" (6 alternating rounds). Only after a
draft that was wholly taken, though: where the text just departed from what it
copies, the next match is often a wrong one, and a wrong 32-token guess costs a
step of 33 rows for one token, so the draft after a miss is one guess
(`AFTER_MISS_DRAFT`).
"""

from __future__ import annotations

from collections.abc import Callable

NGRAM_SIZES = (4, 3, 2)   # longest match first
MAX_DRAFT = 32            # guesses in one draft, at most
MAX_REST = 64             # steps a drafter rests after repeated misses
INDEX_WINDOW = 8192       # only the latest tokens are searched
PRIOR_RATE = 0.6          # guessed tokens taken, before a drafter has any record
EXPLORE_AFTER = 32        # decode steps of one size before a short draft re-measures rows
EXPLORE_DRAFT = 2         # guesses in such a draft (plain chat: ~1% of its rows)
EXPLORE_RATE = 0.5        # ... made only for a drafter whose guesses are mostly taken
SURE_RATE = 0.85          # a drafter this reliable drafts all it can (see below)
AFTER_MISS_DRAFT = 1      # guesses at most, after a draft that was not wholly taken


class StepCost:
    """Seconds of a decode step as a + b * rows, fitted to the decode-only steps the
    engine runs (exponentially weighted least squares, so it follows the machine)."""

    def __init__(self, decay: float = 0.02) -> None:
        self._decay = decay
        self._n = self._r = self._t = self._rr = self._rt = 0.0
        self._last: tuple[float, float] | None = None
        self._since_fit = 0

    def stale(self) -> bool:
        """Whether the recent steps all had one size, so the line rests on old steps.

        A line fitted on a noisy start (the first step of a new size also rebuilds
        llama.cpp's graph) can say drafts never pay; since it is only refitted from
        steps that had drafts, the engine then drafts a little anyway to re-measure.
        """
        return self._since_fit >= EXPLORE_AFTER

    def observe(self, rows: int, seconds: float) -> None:
        self._since_fit += 1
        k = 1.0 - self._decay
        self._n = k * self._n + 1.0
        self._r = k * self._r + rows
        self._t = k * self._t + seconds
        self._rr = k * self._rr + rows * rows
        self._rt = k * self._rt + rows * seconds

    def line(self) -> tuple[float, float] | None:
        """(a, b), or None until steps of different sizes were seen; while recent steps
        all had one size, the last line fitted stands."""
        if self._n < 4:
            return self._last
        mean_r, mean_t = self._r / self._n, self._t / self._n
        var = self._rr / self._n - mean_r * mean_r
        if var < 0.05:
            return self._last
        b = (self._rt / self._n - mean_r * mean_t) / var
        a = mean_t - b * mean_r
        self._last = (max(a, 0.0), max(b, 1e-6))
        self._since_fit = 0
        return self._last


def expected_tokens(rate: float, draft: int) -> float:
    """Tokens a step emits for one sequence with `draft` guesses, each taken with
    probability `rate` while the ones before it were: 1 + rate + ... + rate**draft."""
    if rate >= 1.0:
        return draft + 1.0
    return (1.0 - rate ** (draft + 1)) / (1.0 - rate)


def best_length(rate: float, limit: int, rows: int, others: int,
                line: tuple[float, float] | None) -> int:
    """The draft length that maximises the step's tokens per second: `rows` rows are
    already in the step, carrying `others` tokens' worth of output besides this
    sequence's. Without a fitted cost line, rows are taken as nearly as dear as steps
    (the compute-bound case) and only a likely guess of one token is tried."""
    if line is None:
        return 1 if rate >= 0.5 and limit >= 1 else 0
    a, b = line
    best, best_value = 0, (others + 1.0) / (a + b * rows)
    for k in range(1, limit + 1):
        value = (others + expected_tokens(rate, k)) / (a + b * (rows + k))
        if value > best_value * 1.001:
            best, best_value = k, value
    return best


def any_length_pays(limit: int, rows: int, others: int,
                    line: tuple[float, float] | None) -> bool:
    """Whether `best_length(1.0, limit, rows, others, line)` is above 0: whether even
    guesses certain to be taken pay for their rows. Asked every step of every lone
    sequence, so it is answered from the two ends of the range instead of a loop: with
    every guess taken, tokens per second is (others + 1 + k) / (a + b * (rows + k)),
    which is monotonic in k, so some k in 1..limit beats none exactly when k = 1 or
    k = limit does."""
    if line is None:
        return limit >= 1
    if limit < 1:
        return False
    a, b = line
    base = (others + 1.0) / (a + b * rows)
    return any((others + 1.0 + k) / (a + b * (rows + k)) > base * 1.001
               for k in (1, limit))


class NgramDrafter:
    """Drafts for one sequence from its own tokens (prompt + output), indexed as it grows."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens = tokens  # the sequence's own list, appended to by the engine
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest use
        self._indexed = max(0, len(tokens) - INDEX_WINDOW)
        self._verified = 0      # drafts verified so far
        self._drafted = 2.0     # weighted record of guesses made and taken
        self._taken = 2.0 * PRIOR_RATE
        self._rest = 0
        self._rest_after_miss = 4
        self._cap = MAX_DRAFT   # AFTER_MISS_DRAFT until a draft is wholly taken

    @property
    def tried(self) -> bool:
        """Whether any draft of this sequence was verified yet (before that, `rate` is
        only the prior)."""
        return self._verified > 0

    @property
    def rate(self) -> float:
        """How often this sequence's guesses are taken (per guessed token)."""
        return self._taken / self._drafted

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` guessed next tokens (none when nothing matches or resting)."""
        if self._rest > 0:
            self._rest -= 1
            return []
        if limit <= 0:
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
        for n in NGRAM_SIZES:
            if end >= n:
                found = latest.get(tuple(tokens[end - n:end]))
                if found is not None:
                    guess = tokens[found:found + min(limit, self._cap)]
                    # Up to a media placeholder (negative id): never a token to decode.
                    cut = next((i for i, t in enumerate(guess) if t < 0), len(guess))
                    return guess[:cut]
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        """Record how much of the last draft was taken (a geometric model: a guess after
        a rejected one was never tested, so only the tested ones count)."""
        self._verified += 1
        self._cap = MAX_DRAFT if accepted >= drafted else AFTER_MISS_DRAFT
        tested = min(drafted, accepted + 1)
        self._drafted = 0.9 * self._drafted + tested
        self._taken = 0.9 * self._taken + accepted
        if accepted == 0:
            self._rest = self._rest_after_miss
            self._rest_after_miss = min(MAX_REST, self._rest_after_miss * 2)
        else:
            self._rest_after_miss = 4


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
