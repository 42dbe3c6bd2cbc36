"""A lone sequence's steps without Python between decodes (the loop is `_solo.c`).

While one sequence decodes alone, every step is the same: decode its last token, pick
the next. The engine thread hands such a sequence to `SoloLoop.run`, which runs those
steps in C with the GIL released, and the request's asyncio loop, woken through
`fileno()`, takes each token (`take`) and turns it into its event while the next decode
runs, instead of the engine planning, sampling and committing in Python between
decodes. It takes only what it can pick exactly as `Sampler.sample` would (greedy or
a whole-distribution draw, with fixed biases and bans), so the output is the same
token for token, seeded or not.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp as lc
import numpy as np

from chatd.engine.llama import LlamaModel
from chatd.engine.sequence import Sequence, Status

try:  # built on Linux only (setup.py)
    from chatd.engine._solo import Runner, batch_size
except ImportError:  # pragma: no cover - other platforms
    Runner = None


@dataclass(frozen=True)
class Picked:
    """Tokens the loop picked since the last look, with when each decode ended, how
    long it took and how long its pick took."""

    tokens: list[int]
    at: list[float]
    decode_seconds: list[float]
    pick_seconds: list[float]
    done: bool   # the run is over: its sequence ended, or it was interrupted
    error: int   # llama_decode's code when a decode failed, else 0


class SoloLoop:
    """The native loop over one model's context, and what a run needs of a sequence."""

    @staticmethod
    def available() -> bool:
        """Whether this platform has the compiled loop."""
        return Runner is not None

    def __init__(self, model: LlamaModel) -> None:
        if batch_size() != ctypes.sizeof(lc.llama_batch):
            raise RuntimeError("llama_batch's layout is not the one _solo.c was built for")
        decode, logits, ctx = model.native()
        self._runner = Runner(decode, logits, ctx, model.n_vocab)
        self._eog = np.array(sorted(model.eog_ids), dtype=np.int32)
        self._none = np.empty(0, dtype=np.int32)

    @staticmethod
    def takes(seq: Sequence) -> bool:
        """Whether the loop can step this sequence exactly as the engine would: decoding
        its one pending token, no grammar, no logprobs, a plain pick whose logit edits
        stay fixed."""
        params = seq.group.request.params
        return (seq.status is Status.DECODE and seq.pending == 1 and seq.constraint is None
                and not params.logprobs and seq.sampler.fixed_edits() is not None)

    def clear(self) -> None:
        """Forget earlier interrupts; call before checking that nothing else waits."""
        self._runner.clear()

    def interrupt(self) -> None:
        """End the run after the decode in flight (any thread)."""
        self._runner.interrupt()

    def interrupted(self) -> bool:
        return bool(self._runner.interrupted())

    def run(self, seq: Sequence, budget: int, *, stop_at_eog: bool) -> None:
        """Step `seq` for at most `budget` tokens (ending after an end-of-generation token
        when `stop_at_eog`, or at an interrupt); returns when the run has ended. Called
        on the thread that runs every other decode (see _solo.c on OpenMP)."""
        sampler = seq.sampler
        edits = sampler.fixed_edits()
        assert edits is not None
        ids, values = edits
        scale = 0.0 if sampler.greedy else 1.0 / sampler.params.temperature
        bit_generator = None if sampler.greedy else sampler.rng.bit_generator
        self._runner.run(seq.tokens[seq.n_cached], seq.n_cached, seq.slot, budget,
                         sampler.greedy, scale, bit_generator,
                         self._eog if stop_at_eog else self._none, ids, values)

    def fileno(self) -> int:
        """Readable when a run has picked tokens not yet taken, or has ended."""
        return int(self._runner.fileno())

    def take(self, *, block: bool = False) -> Picked | None:
        """The tokens the run picked since the last take. Without `block`, None when
        there are none; with it, waits (without the GIL) for one, or for the next run,
        and is None only once the loop is closed."""
        got = self._runner.take(block)
        if got is None:
            return None
        tokens, at, decode, pick, done, error = got
        return Picked(tokens, at, decode, pick, done, error)

    def close(self) -> None:
        """End any run; a blocking `take` then returns None."""
        self._runner.close()
