"""Is a sequence's output independent of what else is in the batch? A measurement.

Runs one greedy sequence ("A") alone, then beside other traffic, and prints the
largest logit difference from the alone run over 40 steps and the first step that
differs. chatd's reproducible seeds rest on every row below printing 0, except
`reordered`: that one shows why the scheduler never frees KV cells while sequences
run (a freed hole refilled by A's next token changes the order flash attention
visits A's cells in).

    python -m benchmarks.invariance           # the server's KV cache (q8_0)
    python -m benchmarks.invariance --f16     # llama.cpp's default f16 cache

`--long N` runs A with an N-token prompt instead, through scenarios that separate
the rules an f16 cache needs (see LONG_SCENARIOS): how A's prompt is chunked, what
shares its calls, where its cells sit (flash attention's tiled kernel, used for a
micro-batch of >= 64 query rows, groups KV cells into 64-cell tiles by cache
index), prefix-cache reuse, a repack, and n_ubatch. Each is compared with the run
named after `vs` (A alone, its prompt in one call, unless said), and scenarios
whose logits are bitwise identical are listed together at the end. With f16 and
more than one thread, a one-token call over >= 512 cells splits the KV cells among
the threads (`--single-threads 1` runs such calls on one thread).

    python -m benchmarks.invariance --long 300 --f16 --threads 1
    python -m benchmarks.invariance --long 300 --f16 --threads 2 --single-threads 1
    python -m benchmarks.invariance --timing --threads 1   # cost of a prompt call of its own
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

import llama_cpp as lc
import numpy as np

from chatd.engine.llama import (
    INVARIANT_KV_CACHE_TYPE,
    LlamaModel,
    LlamaSettings,
    default_threads,
)
from chatd.models.registry import bundled_model_path

STEPS = 40
PROMPT = ("<|im_start|>user\nTell me a long story about a brave knight and a dragon."
          "<|im_end|>\n<|im_start|>assistant\n")
SCENARIOS = ("alone", "beside_decoders", "beside_prefill", "prompt_batched",
             "chunked_prompt", "large_cache", "reordered")


def _prefill(m: LlamaModel, tokens: list[int], seq: int, *, start: int = 0,
             chunk: int = 256, logits_last: bool = False) -> None:
    for s in range(0, len(tokens), chunk):
        part = tokens[s:s + chunk]
        want = [False] * len(part)
        if logits_last and s + chunk >= len(tokens):
            want[-1] = True
        m.decode(part, list(range(start + s, start + s + len(part))), [seq] * len(part), want)


def run(m: LlamaModel, scenario: str) -> list[np.ndarray]:
    """Logits rows of A's prompt and its next STEPS greedy tokens in one scenario."""
    a = m.tokenize(PROMPT)
    other = m.tokenize("banana " * 300)
    m.clear()
    if scenario == "reordered":
        _prefill(m, other[:200], seq=5)
    if scenario == "large_cache":
        _prefill(m, other, seq=3)
    if scenario == "prompt_batched":  # A's prompt shares a micro-batch with another
        toks = a + other[:100]
        m.decode(toks, list(range(len(a))) + list(range(100)), [0] * len(a) + [1] * 100,
                 [i == len(a) - 1 for i in range(len(toks))])
        row = len(a) - 1
    else:
        _prefill(m, a, seq=0, chunk=16 if scenario == "chunked_prompt" else 256,
                 logits_last=True)
        row = (len(a) - 1) % (16 if scenario == "chunked_prompt" else 256)
    if scenario == "reordered":
        m.seq_remove(5)  # a hole below A's cells: its next tokens land there
    rows = [m.logits_row(row).copy()]
    token, pos = int(np.argmax(rows[0])), len(a)
    other_pos = 100 if scenario == "prompt_batched" else 0
    for _ in range(STEPS):
        toks, poss, seqs, want = [token], [pos], [0], [True]
        if scenario in ("beside_prefill", "prompt_batched") and other_pos < len(other):
            n = min(64, len(other) - other_pos)
            toks += other[other_pos:other_pos + n]
            poss += list(range(other_pos, other_pos + n))
            seqs += [1] * n
            want += [False] * n
            other_pos += n
        if scenario == "beside_decoders":
            for s in (6, 7):
                toks.append(other[other_pos])
                poss.append(other_pos)
                seqs.append(s)
                want.append(True)
            other_pos += 1
        m.decode(toks, poss, seqs, want)
        rows.append(m.logits_row(0).copy())
        token, pos = int(np.argmax(rows[-1])), pos + 1
    return rows


