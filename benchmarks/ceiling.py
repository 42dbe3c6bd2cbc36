"""The engine ceiling: how fast llama.cpp itself runs the model, with no server around it.

The server is judged against these numbers, so they are measured the way a perfect
engine would drive llama.cpp: one `llama_decode` per step holding one token of each
of B sequences (continuous batching with nothing else to do), greedy argmax with
numpy over the logits rows, no HTTP, no tokenizer detokenizing, no sampling maths.
Whatever the server reaches below these figures is its own overhead.

Run it on its own with `python -m benchmarks.ceiling`; `benchmarks.run` calls
`measure_ceiling()` and uses the returned dict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np

from chatd.engine.llama import KV_CACHE_TYPE, init_backend, model_params
from chatd.models.registry import bundled_model_path

DEFAULT_BATCH_SIZES = (1, 4, 8, 16)
# Filler text for prompts; only its token count matters for speed.
_PROMPT_TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the "
    "steps, listening to the sea, and writing down the colour of the sky in a small book. "
)


def special_token_ids(model_path: str | Path | None = None) -> list[int]:
    """End-of-generation and control token ids of a model (vocabulary only, no weights).

    Banning these with logit_bias makes every benchmark request run to max_tokens.
    For SmolLM2 that is 0..16: llama.cpp treats 0 `<|endoftext|>`, 2 `<|im_end|>` and
    also 4 `<reponame>` as end-of-generation, and 1 `<|im_start|>` would open a turn.
    """
    init_backend()
    path = Path(model_path) if model_path else bundled_model_path()
    mparams = lc.llama_model_default_params()
    mparams.vocab_only = True
    model = lc.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not read the vocabulary of {path}")
    try:
        vocab = lc.llama_model_get_vocab(model)
        return [
            t
            for t in range(lc.llama_vocab_n_tokens(vocab))
            if lc.llama_vocab_is_eog(vocab, t) or lc.llama_vocab_is_control(vocab, t)
        ]
    finally:
        lc.llama_model_free(model)


def physical_cores() -> int:
    """Cores usable by this process, counting hyperthread siblings once.

    llama.cpp's CPU kernels are memory/ALU bound; a second thread per core only
    adds contention, so the thread count is the physical core count.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return max(1, os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            pkg = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((pkg, core))
    return max(1, len(cores))


@dataclass
class DecodeFigure:
    """Summed decode throughput of B sequences stepping together."""

    batch: int
    steps: int
    tokens_per_s: float  # B*steps/elapsed, median over repetitions (summed over B)
    per_seq_tokens_per_s: float
    step_ms: float  # median wall time of one llama_decode step (+ argmax)
    # B / median step time: insensitive to the stalls a shared machine causes (another
    # process preempting one of llama.cpp's spinning threads stalls a whole step).
    steady_tokens_per_s: float
    reps_tokens_per_s: list[float] = field(default_factory=list)


@dataclass
class CeilingResult:
    """Everything `measure_ceiling` found, JSON-ready via `to_dict`."""

    model: str
    n_threads: int
    n_ctx: int
    n_batch: int
    kv_unified: bool
    prompt_tokens: int
    decode: list[DecodeFigure]
    prompt_processing_tokens: int
    prompt_processing_tokens_per_s: float
    prompt_processing_reps: list[float]
    seconds: float
    # Step ms of ONE sequence decoding r rows at once (speculation's verify step), by r.
    draft_rows_ms: dict[int, float] = field(default_factory=dict)

    def draft_speedup_bound(self) -> tuple[int, float] | None:
        """(rows, x): the most tokens/s speculation could give over plain decoding if
        every guess were taken: r rows emit r tokens in draft_rows_ms[r]."""
        one = self.draft_rows_ms.get(1)
        if not one or len(self.draft_rows_ms) < 2:
            return None
        rows, ms = max(self.draft_rows_ms.items(), key=lambda kv: kv[0] / kv[1])
        return rows, round(rows * one / ms, 2)

    def decode_at(self, batch: int) -> float | None:
        """Summed decode tok/s measured for this batch size, if it was measured."""
        for fig in self.decode:
            if fig.batch == batch:
                return fig.tokens_per_s
        return None

    @property
    def best_decode(self) -> DecodeFigure:
        return max(self.decode, key=lambda f: f.tokens_per_s)

    def higher_of(self, other: CeilingResult) -> CeilingResult:
        """Per batch size, the faster of two measurements of the same ceiling.

        A shared machine only ever makes a measurement slower, so ratios taken against
        the higher one cannot be flattered by a slow moment during the ceiling run.
        """
        theirs = {f.batch: f for f in other.decode}
        decode = [max(f, theirs.get(f.batch, f), key=lambda g: g.tokens_per_s)
                  for f in self.decode]
        pp = max(self.prompt_processing_tokens_per_s, other.prompt_processing_tokens_per_s)
        return replace(self, decode=decode, prompt_processing_tokens_per_s=pp,
                       seconds=self.seconds + other.seconds)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["best_decode_batch"] = self.best_decode.batch
        data["best_decode_tokens_per_s"] = self.best_decode.tokens_per_s
        return data


class _Bench:
    """One model + one context, owned for the duration of the measurement."""

    def __init__(self, path: Path, n_ctx: int, n_batch: int, n_seq_max: int, threads: int,
                 kv_unified: bool = True, kv_type: int = KV_CACHE_TYPE):
        init_backend()
        self.model = lc.llama_model_load_from_file(str(path).encode(), model_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        # Unified (the server's choice): one cell pool, so prefixes can be shared, but
        # each sequence's attention spans every occupied cell. Split: one stream each.
        cparams.kv_unified = kv_unified
        # The server's cache types (see chatd.engine.llama.KV_CACHE_TYPE): the ceiling
        # must run the same kernels the server runs, or the ratio measures the cache.
        cparams.type_k = cparams.type_v = kv_type
        cparams.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context")
        self.n_ctx = lc.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(n_batch, 0, 1)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode()
        cap = len(data) + 16
        arr = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, False)
        if n < 0:
            raise RuntimeError("tokenize buffer too small")
        return list(arr[:n])

    def prompt(self, n_tokens: int) -> list[int]:
        """Exactly `n_tokens` tokens of ordinary text."""
        tokens = self.tokenize(_PROMPT_TEXT * (1 + n_tokens // 20))
        while len(tokens) < n_tokens:
            tokens += self.tokenize(_PROMPT_TEXT, add_special=False)
        return tokens[:n_tokens]

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode over (token, pos, seq_id, want_logits) items."""
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def prefill(self, prompts: dict[int, list[int]]) -> None:
        """Prefill several sequences, packing their tokens into n_batch-sized decodes."""
        items = [
            (tok, pos, seq, pos == len(toks) - 1)
            for seq, toks in prompts.items()
            for pos, tok in enumerate(toks)
        ]
        for start in range(0, len(items), self.n_batch):
            self.decode(items[start : start + self.n_batch])

    def argmax_rows(self, n_rows: int) -> list[int]:
        """Greedy next token for each output row, argmax in numpy (no vocab loop)."""
        out = []
        for i in range(n_rows):
            row = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
            out.append(int(row.argmax()))
        return out

    def clear(self) -> None:
        lc.llama_memory_clear(self.mem, True)

    def close(self) -> None:
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


def _decode_rep(bench: _Bench, batch: int, prompt_tokens: int, steps: int) -> tuple[float, float]:
    """One repetition: prefill B prompts (untimed), then `steps` timed batched steps.

    Returns (summed tokens/s, median step seconds).
    """
    bench.clear()
    prompts = {seq: bench.prompt(prompt_tokens) for seq in range(batch)}
    for seq, toks in prompts.items():  # distinct sequences, not B copies of one
        toks[-1] = (toks[-1] + seq) % bench.n_vocab
    bench.prefill(prompts)
    # The first step feeds each prompt's last token again (its cost is that of any
    # token); from then on every step feeds the argmax of the previous one.
    nxt = [toks[-1] for toks in prompts.values()]
    step_times = []
    t0 = time.perf_counter()
    for step in range(steps):
        s0 = time.perf_counter()
        pos = prompt_tokens + step
        bench.decode([(nxt[seq], pos, seq, True) for seq in range(batch)])
        nxt = bench.argmax_rows(batch)
        step_times.append(time.perf_counter() - s0)
    elapsed = time.perf_counter() - t0
    return batch * steps / elapsed, statistics.median(step_times)


class SingleStreamCeiling:
    """The B=1 decode ceiling, kept loaded so it can be measured again and again
    between rounds of server load (see `benchmarks.run`'s paired c=1 figure)."""

    def __init__(self, model_path: str | Path | None = None, n_threads: int | None = None,
                 prompt_tokens: int = 64, steps: int = 128) -> None:
        path = Path(model_path) if model_path else bundled_model_path()
        n_ctx = -(-(prompt_tokens + steps + 1) // 256) * 256
        self._bench = _Bench(path, n_ctx=n_ctx, n_batch=512, n_seq_max=1,
                             threads=n_threads or physical_cores())
        self._prompt_tokens, self._steps = prompt_tokens, steps
        _decode_rep(self._bench, 1, prompt_tokens, 4)  # warm-up

    def measure(self) -> float:
        """Tokens/s of one sequence decoding `steps` tokens."""
        return _decode_rep(self._bench, 1, self._prompt_tokens, self._steps)[0]

    def close(self) -> None:
        self._bench.close()


DRAFT_ROWS = (1, 2, 4, 8, 13)  # 1 = plain decoding; 13 = a full 12-token draft


def _draft_rows_ms(bench: _Bench, prompt_tokens: int, reps: int = 12) -> dict[int, float]:
    """Median ms of one step of one sequence holding r rows (its next token plus r - 1
    guesses), each shape repeated so llama.cpp reuses its graph, as in a run of drafts."""
    bench.clear()
    prompt = bench.prompt(prompt_tokens)
    bench.prefill({0: prompt})
    out = {}
    for rows in DRAFT_ROWS:
        times = []
        for rep in range(reps + 3):
            items = [(prompt[(i * 7) % prompt_tokens], prompt_tokens + i, 0, True)
                     for i in range(rows)]
            t0 = time.perf_counter()
            bench.decode(items)
            bench.argmax_rows(rows)
            if rep >= 3:
                times.append(time.perf_counter() - t0)
            lc.llama_memory_seq_rm(bench.mem, 0, prompt_tokens, -1)
        out[rows] = round(1000 * statistics.median(times), 2)
    return out


def _prompt_rep(bench: _Bench, tokens: list[int]) -> float:
    """Prefill one sequence's long prompt in n_batch chunks; tokens/s."""
    bench.clear()
    t0 = time.perf_counter()
    bench.prefill({0: tokens})
    lc.llama_synchronize(bench.ctx)
    return len(tokens) / (time.perf_counter() - t0)


def measure_ceiling(
    model_path: str | Path | None = None,
    batch_sizes: tuple[int, ...] | list[int] = DEFAULT_BATCH_SIZES,
    *,
    prompt_tokens: int = 64,
    steps: int = 128,
    reps: int = 3,
    pp_tokens: int = 512,
    pp_reps: int = 3,
    n_threads: int | None = None,
    n_batch: int = 512,
    n_ctx: int | None = None,
    kv_unified: bool = True,
    progress: bool = False,
) -> CeilingResult:
    """Measure batched decode and prompt-processing throughput; medians over `reps`."""
    started = time.perf_counter()
    path = Path(model_path) if model_path else bundled_model_path()
    batch_sizes = sorted(set(batch_sizes))
    max_b = max(batch_sizes)
    threads = n_threads or physical_cores()
    n_seq_max = max(16, max_b)
    seq_cells = prompt_tokens + steps + 1
    if kv_unified:
        need = max(max_b * seq_cells, pp_tokens + 1)
    else:  # a split cache gives each of the n_seq_max streams n_ctx / n_seq_max cells
        need = n_seq_max * max(seq_cells, pp_tokens + 1)
    n_ctx = max(n_ctx or 0, -(-need // 256) * 256)
    if max_b * prompt_tokens > n_batch and progress:
        print(f"note: prefill of {max_b}x{prompt_tokens} is split into n_batch chunks")
    bench = _Bench(path, n_ctx=n_ctx, n_batch=n_batch, n_seq_max=n_seq_max, threads=threads,
                   kv_unified=kv_unified)
    try:
        # Warm-up: page in the weights and let ggml size its compute buffers.
        bench.prefill({0: bench.prompt(min(64, prompt_tokens))})
        _decode_rep(bench, 1, prompt_tokens, 4)

        figures = []
        for b in batch_sizes:
            rates, step_s = [], []
            for _ in range(reps):
                rate, med_step = _decode_rep(bench, b, prompt_tokens, steps)
                rates.append(rate)
                step_s.append(med_step)
            tps = statistics.median(rates)
            figures.append(
                DecodeFigure(
                    batch=b,
                    steps=steps,
                    tokens_per_s=round(tps, 1),
                    per_seq_tokens_per_s=round(tps / b, 1),
                    step_ms=round(1000 * statistics.median(step_s), 2),
                    steady_tokens_per_s=round(b / statistics.median(step_s), 1),
                    reps_tokens_per_s=[round(r, 1) for r in rates],
                )
            )
            if progress:
                reps_text = ", ".join(f"{r:.0f}" for r in rates)
                print(f"  decode B={b:<3d} {tps:8.1f} tok/s  ({reps_text})", flush=True)

        draft_rows = _draft_rows_ms(bench, prompt_tokens)
        long_prompt = bench.prompt(pp_tokens)
        pp_rates = [_prompt_rep(bench, long_prompt) for _ in range(pp_reps)]
        if progress:
            print(f"  prompt {pp_tokens} tok {statistics.median(pp_rates):8.1f} tok/s", flush=True)
        bench.clear()
    finally:
        bench.close()
    return CeilingResult(
        model=path.name,
        n_threads=threads,
        n_ctx=n_ctx,
        n_batch=n_batch,
        kv_unified=kv_unified,
        prompt_tokens=prompt_tokens,
        decode=figures,
        prompt_processing_tokens=pp_tokens,
        prompt_processing_tokens_per_s=round(statistics.median(pp_rates), 1),
        prompt_processing_reps=[round(r, 1) for r in pp_rates],
        seconds=round(time.perf_counter() - started, 1),
        draft_rows_ms=draft_rows,
    )


def format_ceiling(result: CeilingResult) -> str:
    """A small human-readable table."""
    lines = [
        f"engine ceiling: {result.model}, {result.n_threads} threads, n_ctx {result.n_ctx}, "
        f"n_batch {result.n_batch}, {'unified' if result.kv_unified else 'split'} KV "
        "(median of reps)",
        f"{'batch':>5} {'tok/s':>9} {'per seq':>9} {'step ms':>9} {'steady tok/s':>13}",
    ]
    for f in result.decode:
        lines.append(
            f"{f.batch:>5} {f.tokens_per_s:>9.1f} {f.per_seq_tokens_per_s:>9.1f} "
            f"{f.step_ms:>9.2f} {f.steady_tokens_per_s:>13.1f}"
        )
    lines.append(
        f"prompt processing ({result.prompt_processing_tokens} tokens): "
        f"{result.prompt_processing_tokens_per_s:.1f} tok/s"
    )
    bound = result.draft_speedup_bound()
    if bound is not None:
        rows = ", ".join(f"{r}: {ms:.1f}" for r, ms in result.draft_rows_ms.items())
        lines.append(f"one sequence, rows per step -> step ms (speculation's verify): {rows}; "
                     f"every guess taken, {bound[0]} rows give {bound[1]:.2f}x the tok/s of 1")
    return "\n".join(lines)


def parse_int_list(text: str) -> list[int]:
    """'1,4,8,16' -> [1, 4, 8, 16]."""
    return [int(part) for part in text.replace(" ", "").split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="In-process llama.cpp ceiling for chatd.")
    parser.add_argument("--model", help="GGUF path (default: the bundled SmolLM2-135M)")
    parser.add_argument("--batch-sizes", type=parse_int_list, default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pp-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--n-ctx", type=int, default=None,
                        help="KV cells (default: just enough for the largest batch)")
    parser.add_argument("--split-kv", action="store_true",
                        help="kv_unified=False: one KV stream per sequence (no prefix sharing)")
    parser.add_argument("--json", dest="json_path", help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = measure_ceiling(
        args.model,
        args.batch_sizes,
        prompt_tokens=args.prompt_tokens,
        steps=args.steps,
        reps=args.reps,
        pp_tokens=args.pp_tokens,
        n_threads=args.threads,
        n_ctx=args.n_ctx,
        kv_unified=not args.split_kv,
        progress=True,
    )
    print(format_ceiling(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
