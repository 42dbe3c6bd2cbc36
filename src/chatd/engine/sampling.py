"""Turning one logits row into one token, per sequence.

A draw from the whole distribution (any temperature, with or without bias and
penalties) is one call of the compiled kernel `_draw.c`; truncated ones (top_k,
top_p, min_p) and greedy rows take a few vectorised numpy passes. No Python loop runs
over the vocabulary. Penalties touch only the tokens seen so far. Every sequence owns
a seeded generator and draws exactly one number per token, so a fixed seed gives the
same tokens whatever else is in the batch (llama.cpp's CPU logits are
batch-invariant).
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Iterable, Sequence

import numpy as np

from chatd.engine._draw import VERSION as SAMPLER_VERSION  # noqa: F401 (fingerprint)
from chatd.engine._draw import draw as _kernel_draw
from chatd.engine._draw import logsumexp as _kernel_logsumexp
from chatd.engine.types import SamplingParams

_NEG_INF = np.float32(-np.inf)
_LOG2_E = 1.4426950408889634
_BLOCK = 256
_accumulate = np.add.accumulate
_reduce = np.add.reduce
_peak = np.maximum.reduce  # ndarray.max() goes through a Python wrapper first
_thread = threading.local()


def _exponential() -> tuple[np.ufunc, float]:
    """The float32 exponential numpy runs fastest here, and the factor that puts a
    logit in its units: exp2 (log2 units) where numpy has its AVX-512 (SVML) loops,
    ~2x faster than exp there; else exp (natural units), whose AVX2 loop beats the
    scalar exp2 (49,152 floats on an AVX2 EPYC: 83 against 125 us). Chosen from the
    CPU, not timed, so a seed gives the same tokens on every start of one machine.
    """
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2 or a changed layout: exp is never the slow one
        features = {}
    if features.get("AVX512_SKX"):
        return np.exp2, _LOG2_E
    return np.exp, 1.0


_EXP, _UNIT = _exponential()


def _scratch_row(n_vocab: int) -> np.ndarray:
    """The float32 row the sampling passes write into, one per thread.

    Fresh row-sized temporaries (196 KB each for SmolLM2) made sampling 4-5x
    slower through malloc's page faults, and one row per sequence fragments the
    heap as requests come and go. Sampling runs on the engine thread, one
    sequence at a time, and nothing keeps the scratch row past the `sample` call.
    """
    row = getattr(_thread, "row", None)
    if row is None or row.shape[0] != n_vocab:
        row = _thread.row = np.empty(n_vocab, dtype=np.float32)
    return row


def log_softmax_at(row: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log p(ids) under softmax(row), in float64 for stable small values: the compiled
    kernel's log-sum-exp (~50 us against ~400 us for a float64 exp of the row), numpy's
    for rows it refuses (NaN or infinite entries)."""
    lse = _kernel_logsumexp(row) if row.flags.c_contiguous else float("nan")
    if lse != lse:  # NaN
        peak = float(row.max())
        lse = peak + float(np.log(np.exp(row - peak, dtype=np.float64).sum()))
    return row[ids].astype(np.float64) - lse


def top_ids(row: np.ndarray, k: int) -> np.ndarray:
    """The k largest entries of `row`, best first (argpartition, then sort k)."""
    k = min(k, row.shape[0])
    part = np.argpartition(row, -k)[-k:]
    return part[np.argsort(row[part])[::-1]]


