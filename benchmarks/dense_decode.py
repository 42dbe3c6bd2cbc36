"""What decoding through the dense copy (`--dense-decode`, engine/weights.py) changes
in the model's output distribution, in-process; and what the interleaved Q4_1 kernels
of chatd's llama.cpp patch (patches/) change against llama.cpp's plain ones.

A text is run teacher-forced, every position's logits kept, through three contexts:
the exact one (the weights written out as F32, so every product is the file's value
times an unrounded activation), the file's own weights (Q4_1: each activation row
rounded to 8 bits for the dot products) and the dense copy (BF16 or F16). Per
position: KL divergence between the distributions (nats) and whether the top token
agrees. A batch of rows through Q4_1 weights runs one dot product per row, as a
decoding row does; through the copy it is the GEMM a step of many sequences uses.

    python -m benchmarks.dense_decode [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import llama_cpp as lc
import numpy as np

from benchmarks.workloads import REPEAT_TEXT
from chatd.engine.llama import LlamaModel, LlamaSettings, default_threads
from chatd.engine.prompts import dense_file_type
from chatd.models.registry import bundled_model_path, load_model_info
from chatd.models.requantize import FILE_TYPE_NAMES, dense_copy

CHUNK = 512


def all_logits(model: LlamaModel, tokens: list[int]) -> np.ndarray:
    """[len(tokens), n_vocab] logits, log-softmaxed in float64."""
    model.clear()
    rows = []
    for start in range(0, len(tokens), CHUNK):
        end = min(len(tokens), start + CHUNK)
        model.decode(tokens[start:end], list(range(start, end)), [0] * (end - start),
                     [True] * (end - start))
        rows.append(model.logits_rows(list(range(end - start))).astype(np.float64))
    return log_softmax(np.concatenate(rows))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Rows of logits (float64) as log-probabilities."""
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def compare(p: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """KL(p || q) per position (mean, p99) and how often the top tokens agree."""
    kl = (np.exp(p) * (p - q)).sum(axis=1)
    return {"kl_mean": round(float(kl.mean()), 5),
            "kl_p99": round(float(np.quantile(kl, 0.99)), 5),
            "top_agree": round(float((p.argmax(axis=1) == q.argmax(axis=1)).mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dense_decode")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    info = load_model_info(None, None)
    threads = default_threads()
    settings = LlamaSettings(kv_cells=4096, n_seq_max=1, n_threads=threads)
    file_type = dense_file_type()
    kind = FILE_TYPE_NAMES[file_type]
    with tempfile.TemporaryDirectory(prefix="chatd-dense-decode-") as tmp:
        file = bundled_model_path()
        runs = {"file": (file, settings),
                "file_plain": (file, replace(settings, interleave=False)),
                "copy": (dense_copy(info, file_type, cache_dir=Path(tmp), threads=threads),
                         settings),
                "exact": (dense_copy(info, lc.LLAMA_FTYPE_ALL_F32, cache_dir=Path(tmp),
                                     threads=threads), settings)}
        logits: dict[str, np.ndarray] = {}
        tokens: list[int] = []
        interleaved = False
        for name, (path, run_settings) in runs.items():
            model = LlamaModel(path, run_settings)
            if name == "file":
                interleaved = model.interleaved
            try:
                if not tokens:
                    tokens = model.tokenize(
                        f"<|im_start|>user\n{REPEAT_TEXT}<|im_end|>\n<|im_start|>assistant\n"
                        f"{REPEAT_TEXT}")
                logits[name] = all_logits(model, tokens)
            finally:
                model.close()
    result = {"copy": kind, "positions": len(tokens), "file_interleaved": interleaved,
              "exact_vs_file": compare(logits["exact"], logits["file"]),
              "exact_vs_file_plain": compare(logits["exact"], logits["file_plain"]),
              "file_plain_vs_file": compare(logits["file_plain"], logits["file"]),
              "exact_vs_copy": compare(logits["exact"], logits["copy"]),
              "file_vs_copy": compare(logits["file"], logits["copy"])}
    print(f"dense decode: {len(tokens)} positions teacher-forced, the file's weights "
          f"({'interleaved' if interleaved else 'not interleaved'} as served, and through "
          f"llama.cpp's plain kernels) against a {kind} copy and an exact (F32) evaluation")
    for key, label in (("exact_vs_file", "exact || file"),
                       ("exact_vs_file_plain", "exact || file, plain kernels"),
                       ("file_plain_vs_file", "file, plain || file"),
                       ("exact_vs_copy", "exact || copy"),
                       ("file_vs_copy", "file || copy")):
        row = result[key]
        print(f"  KL({label}): mean {row['kl_mean']:.5f}, p99 {row['kl_p99']:.5f} nats; "
              f"same top token at {100 * row['top_agree']:.1f}% of positions")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
