"""Is a sequence's output independent of what else is in the batch? A measurement.

Runs one greedy sequence ("A") alone, then beside other traffic, and prints the
largest logit difference from the alone run over 40 steps and the first step that
differs. chatd's reproducible seeds rest on every row below printing 0, except
`reordered`: that one shows why the scheduler never frees KV cells while sequences
run (a freed hole refilled by A's next token changes the order flash attention
visits A's cells in).

    python -m benchmarks.invariance           # the server's KV cache (q8_0)
    python -m benchmarks.invariance --f16     # llama.cpp's default f16 cache
"""

from __future__ import annotations

import argparse

import llama_cpp as lc
import numpy as np

from chatd.engine.llama import KV_CACHE_TYPE, LlamaModel, LlamaSettings
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--f16", action="store_true", help="f16 K/V (llama.cpp's default)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    kv_type = lc.GGML_TYPE_F16 if args.f16 else KV_CACHE_TYPE
    m = LlamaModel(bundled_model_path(), LlamaSettings(
        kv_cells=4096, n_seq_max=8, n_threads=args.threads, type_k=kv_type, type_v=kv_type))
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