class Sampler:
    """Sampling state of one sequence: its generator, bias and token counts."""

    def __init__(self, params: SamplingParams, n_vocab: int, prompt_tokens: Iterable[int],
                 *, seed: int | None = None, banned: Iterable[int] = ()) -> None:
        self.params = params
        self.n_vocab = n_vocab
        self._seed = seed if seed is not None else secrets.randbits(64)
        self._rng: np.random.Generator | None = None
        self.greedy = params.temperature <= 0.0

        bias = {t: b for t, b in params.logit_bias.items() if 0 <= t < n_vocab}
        banned_ids = {t for t, b in bias.items() if b <= -100} | set(banned)
        forced = [t for t, b in bias.items() if b >= 100 and t not in banned_ids]
        soft = {t: b for t, b in bias.items() if -100 < b < 100 and t not in banned_ids}
        self._bias_ids = np.fromiter(soft.keys(), dtype=np.int64, count=len(soft))
        self._bias_vals = np.fromiter(soft.values(), dtype=np.float32, count=len(soft))
        self._banned = np.fromiter(banned_ids, dtype=np.int64, count=len(banned_ids))
        # +100 means "only these tokens" (OpenAI: "exclusive selection").
        self._only: np.ndarray | None = None
        if forced:
            self._only = np.ones(n_vocab, dtype=bool)
            self._only[forced] = False  # True = masked out

        self._counts: dict[int, int] = {}
        self._penalty_cache: tuple[np.ndarray | None, np.ndarray | None,
                                   np.ndarray | None] | None = None
        # (negative ids stand for image/audio rows: no token to penalise)
        self._seen: set[int] = ({t for t in prompt_tokens if t >= 0}
                                if params.repetition_penalty != 1.0 else set())
        self._transforms = bool(
            len(self._bias_ids) or len(self._banned) or forced
            or params.presence_penalty or params.frequency_penalty
            or params.repetition_penalty != 1.0
        )
        # Rows drawn from the whole distribution (by the kernel), or argmax, are sampled
        # by `sample_plain` for the whole step when no grammar masks them.
        self.whole = (not 0 < params.top_k < n_vocab and params.top_p >= 1.0
                      and params.min_p <= 0.0)
        self.plain = self.greedy or self.whole
        # Without "only these tokens", `transform` writes a few entries of the row: it
        # can edit the raw logits row in place and restore it (see `_edit`), instead of
        # copying 49k floats to a scratch row for each token.
        self._sparse = self._only is None
        self._fixed_ids = np.concatenate([self._bias_ids, self._banned])

    @property
    def rng(self) -> np.random.Generator:
        """The sequence's generator, made on its first draw: greedy requests never draw,
        and seeding a PCG64 costs ~35 us of the request's time on the event loop."""
        if self._rng is None:
            self._rng = np.random.Generator(np.random.PCG64(self._seed))
        return self._rng

    def accept(self, token: int) -> None:
        """Record a generated token for the penalties."""
        self._counts[token] = self._counts.get(token, 0) + 1
        if self.params.repetition_penalty != 1.0:
            self._seen.add(token)
        self._penalty_cache = None

    def _penalty_arrays(self) -> tuple[np.ndarray | None, np.ndarray | None,
                                       np.ndarray | None]:
        """(ids, counts) for presence/frequency penalties and the ids for the repetition
        penalty, or None where that penalty is off; built once per token, since both
        `_touched` and `transform` read them."""
        if self._penalty_cache is None:
            p = self.params
            ids = cnt = seen = None
            if self._counts and (p.presence_penalty or p.frequency_penalty):
                ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
                cnt = np.fromiter(self._counts.values(), dtype=np.float32,
                                  count=len(self._counts))
            if self._seen:
                seen = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))
            self._penalty_cache = (ids, cnt, seen)
        return self._penalty_cache

    def _touched(self) -> np.ndarray:
        """The ids `transform` writes (repeats allowed) when the row has no `_only`."""
        ids, _, seen = self._penalty_arrays()
        parts = [a for a in (self._fixed_ids, ids, seen) if a is not None]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _edit(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the (sparse) transforms to `row` in place, in raw logit units; returns
        what `_restore` needs to put the row back as llama.cpp wrote it (logprobs, a
        sibling's first token and every later reader see the raw row)."""
        ids = self._touched()
        saved = row[ids]
        self.transform(row)
        return ids, saved

    @staticmethod
    def _restore(row: np.ndarray, edit: tuple[np.ndarray, np.ndarray]) -> None:
        ids, saved = edit
        row[ids] = saved  # (a repeated id gets its one saved value each time)

    def adjusted(self, row: np.ndarray, mask: np.ndarray | None = None,
                 scale: float = 1.0) -> np.ndarray:
        """Logits after bias, penalties and an optional disallow-mask (True = banned),
        multiplied by `scale`. Truncated sampling passes `_UNIT`/temperature, so the row is
        scaled in the same pass that copies it; every transform commutes with a positive
        scale. (The whole-distribution kernel takes the temperature itself.)

        Returns `row` itself when nothing applies, else this thread's scratch row
        (overwritten by the next call of any sampler on the thread).
        """
        if not self._transforms and mask is None and scale == 1.0:
            return row
        x = _scratch_row(self.n_vocab)
        if scale == 1.0:
            np.copyto(x, row)
        else:
            np.multiply(row, np.float32(scale), out=x)
        self.transform(x, scale)
        if mask is not None:
            x[mask] = _NEG_INF
        return x

    def transform(self, x: np.ndarray, scale: float = 1.0) -> None:
        """Apply bias, penalties and bans in place to a row already multiplied by
        `scale`."""
        if not self._transforms:
            return
        p = self.params
        k = np.float32(scale)
        if len(self._bias_ids):
            x[self._bias_ids] += self._bias_vals * k
        ids, cnt, seen = self._penalty_arrays()
        if ids is not None and cnt is not None:
            x[ids] -= (cnt * np.float32(p.frequency_penalty) + np.float32(p.presence_penalty)) * k
        if seen is not None:
            v = x[seen]
            rp = np.float32(p.repetition_penalty)
            with np.errstate(over="ignore"):  # overflow to inf is handled in sample()
                x[seen] = np.where(v > 0, v / rp, v * rp)
        if len(self._banned):
            x[self._banned] = _NEG_INF
        if self._only is not None:
            x[self._only] = _NEG_INF

    def sample(self, row: np.ndarray, mask: np.ndarray | None = None) -> int:
        """Pick the next token from a raw logits row.

        Runs right after a decode has streamed the weights through the caches, so the
        passes over the row are the cost: the whole distribution is drawn by the
        compiled kernel (`_draw.c`: a max pass and one fused exp-and-sum pass), reading
        the raw row itself when nothing transforms it. Truncated distributions (top_k,
        top_p, min_p) take numpy passes in a scratch row.
        """
        if self.greedy:
            if mask is None and self._transforms and self._sparse:
                edit = self._edit(row)
                try:
                    return _best_finite(row)
                finally:
                    self._restore(row, edit)
            x = self.adjusted(row, mask)
            if mask is not None and x.max() == _NEG_INF:
                x = np.where(mask, _NEG_INF, row)  # see below: the grammar wins
            return _best_finite(x)
        if self.whole:
            return self._draw_whole(row, mask)
        p = self.params
        scale = _UNIT / p.temperature
        x = self.adjusted(row, mask, scale)
        peak = _peak(x)
        if mask is not None and peak == _NEG_INF:
            # logit_bias banned every token the grammar allows: the grammar wins.
            x = np.where(mask, _NEG_INF, row * np.float32(scale))
            peak = _peak(x)
        u = self.rng.random()  # exactly one draw per token keeps seeded runs aligned
        if not np.isfinite(peak):
            # Extreme penalties or biases overflowed the row: fall back to its best
            # finite token instead of sampling from NaNs.
            return _best_finite(x)
        # Weights exp(x - peak) in the units of `_EXP` (see _exponential). The sums
        # that decide the draw are accumulated in float64; only the nucleus and min_p
        # need the weights normalised.
        if 0 < p.top_k < self.n_vocab:
            cand: np.ndarray | None = top_ids(x, p.top_k)
            probs = _EXP(x[cand] - peak)
        else:
            cand = None
            probs = np.subtract(x, peak, out=_scratch_row(self.n_vocab) if x is row else x)
            _EXP(probs, out=probs)
        if p.top_p < 1.0:
            probs /= probs.sum(dtype=np.float64)
            cand, probs = _nucleus(cand, probs, p.top_p)
        if p.min_p > 0.0:
            keep = probs >= p.min_p * probs.max()
            cand = (cand if cand is not None else np.arange(probs.shape[0]))[keep]
            probs = probs[keep]
        i = _draw(probs, u)
        return int(cand[i]) if cand is not None else i

    def _draw_whole(self, row: np.ndarray, mask: np.ndarray | None) -> int:
        """A token from softmax((logits + bias - penalties) / T) over the whole
        vocabulary: the compiled kernel reads the raw row and applies the temperature
        itself. Sparse transforms are written into the row and undone afterwards; a mask
        or "only these tokens" takes a scratch copy instead."""
        scale = 1.0 / self.params.temperature
        u = self.rng.random()  # exactly one draw per token keeps seeded runs aligned
        if mask is None and (not self._transforms or self._sparse):
            edit = self._edit(row) if self._transforms else None
            try:
                i = _kernel_draw(row, scale, u)
                # -1: extreme penalties or biases overflowed the row; its best finite
                # token instead of sampling from NaNs.
                return i if i >= 0 else _best_finite(row)
            finally:
                if edit is not None:
                    self._restore(row, edit)
        x = self.adjusted(row, mask)
        if mask is not None and _peak(x) == _NEG_INF:
            # logit_bias banned every token the grammar allows: the grammar wins.
            x = np.where(mask, _NEG_INF, row)
        i = _kernel_draw(x, scale, u)
        return i if i >= 0 else _best_finite(x)


def sample_plain(samplers: Sequence[Sampler], rows: np.ndarray) -> list[int]:
    """One token for each plain sampler (`Sampler.plain`, no grammar mask), `rows[i]`
    being the logits row of `samplers[i]`: the tokens `Sampler.sample` picks row by row.

    The greedy rows are one argmax over the step's [B, vocab] view (sparse transforms
    written into their rows first, and undone after); the drawn rows go to the compiled
    kernel one by one, which reads each raw row in place. Each sampler still draws one
    number from its own generator per token.
    """
    out = [0] * len(samplers)
    greedy: list[int] = []
    for i, s in enumerate(samplers):
        if not s.greedy:
            out[i] = s._draw_whole(rows[i], None)
        elif s._transforms and not s._sparse:
            out[i] = s.sample(rows[i])
        else:
            greedy.append(i)
    if not greedy:
        return out
    edits = []
    try:
        for i in greedy:
            if samplers[i]._transforms:
                edits.append((i, samplers[i]._edit(rows[i])))
        sub = rows if len(greedy) == len(samplers) else rows[greedy]
        best = np.argmax(sub, axis=1)
        finite = np.isfinite(sub[np.arange(len(greedy)), best])
        for j, i in enumerate(greedy):
            out[i] = int(best[j]) if finite[j] else _best_finite(sub[j])
    finally:
        for i, edit in edits:
            Sampler._restore(rows[i], edit)
    return out


def _draw_blocks(blocks: np.ndarray, sums: np.ndarray, u: float) -> int:
    """`_draw`'s second level, given the [n_blocks, _BLOCK] weights and their running
    block sums."""
    target = u * sums[-1]
    b = _first_above(sums, target, None)
    inner = _accumulate(blocks[b], dtype=np.float64)
    j = _first_above(inner, target - (sums[b - 1] if b else 0.0), blocks[b])
    return min(b * _BLOCK + j, blocks.size - 1)


def _draw(weights: np.ndarray, u: float) -> int:
    """Inverse CDF at u of unnormalised weights, without a cumsum over the vocabulary.

    A float64 cumsum of 49k values is sequential (~0.7 ms here); block sums are
    vectorised, so the running sums cover ~200 block totals and one 256-wide block.
    Sampling runs with every cache cold from the decode, where each distinct numpy
    entry point costs ~20 us the first time: hence ufunc methods called directly,
    and the same two (reduce, accumulate) for both levels.
    A zero weight is never drawn (the first index whose running sum exceeds the
    target always adds a positive weight).
    """
    n = weights.shape[0]
    if n <= 4 * _BLOCK:
        cdf = _accumulate(weights, dtype=np.float64)
        return _first_above(cdf, u * cdf[-1], weights)
    n_blocks = -(-n // _BLOCK)
    padded = weights if n == n_blocks * _BLOCK else np.pad(weights, (0, n_blocks * _BLOCK - n))
    blocks = padded.reshape(n_blocks, _BLOCK)
    sums = _accumulate(_reduce(blocks, axis=1), dtype=np.float64)
    return min(_draw_blocks(blocks, sums, u), n - 1)


def _first_above(cdf: np.ndarray, target: float, weights: np.ndarray | None) -> int:
    i = int(cdf.searchsorted(target, side="right"))
    if i < cdf.shape[0]:
        return i
    # Rounding put the target at or past the end: take the last positive weight.
    if weights is None:
        return int(np.flatnonzero(np.diff(cdf, prepend=0.0) > 0)[-1])
    return int(np.flatnonzero(weights > 0)[-1])


def _best_finite(x: np.ndarray) -> int:
    """argmax that ignores NaN and +inf (both only come from overflowed penalties).

    Every greedy token goes through here right after a decode, when each numpy entry
    point is a cache miss: the array's own argmax and a scalar test, not np.argmax's
    dispatch and a ufunc."""
    best = int(x.argmax())
    if math.isfinite(x[best]):
        return best
    finite = np.where(np.isfinite(x), x, _NEG_INF)
    return int(np.argmax(finite))


def _nucleus(cand: np.ndarray | None, probs: np.ndarray, top_p: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Smallest best-first set whose mass reaches top_p, found without a full sort.

    Grows k by powers of 4 from 64: typical distributions are covered by the first
    argpartition, so the cost is one partition instead of sorting 49k floats.
    """
    n = probs.shape[0]
    k = 64
    while True:
        k = min(k, n)
        top = top_ids(probs, k)
        mass = np.cumsum(probs[top])
        if mass[-1] >= top_p or k == n:
            cut = int(np.searchsorted(mass, top_p, side="left")) + 1
            top = top[: min(cut, k)]
            chosen = cand[top] if cand is not None else top
            return chosen, probs[top]
        k *= 4
