"""The dense prompt path (`--dense-prefill`, engine/prompts.py), in-process: how much
sooner a prompt's first token comes, and how close its distribution stays to an
exact evaluation of the same weights.

Speed: for prompts of ~1,000 and ~4,000 tokens, alternating rounds of
- served: the prompt through the file's own weights, 512 tokens a decode;
- dense: all but its last token through the dense copy, the cells saved and restored
  into the served context, the last token there (what the engine does).
Each round's dense / served time is reported, and the geometric mean.

Accuracy: for a few ~300-2,000-token prompts, the first token's distribution from
each path against an exact evaluation (the weights written out as F32, so every
product is the file's value times an unrounded activation): KL(exact || path) in
nats. The served path rounds activations to 8 bits (Q8_1) for its dot products; the
dense copy rounds weights and activations to BF16 (or F16).

    python -m benchmarks.dense_prefill [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import llama_cpp as lc
import numpy as np

from benchmarks.workloads import fresh_prompt
from chatd.engine.llama import LlamaContext, LlamaModel, LlamaSettings, default_threads
from chatd.engine.prompts import dense_file_type
from chatd.models.registry import bundled_model_path, load_model_info
from chatd.models.requantize import FILE_TYPE_NAMES, dense_copy

CHUNK = 512


def _prefill(ctx: LlamaContext, tokens: list[int], lo: int, hi: int, *,
             logits: bool) -> None:
    for start in range(lo, hi, CHUNK):
        end = min(hi, start + CHUNK)
        ctx.decode(tokens[start:end], list(range(start, end)), [0] * (end - start),
                   [logits and i == hi - 1 for i in range(start, end)])


def served_path(served: LlamaModel, tokens: list[int]) -> np.ndarray:
    served.clear()
    _prefill(served, tokens, 0, len(tokens), logits=True)
    return served.logits_row(-1).copy()


def dense_path(served: LlamaModel, dense: LlamaContext, tokens: list[int]) -> np.ndarray:
    served.clear()
    dense.clear()
    _prefill(dense, tokens, 0, len(tokens) - 1, logits=False)
    served.seq_restore(dense.seq_save(0), 0)
    _prefill(served, tokens, len(tokens) - 1, len(tokens), logits=True)
    return served.logits_row(-1).copy()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def kl(exact: np.ndarray, other: np.ndarray) -> float:
    p, q = _log_softmax(exact), _log_softmax(other)
    return float((np.exp(p) * (p - q)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dense_prefill")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lengths", default="1000,4000", help="prompt sizes of the speed rows")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()

    info = load_model_info(None, None)
    threads = default_threads()
    settings = LlamaSettings(kv_cells=8192, n_seq_max=1, n_threads=threads)
    file_type = dense_file_type()
    kind = FILE_TYPE_NAMES[file_type]
    result: dict = {"dense_type": kind, "threads": threads, "speed": [], "accuracy": []}
    with tempfile.TemporaryDirectory(prefix="chatd-dense-bench-") as tmp:
        served = LlamaModel(bundled_model_path(), settings)
        dense = LlamaContext(dense_copy(info, file_type, cache_dir=Path(tmp), threads=threads),
                             settings)
        print(f"dense prefill: prompts through a {kind} copy, {threads} threads")
        for n in (int(x) for x in args.lengths.split(",")):
            ratios, times = [], []
            for r in range(args.rounds):
                tokens = served.tokenize(fresh_prompt(n, 4242 + r))
                order = [("served", served_path), ("dense", dense_path)]
                if r % 2:
                    order.reverse()
                took = {}
                for name, path in order:
                    began = time.perf_counter()
                    if name == "served":
                        path(served, tokens)
                    else:
                        path(served, dense, tokens)
                    took[name] = time.perf_counter() - began
                ratios.append(took["dense"] / took["served"])
                times.append(took)
            geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
            row = {"prompt_tokens": len(tokens), "rounds": times, "ratio": round(geo, 3)}
            result["speed"].append(row)
            print(f"  ~{n:>5}-token prompt: served {np.mean([t['served'] for t in times]):6.2f} s,"
                  f" dense {np.mean([t['dense'] for t in times]):6.2f} s, dense / served "
                  f"{geo:.3f} (rounds {', '.join(f'{x:.3f}' for x in ratios)})")

        exact = LlamaModel(dense_copy(info, lc.LLAMA_FTYPE_ALL_F32, cache_dir=Path(tmp),
                                      threads=threads), settings)
        for i, n in enumerate((300, 600, 1000, 1500, 2000)):
            tokens = served.tokenize(fresh_prompt(n, 777 + i))
            exact.clear()
            _prefill(exact, tokens, 0, len(tokens), logits=True)
            ref = exact.logits_row(-1).copy()
            a, b = served_path(served, tokens), dense_path(served, dense, tokens)
            row = {"prompt_tokens": len(tokens), "kl_served": kl(ref, a), "kl_dense": kl(ref, b),
                   "top_exact": int(ref.argmax()), "top_served": int(a.argmax()),
                   "top_dense": int(b.argmax())}
            result["accuracy"].append(row)
            print(f"  {len(tokens):>5} tokens: KL(exact || served) {row['kl_served']:.5f}, "
                  f"KL(exact || dense) {row['kl_dense']:.5f}; top token exact/served/dense "
                  f"{row['top_exact']}/{row['top_served']}/{row['top_dense']}")
        for ctx in (exact, dense, served):
            ctx.close()
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
