"""Which weights decode: the file's for a lone sequence, a dense copy for a batch.

llama.cpp's CPU backend has no matrix-matrix kernel for Q4_1 or Q5_1 weights
(engine/prompts.py), so a step of 16 sequences runs as 16 dot products per weight
row, barely faster per token than one sequence alone. Through a BF16 copy of the
same weights it is a real GEMM. `llama-batched-bench -t 2 -fa on` on the 2-core
AVX-512 test machine, bundled model, 64-token prompts, 128 generated tokens each,
two runs (tokens/s of generation):

    sequences     1          2          4          16
    Q4_1       161 / 171  146 / 143  198 / 194  333 / 315
    BF16       142 / 142  191 / 207  270 / 313  565 / 708

So the copy decodes whenever two or more sequences run, and a lone sequence goes
back to the file's weights. A second llama.cpp context over the copy, with the same
settings as the served one, stands by; switching moves the KV cache across, byte for
byte (`Scheduler.migrate`, a repack between contexts: ~12 ms per 1,000 cells here),
and swaps the two contexts under the served model (`LlamaContext.swap_context`), so
the scheduler and the sampler see one model throughout.

What it changes in outputs: the copy's values are the file's rounded to BF16 (8
significant bits), and its activations are not rounded to 8 bits as the Q4_1
kernels round them. Against an exact (F32) evaluation of the file's weights, teacher
forced over 743 positions (`benchmarks/dense_decode.py`): KL 0.00008 nats a position
through the copy, 0.0019 through the file's own kernels. Greedy text from a request
that ran beside others can therefore differ from the same request run alone, as it
already could through the f16 cache's rounding (README `--kv-cache`), only more
often. `--deterministic` keeps every step on the file's weights.
"""

from __future__ import annotations

import math

from chatd.engine.llama import LlamaContext

MIN_SEQUENCES = 2     # from here on the copy decodes faster (the table above)
LONE_SECONDS = 0.25   # a lone sequence returns to the file's weights after this long:
                      # a client's next request after a short gap keeps the batch


class WeightSwitch:
    """The dense copy's standby context and when the served model should hold it."""

    def __init__(self, context: LlamaContext, kind: str) -> None:
        self.context = context  # the copy's context, or the file's while they are swapped
        self.kind = kind        # the copy's type (BF16, F16), for /health
        self.broken = False     # moving the cache failed once: the file's weights stay
        self.switches = 0
        self.seconds = 0.0      # spent moving the cache between the contexts
        self.steps = 0          # decode steps on the copy
        self._batch_at = -math.inf

    @property
    def dense(self) -> bool:
        """Whether the served model holds the copy's context now."""
        return self.context.swapped

    def wanted(self, sequences: int, long_prefill: bool, now: float) -> bool:
        """Whether the copy should decode the next step, with `sequences` admitted or
        queued; a prompt still being computed keeps it (its rows are a GEMM there)."""
        if self.broken:
            return False
        if sequences >= MIN_SEQUENCES:
            self._batch_at = now
            return True
        return self.dense and (long_prefill or now - self._batch_at < LONE_SECONDS)

    def waits(self) -> float | None:
        """How long an idle engine may sleep before it should move back."""
        return LONE_SECONDS if self.dense else None

    def close(self) -> None:
        self.context.close()
