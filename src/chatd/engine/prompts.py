"""Prompts through dense weights: a second context that only prefills.

Stock llama.cpp's CPU backend has no matrix-matrix kernel for Q4_1 or Q5_1 weights
(neither llamafile's tinyBLAS nor a repacked layout takes them), so a prompt runs through
them one dot product per row, no faster than decoding. Its F16 and BF16 kernels are real
GEMMs: on the 2-core AVX-512 test machine the bundled model's weights written out as
BF16 processed a 512-token prompt 3.5x faster (`llama-bench` pp512: 1,576 against 454
tok/s), while one decoding row was ~15% slower (more bytes per token). That is the
split vLLM makes for AWQ (dequantize and run a GEMM from 256 tokens up): prompts go
through a dense copy of the same weights, a lone sequence decodes on the file's own
(steps of two or more sequences go through the copy too: engine/weights.py; prompts
still come here then, where their rows attend only to their own cells). chatd's patch
to llama.cpp (patches/) gives Q4_1 the interleaved Q4_0 kernels; where it is built in,
the file beats the copy at every decode batch size and comes within ~15% of it on a
512-token prompt (1,401 against 1,609 tok/s here), and `auto` leaves this off
(docs/performance.md).

How a prompt goes: the engine hands a sequence's prompt, all but its last token, to
this runner. Its cached prefix, if any, is copied in (KV bytes, ~23 KB a token for
SmolLM2), the rest is decoded in chunks here, and the new cells are copied back
into the sequence's slot in the served context (`Scheduler.adopt`). The last prompt
token then runs on the served weights like any prefill chunk, so the logits of the
first sampled token always come from the same weights whether the prompt was
computed here or found in the prefix cache: the copy adds no difference between a
request and its repeat (the f16 cache's own rounding caveats stay, README
`--kv-cache`). Only the keys and values of prompt tokens come from the dense copy; measured
against an exact F32 evaluation of the same Q4_1 weights, the first token's
distribution was closer (KL 1.4-7.7x smaller over 8 prompts of 300-2,000 tokens,
`benchmarks/dense_prefill.py`) than with the prompt run through the Q4_1
kernels, whose activations are rounded to 8 bits.

`--deterministic` turns this off: there a chat's next turn must give the same text
whether its earlier answer's cells were decoded or are prefilled from scratch.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import llama_cpp as lc

from chatd.engine.llama import LlamaContext, LlamaSettings
from chatd.engine.sequence import Sequence

log = logging.getLogger("chatd.engine")

# File types with no matrix-matrix CPU kernel in llama.cpp (see the module docstring).
SLOW_PROMPT_FILE_TYPES = frozenset({lc.LLAMA_FTYPE_MOSTLY_Q4_1, lc.LLAMA_FTYPE_MOSTLY_Q5_1})
MIN_TOKENS = 16      # fewer new prompt tokens ride along in a decode step instead
PREFIX_RATIO = 32    # ... and so do those that are fewer than 1/32 of the prefix copied in
MEMORY_SHARE = 0.25  # auto: the dense copy may take at most this share of free memory


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def dense_file_type() -> int:
    """BF16 where the CPU multiplies it natively (llama-bench pp512 here: 1,576 tok/s
    against F16's 1,232), else F16, which every x86-64 CPU with F16C converts fast."""
    flags = cpu_flags()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return lc.LLAMA_FTYPE_MOSTLY_BF16
    return lc.LLAMA_FTYPE_MOSTLY_F16


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def plain_cache(model: LlamaContext) -> bool:
    """Whether the model's memory is one plain KV cache (no sliding-window half, no
    recurrent state): the only layout whose saved cells `reframe` knows."""
    handle = model.handle
    return (lc.llama_model_n_swa(handle) == 0 and not lc.llama_model_is_recurrent(handle)
            and not lc.llama_model_is_hybrid(handle))


def reframe(data: ctypes.Array[ctypes.c_uint8], streams: int) -> ctypes.Array[ctypes.c_uint8]:
    """One sequence's saved cells, re-framed for a context with `streams` KV streams.

    llama.cpp writes a magic number and the sequence id, then the cache's number of
    streams, then per stream its number of cells and, when non-zero, their positions
    and data. A sequence lives in one stream, and a restore puts whatever it reads
    into the target sequence's own stream, so only the number of streams and the
    empty streams' zero counts change.
    """
    raw = memoryview(data).cast("B")
    n = int.from_bytes(raw[8:12], "little")
    k = 0  # the stream that holds the cells
    while k < n and raw[12 + 4 * k:16 + 4 * k] == bytes(4):
        k += 1
    after = 4 * (n - k - 1) if k < n else 0
    if raw[len(raw) - after:] != bytes(after):
        raise ValueError("the saved cells span more than one stream")
    body = raw[12 + 4 * k:len(raw) - after] if k < n else raw[:0]
    zeros = streams - (1 if len(body) else 0)
    out = (ctypes.c_uint8 * (12 + len(body) + 4 * zeros))()  # zero-filled
    view = memoryview(out).cast("B")
    view[:8] = raw[:8]  # magic and sequence id
    view[8:12] = streams.to_bytes(4, "little")
    view[12:12 + len(body)] = body  # the one copy of the cells
    return out


def dense_bytes(model: LlamaContext, cells: int) -> int:
    """What the dense path adds to memory: the copy (2 bytes a parameter) and its
    context's f16 KV cache of `cells` cells."""
    handle = model.handle
    heads = max(1, lc.llama_model_n_head(handle))
    kv_width = lc.llama_model_n_embd(handle) // heads * lc.llama_model_n_head_kv(handle)
    return 2 * model.n_params + cells * lc.llama_model_n_layer(handle) * 2 * kv_width * 2


def auto_reason(file_type: int | None, needs: int, *, gpu: bool,
                deterministic: bool, interleaved: bool = False) -> str | None:
    """Why `--dense-prefill auto` (or `--dense-decode auto`) stays off, or None when it
    goes on; `needs` is `dense_bytes` for the cells that path adds. `interleaved`: llama.cpp
    holds the weights interleaved for its batched kernels, which for a Q4_1 file takes
    chatd's patch to it (patches/); then the file is faster than the copy at every
    decode batch size and within ~15% of it on prompts (docs/performance.md)."""
    if deterministic:
        return "--deterministic"
    if gpu:
        return "a GPU build runs prompts on the GPU"
    if file_type not in SLOW_PROMPT_FILE_TYPES or interleaved:
        return "llama.cpp has a batched kernel for this file's weights"
    free = available_memory()
    if free is not None and needs > MEMORY_SHARE * free:
        return (f"the dense copy and its cache ({needs >> 20} MiB) would take over a "
                "quarter of free memory")
    return None


class PromptRunner:
    """A one-sequence context over the dense copy, prefilling one prompt at a time."""

    def __init__(self, path: Path, served: LlamaSettings, cells: int, kind: str) -> None:
        settings = replace(served, kv_cells=cells, n_seq_max=1, kv_unified=True)
        self.context = LlamaContext(path, settings)
        self.streams = 1 if served.kv_unified else served.n_seq_max  # the served context's
        self.batch_tokens = settings.n_batch
        self.seq: Sequence | None = None
        self.start = 0  # the first position computed here (the prefix came copied in)
        self.done = 0   # positions in this context so far
        self.end = 0    # positions to reach: the prompt but its last token
        self.tokens = 0
        self.seconds = 0.0
        self.kind = kind      # the copy's type (BF16, F16), for /health
        self.broken = False   # the served cache refused cells once: prompts stay there

    def begin(self, seq: Sequence, prefix: Any) -> None:
        """Take `seq`'s prompt from its cached prefix (`prefix`, saved KV cells) on."""
        ctx = self.context
        ctx.clear()
        if prefix is not None:
            ctx.seq_restore(reframe(prefix, 1) if self.streams > 1 else prefix, 0)
        self.seq = seq
        self.start = self.done = seq.n_cached
        self.end = len(seq.tokens) - 1

    def advance(self, budget: int) -> bool:
        """Decode up to `budget` more prompt tokens; True once all of them are in."""
        seq = self.seq
        assert seq is not None
        count = min(budget, self.batch_tokens, self.end - self.done)
        lo = self.done
        self.context.decode(seq.tokens[lo:lo + count], list(range(lo, lo + count)),
                            [0] * count, [False] * count)
        self.done += count
        self.tokens += count
        return self.done >= self.end

    def cells(self, *, whole: bool) -> Any:
        """The computed cells (from `start` on, or the whole sequence) as saved bytes."""
        if not whole and self.start:
            self.context.seq_remove(0, 0, self.start)
        data = self.context.seq_save(0)
        return reframe(data, self.streams) if self.streams > 1 else data

    def drop(self) -> None:
        self.seq = None
        self.context.clear()

    def close(self) -> None:
        self.context.close()