# ---- long prompts -------------------------------------------------------------------

BODY = ("The old lighthouse keeper kept a logbook of every ship that passed the cape, "
        "the weather at dawn and dusk, the price of lamp oil in the village, and the "
        "names of the gulls he fed from the gallery rail. One winter a storm broke the "
        "great lens, and for nine nights he kept a lantern burning by hand while the "
        "harbour master argued with the council about who should pay for the glass. ")
Part = tuple[list[int], int, int, bool]  # tokens, first position, sequence id, logits


def _long_prompt(m: LlamaModel, n: int) -> list[int]:
    head = m.tokenize("<|im_start|>user\nSummarize this log, then continue it:\n")
    tail = m.tokenize("<|im_end|>\n<|im_start|>assistant\n", add_special=False)
    body = m.tokenize(BODY * (n // 40 + 2), add_special=False)
    return head + body[:n - len(head) - len(tail)] + tail


def _call(m: LlamaModel, parts: list[Part], index: int = 0) -> int:
    """One llama_decode over `parts`, in order (each part flagged gets logits for its
    last token); the batch row of part `index`'s last token."""
    toks: list[int] = []
    poss: list[int] = []
    seqs: list[int] = []
    want: list[bool] = []
    rows = []
    for tokens, start, seq, logits in parts:
        toks += tokens
        poss += range(start, start + len(tokens))
        seqs += [seq] * len(tokens)
        want += [False] * len(tokens)
        want[-1] = logits
        rows.append(len(toks) - 1)
    m.decode(toks, poss, seqs, want)
    return rows[index]


class _Decoders:
    """Other sequences decoding beside A, one token each per call (teacher-forced)."""

    def __init__(self, other: list[int], seqs: tuple[int, ...] = (6, 7)) -> None:
        self.other, self.seqs, self.pos = other, seqs, 0

    def parts(self) -> list[Part]:
        out = [([self.other[self.pos]], self.pos, s, True) for s in self.seqs]
        self.pos += 1
        return out


def _chunks(sizes: list[int], n: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """(start, end) of chunks of the given sizes, the last size repeated to n."""
    i, pos = 0, start
    while pos < n:
        size = sizes[min(i, len(sizes) - 1)]
        yield pos, min(n, pos + size)
        pos += size
        i += 1


def _prefill_a(m: LlamaModel, a: list[int], sizes: list[int], *, start: int = 0,
               extra: Callable[[], list[Part]] | None = None, extra_first: bool = False,
               between: Callable[[], list[Part]] | None = None) -> int:
    """A's prompt from position `start` in chunks; `extra` rows share each call
    (before or after A's), `between` rows get a call of their own after each chunk
    but the last. Returns the batch row of A's last prompt token."""
    row = -1
    spans = list(_chunks(sizes, len(a), start))
    for i, (lo, hi) in enumerate(spans):
        own: Part = (a[lo:hi], lo, 0, hi == len(a))
        more = extra() if extra else []
        parts = [*more, own] if extra_first else [own, *more]
        row = _call(m, parts, len(more) if extra_first else 0)
        if between and i + 1 < len(spans):
            _call(m, between())
    return row


def _decode_a(m: LlamaModel, a: list[int], row: int, *,
              beside: Callable[[], list[Part]] | None = None,
              hook: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """A's last prompt row and STEPS greedy steps, `beside` rows in each call after A's."""
    rows = [m.logits_row(row).copy()]
    token, pos = int(np.argmax(rows[0])), len(a)
    for step in range(STEPS):
        if hook:
            hook(step)
        r = _call(m, [([token], pos, 0, True)] + (beside() if beside else []))
        rows.append(m.logits_row(r).copy())
        token, pos = int(np.argmax(rows[-1])), pos + 1
    return rows


def _repack(m: LlamaModel, seqs: tuple[int, ...]) -> None:
    """What Scheduler._repack does: save each sequence's cells, empty the cache,
    restore them one after another from cell 0 (llama_state_seq_get/set_data)."""
    saved = [(s, m.seq_save(s)) for s in seqs]
    m.clear()
    for s, data in saved:
        m.seq_restore(data, s)


def _prefix(m: LlamaModel, a: list[int], other: list[int], k: int, pad: int) -> list[np.ndarray]:
    """Another sequence (2) holds A's first k tokens then `pad` tokens of its own;
    A shares those k cells (llama_memory_seq_cp, as the prefix cache does) and
    prefills the rest in one call, at cell k + pad."""
    _call(m, [(a[:k] + other[:pad], 0, 2, False)] if pad else [(a[:k], 0, 2, False)])
    m.seq_copy(2, 0, 0, k)
    return _decode_a(m, a, _prefill_a(m, a, [len(a)], start=k))


def _prefix_from_decode(m: LlamaModel, a: list[int], k: int) -> list[np.ndarray]:
    """Sequence 2 computed A's first k tokens one per call (as generated tokens are),
    A reuses them and prefills the rest."""
    for i in range(k):
        _call(m, [([a[i]], i, 2, False)])
    m.seq_copy(2, 0, 0, k)
    return _decode_a(m, a, _prefill_a(m, a, [len(a)], start=k))


def _prefix_repacked(m: LlamaModel, a: list[int], other: list[int],
                     shift: int) -> list[np.ndarray]:
    """prefix128_cell192, but a repack first restores another sequence (`shift` cells)
    below the cached entry, so the entry and A's new cells move up by `shift`."""
    _call(m, [(a[:128] + other[:64], 0, 2, False)])
    _call(m, [(other[:shift], 0, 5, False)])
    _repack(m, (5, 2))
    m.seq_copy(2, 0, 0, 128)
    return _decode_a(m, a, _prefill_a(m, a, [len(a)], start=128))


def _prefix_padded(m: LlamaModel, a: list[int], other: list[int], tail: int) -> list[np.ndarray]:
    """A reuses all but its last `tail` tokens (contiguous), and those rows share their
    call with 64 - tail rows of a throwaway sequence (4), so the tiled kernel runs."""
    k = len(a) - tail
    _call(m, [(a[:k], 0, 2, False)])
    m.seq_copy(2, 0, 0, k)
    row = _call(m, [(a[k:], k, 0, True), (other[:64 - tail], 0, 4, False)])
    return _decode_a(m, a, row)


def _merged(*sizes: int) -> Callable[..., list[np.ndarray]]:
    """Chunks of `sizes` (the last repeated), a last chunk under 64 merged into the one
    before it: every chunk runs the tiled kernel."""
    def run_(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
        spans = [hi - lo for lo, hi in _chunks(list(sizes), len(a))]
        if len(spans) > 1 and spans[-1] < 64:
            spans[-2:] = [spans[-2] + spans[-1]]
        return _decode_a(m, a, _prefill_a(m, a, spans))
    return run_


def _long_scenarios() -> dict[str, tuple[str, Callable[..., list[np.ndarray]]]]:
    """name -> (reference name, run(m, a, other))."""
    def chunked(*sizes: int) -> Callable[..., list[np.ndarray]]:
        return lambda m, a, other: _decode_a(m, a, _prefill_a(m, a, list(sizes)))

    def offset(n: int) -> Callable[..., list[np.ndarray]]:
        def run_(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
            _call(m, [(other[:n], 0, 5, False)])
            return _decode_a(m, a, _prefill_a(m, a, [len(a)]))
        return run_

    def batched(n: int, *, first: bool) -> Callable[..., list[np.ndarray]]:
        def run_(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
            row = _prefill_a(m, a, [len(a)], extra=lambda: [(other[:n], 0, 1, False)],
                             extra_first=first)
            return _decode_a(m, a, row)
        return run_

    def beside_chunks(size: int, *, own_call: bool = False) -> Callable[..., list[np.ndarray]]:
        def run_(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
            dec = _Decoders(other)
            if own_call:
                row = _prefill_a(m, a, [size], between=dec.parts)
            else:
                row = _prefill_a(m, a, [size], extra=dec.parts)
            return _decode_a(m, a, row, beside=dec.parts)
        return run_

    def own_call_padded(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
        dec = _Decoders(other)
        pad = [0]

        def between() -> list[Part]:  # the decoders' call, then 62 throwaway cells
            _call(m, dec.parts())
            pad[0] += 62
            return [(other[pad[0] - 62:pad[0]], pad[0] - 62, 4, False)]
        return _decode_a(m, a, _prefill_a(m, a, [256], between=between), beside=dec.parts)

    def beside_decoders(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
        return _decode_a(m, a, _prefill_a(m, a, [len(a)]), beside=_Decoders(other).parts)

    def beside_prefill(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
        pos = [0]

        def rows() -> list[Part]:
            lo = pos[0] % (len(other) - 64)
            pos[0] += 64
            return [(other[lo:lo + 64], pos[0] - 64, 1, False)]
        return _decode_a(m, a, _prefill_a(m, a, [len(a)]), beside=rows)

    def repacked(at: int, *, first: bool) -> Callable[..., list[np.ndarray]]:
        def run_(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
            _call(m, [(other[:100], 0, 5, False)])  # A's cells start at cell 100
            dec = _Decoders(other)
            order = (0, 6, 7) if first else (6, 7, 0)
            return _decode_a(m, a, _prefill_a(m, a, [len(a)]), beside=dec.parts,
                             hook=lambda step: _repack(m, order) if step == at else None)
        return run_

    def offset_then_decoders(m: LlamaModel, a: list[int], other: list[int]) -> list[np.ndarray]:
        _call(m, [(other[:100], 0, 5, False)])
        return _decode_a(m, a, _prefill_a(m, a, [len(a)]), beside=_Decoders(other).parts)

    return {
        # a. A alone, its own prompt chunked differently
        "alone": ("alone", chunked(1 << 20)),
        "chunk256": ("alone", chunked(256)),
        "chunk128": ("alone", chunked(128)),
        "chunk100": ("alone", chunked(100)),
        "chunk64": ("alone", chunked(64)),
        "chunk64_merged": ("alone", _merged(64)),
        "chunk37_256": ("alone", chunked(37, 256)),
        "chunk101_67_90_merged": ("alone", _merged(101, 67, 90)),
        "chunk63": ("alone", chunked(63)),
        "chunk48": ("alone", chunked(48)),
        "chunk48_vs_63": ("chunk63", chunked(48)),
        "chunk16": ("chunk48", chunked(16)),
        "tiled_then_48": ("alone", lambda m, a, o: _decode_a(m, a, _prefill_a(
            m, a, [64 * ((len(a) - 48) // 64), 48]))),
        # where A's cells start (another sequence prefilled first, in its own call)
        "offset32": ("alone", offset(32)),
        "offset64": ("alone", offset(64)),
        "offset100": ("alone", offset(100)),
        "offset256": ("alone", offset(256)),
        "offset100_chunk48": ("chunk48", lambda m, a, o: (
            _call(m, [(o[:100], 0, 5, False)]), chunked(48)(m, a, o))[1]),
        # b. A's prompt sharing calls
        "prompt_batched_after": ("alone", batched(100, first=False)),
        "prompt_batched_before64": ("alone", batched(64, first=True)),
        "prompt_batched_before100": ("alone", batched(100, first=True)),
        "chunk48+2dec": ("chunk48", beside_chunks(48)),
        "chunk61+2dec": ("chunk48", beside_chunks(61)),
        "chunk62+2dec": ("chunk48", beside_chunks(62)),
        "chunk256+2dec": ("chunk256", beside_chunks(256)),
        "chunk256|2dec": ("chunk256", beside_chunks(256, own_call=True)),
        "chunk256|2dec|pad": ("chunk256", own_call_padded),
        "chunk64|2dec": ("chunk64", beside_chunks(64, own_call=True)),
        "chunk48|2dec": ("chunk48", beside_chunks(48, own_call=True)),
        # A decoding beside others
        "beside_decoders": ("alone", beside_decoders),
        "beside_prefill": ("alone", beside_prefill),
        # c. prefix-cache reuse: k shared tokens, the rest of A's prompt at cell k + pad
        "prefix128_cell192": ("alone", lambda m, a, o: _prefix(m, a, o, 128, 64)),
        "prefix128_cell178": ("alone", lambda m, a, o: _prefix(m, a, o, 128, 50)),
        "prefix100_cell128": ("alone", lambda m, a, o: _prefix(m, a, o, 100, 28)),
        "prefix100_contig": ("alone", lambda m, a, o: _prefix(m, a, o, 100, 0)),
        "prefix_tail20": ("alone", lambda m, a, o: _prefix(m, a, o, len(a) - 20, 0)),
        "prefix_tail20_vs48": ("chunk48", lambda m, a, o: _prefix(m, a, o, len(a) - 20, 0)),
        "prefix_tail20_padded": ("alone", lambda m, a, o: _prefix_padded(m, a, o, 20)),
        "prefix64_from_decode": ("alone", lambda m, a, o: _prefix_from_decode(m, a, 64)),
        "prefix128_repacked64": ("alone", lambda m, a, o: _prefix_repacked(m, a, o, 64)),
        "prefix128_repacked36": ("alone", lambda m, a, o: _prefix_repacked(m, a, o, 36)),
        # d. a repack (save, clear, restore) mid-decode; A's cells move down
        "offset100+2dec": ("offset100", offset_then_decoders),
        "repack_A_first": ("offset100+2dec", repacked(20, first=True)),
        "repack_A_last": ("offset100+2dec", repacked(20, first=False)),
        "repack_at_0": ("offset100+2dec", repacked(0, first=True)),
    }


LONG_SCENARIOS = tuple(_long_scenarios())
UBATCHES = (256, 100, 64, 48)  # e. n_ubatch below the prompt length: llama.cpp splits the call


@contextlib.contextmanager
def _n_ubatch(n: int | None) -> Iterator[None]:
    """LlamaModel sets n_ubatch = n_batch; make its context use `n` instead."""
    if n is None:
        yield
        return
    original = lc.llama_init_from_model

    def init(model: object, cparams: lc.llama_context_params) -> object:
        cparams.n_ubatch = n
        return original(model, cparams)

    lc.llama_init_from_model = init
    try:
        yield
    finally:
        lc.llama_init_from_model = original


def _load(kv_type: int, threads: int, n_batch: int = 512, n_ubatch: int | None = None,
          single_threads: int = 0, n_seq_max: int = 8) -> LlamaModel:
    with _n_ubatch(n_ubatch):
        m = LlamaModel(bundled_model_path(), LlamaSettings(
            kv_cells=4096, n_seq_max=n_seq_max, n_batch=n_batch, n_threads=threads,
            type_k=kv_type, type_v=kv_type, interleave=False))  # as --deterministic
    if single_threads:
        # llama.cpp runs a one-token micro-batch on n_threads, others on n_threads_batch
        lc.llama_set_n_threads(m._ctx, single_threads, threads or default_threads())
    return m


def _report(name: str, rows: list[np.ndarray], ref: list[np.ndarray], vs: str) -> None:
    diffs = [float(np.abs(x - y).max()) for x, y in zip(ref, rows, strict=True)]
    first = next((i for i, d in enumerate(diffs) if d > 0), None)
    print(f"  {name:24s} max diff {max(diffs):8.4g}   first differing step {first}"
          f"   vs {vs}", flush=True)


def main_long(args: argparse.Namespace, kv_type: int) -> None:
    n_batch = max(512, args.long + 128)
    m = _load(kv_type, args.threads, n_batch, single_threads=args.single_threads)
    a = _long_prompt(m, args.long)
    other = m.tokenize("banana " * 600)
    scenarios = _long_scenarios()
    names = [n for n in args.only.split(",") if n in scenarios] if args.only else list(scenarios)
    print(f"KV cache {'f16' if args.f16 else 'q8_0'}, A's prompt {len(a)} tokens, "
          f"threads {args.threads or 'default'}"
          f"{f' ({args.single_threads} for one-token calls)' if args.single_threads else ''}"
          f": max |logit - vs| over {STEPS} steps")
    results: dict[str, list[np.ndarray]] = {}
    for name in ["alone"] + [n for n in names if n != "alone"]:
        ref = scenarios[name][0]
        for needed in (ref, name):
            if needed not in results:
                m.clear()
                results[needed] = scenarios[needed][1](m, a, other)
        _report(name, results[name], results[ref], ref)
    m.close()
    # e. the same one-call prompt with a smaller n_ubatch
    for ub in ([] if args.only and "n_ubatch" not in args.only else UBATCHES):
        if ub >= len(a):
            continue
        mu = _load(kv_type, args.threads, n_batch, ub, args.single_threads)
        name = f"n_ubatch{ub}"
        results[name] = scenarios["alone"][1](mu, a, other)
        mu.close()
        _report(name, results[name], results["alone"], "alone")
    groups: dict[str, list[str]] = {}
    for name, rows in results.items():
        digest = hashlib.sha1(b"".join(r.tobytes() for r in rows)).hexdigest()
        groups.setdefault(digest, []).append(name)
    print("  bitwise identical:")
    for members in groups.values():
        print("    " + " = ".join(members))


# ---- timing ---------------------------------------------------------------------------

def _time_calls(m: LlamaModel, variants: list[list[list[Part]]],
                undo: list[tuple[int, int]], reps: int) -> list[float]:
    """Median ms of each variant's llama_decode calls (perf_counter around them only),
    the variants taking turns so that they share the machine's load; before each
    the (sequence, from position) pairs in `undo` are cut back."""
    times: list[list[float]] = [[] for _ in variants]
    for _ in range(reps):
        for calls, out in zip(variants, times, strict=True):
            for seq, start in undo:
                m.seq_remove(seq, start, -1)
            t0 = time.perf_counter()
            for parts in calls:
                _call(m, parts)
            out.append(time.perf_counter() - t0)
    return [1000 * statistics.median(t) for t in times]


def _time_model(label: str, m: LlamaModel, n: int, reps: int, threads: int) -> None:
    ctx = 128
    other = m.tokenize("banana " * 2000, add_special=False)
    for start in (0, 1024):
        m.clear()
        for s in range(8):
            _call(m, [(other[:ctx], 0, s, False)])
        if start:
            _call(m, [(other[:start], 0, 8, False)])
        dec: list[Part] = [([other[ctx]], ctx, s, True) for s in range(8)]
        chunk: Part = (other[start:start + 192], start, 8, True)
        undo = [(s, ctx) for s in range(8)] + [(8, start)]
        alone, mixed, split, chunk_only = _time_calls(
            m, [[dec], [[*dec, chunk]], [dec, [chunk]], [[chunk]]], undo, reps)
        print(f"  {label:16s} prompt at {start:4d}: 8 decode {alone:7.1f}   8+192 one call "
              f"{mixed:7.1f}   two calls {split:7.1f}   192 alone {chunk_only:7.1f}", flush=True)
    m.clear()
    (ttft,) = _time_calls(m, [[[(other[:n], 0, 0, True)]]], [(0, 0)], 3)
    step: Part = ([other[n]], n, 0, True)
    # the same step with a throwaway second row (sequence 10), so it is not a one-token call
    b1, b1_pad = _time_calls(m, [[[step]], [[step, ([other[0]], 0, 10, False)]]],
                             [(0, n), (10, 0)], reps)
    line = (f"  {label:16s} prefill {n} tokens {ttft:8.1f}   then a B=1 step {b1:6.2f}"
            f"   B=1 + throwaway row {b1_pad:6.2f}")
    if threads != 1:
        lc.llama_set_n_threads(m._ctx, 1, threads or default_threads())
        (b1_single,) = _time_calls(m, [[[step]]], [(0, n)], reps)
        lc.llama_set_n_threads(m._ctx, threads or default_threads(),
                               threads or default_threads())
        line += f"   B=1 on 1 thread {b1_single:6.2f}"
    print(line, flush=True)


def main_timing(args: argparse.Namespace) -> None:
    """8 decode rows alone, with a 192-row prompt chunk in the same call, and in two
    calls; then a long prompt's prefill and a B=1 step, per cache type and n_ubatch."""
    reps = 10
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f}, threads {args.threads or 'default'}, "
          f"median of {reps} (ms)")
    for label, kv_type, ub in (("q8_0", INVARIANT_KV_CACHE_TYPE, None),
                               ("f16", lc.GGML_TYPE_F16, None),
                               ("f16 n_ubatch 63", lc.GGML_TYPE_F16, 63)):
        m = _load(kv_type, args.threads, 2048, ub, n_seq_max=12)
        _time_model(label, m, args.long or 1200, reps, args.threads)
        m.close()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} after")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--f16", action="store_true",
                   help="f16 K/V (the default cache; without it: --deterministic's q8_0)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--long", type=int, default=0, metavar="N",
                   help="A's prompt is N tokens; run LONG_SCENARIOS instead")
    p.add_argument("--single-threads", type=int, default=0, metavar="N",
                   help="threads for one-token micro-batches (llama_set_n_threads)")
    p.add_argument("--only", default="",
                   help="comma-separated long scenarios (with --long); n_ubatch: the n_ubatch runs")
    p.add_argument("--timing", action="store_true",
                   help="time a prompt chunk sharing the decode call vs a call of its own")
    args = p.parse_args()
    kv_type = lc.GGML_TYPE_F16 if args.f16 else INVARIANT_KV_CACHE_TYPE
    if args.timing:
        main_timing(args)
        return
    if args.long:
        main_long(args, kv_type)
        return
    m = LlamaModel(bundled_model_path(), LlamaSettings(
        kv_cells=4096, n_seq_max=8, n_threads=args.threads, type_k=kv_type, type_v=kv_type,
        interleave=False))  # as --deterministic
    base = run(m, "alone")
    print(f"KV cache {'f16' if args.f16 else 'q8_0'}: max |logit - alone| over {STEPS} steps")
    for scenario in SCENARIOS:
        diffs = [float(np.abs(x - y).max()) for x, y in zip(base, run(m, scenario),
                                                             strict=True)]
        first = next((i for i, d in enumerate(diffs) if d > 0), None)
        print(f"  {scenario:16s} max diff {max(diffs):8.4g}   first differing step {first}")
    m.close()


if __name__ == "__main__":
    main()
