"""What a JSON schema costs the engine, measured where nothing else moves.

Over HTTP the constrained/plain ratio drifts with the KV cache's span (every cell
written since the last compaction slows each later token) and with the machine's
noise, by more than the grammar costs. Here the same engine runs the same requests
with and without the schema, each run on a freshly cleared cache, in ABBA order,
and the ratio of the summed token rates is reported per concurrency.

    python -m benchmarks.constrained [--rounds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import Any

from benchmarks.ceiling import special_token_ids
from chatd.chat.structured import schema_grammar
from chatd.engine.engine import Engine, EngineConfig
from chatd.engine.llama import LlamaModel, LlamaSettings
from chatd.engine.types import GenerationRequest, SamplingParams
from chatd.models.registry import bundled_model_path

# A long free string keeps the grammar active on every token; its minLength (more
# characters than 128 tokens hold) keeps the grammar from closing it early, so
# constrained requests run exactly as long as plain ones and the batch sizes match.
SCHEMA = {"type": "object", "properties": {"story": {"type": "string", "minLength": 1000}},
          "required": ["story"], "additionalProperties": False}
PROMPT = ("<|im_start|>user\nWrite a long story about a lighthouse keeper, as JSON."
          "<|im_end|>\n<|im_start|>assistant\n")


async def _run(engine: Engine, prompt: list[int], grammar: str | None, conc: int,
               max_tokens: int, ban: list[int]) -> float:
    """`conc` requests at once; summed generated tokens per second of wall time."""
    async def one(seed: int) -> int:
        params = SamplingParams(temperature=1.0, seed=seed, max_new_tokens=max_tokens,
                                logit_bias={t: -100.0 for t in ban})
        count = 0
        async for event in engine.generate(GenerationRequest(prompt, params, grammar=grammar)):
            count += event.token_id >= 0
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(seed) for seed in range(conc)))
    return sum(counts) / (time.perf_counter() - started)


def measure(concurrency: tuple[int, ...] = (1, 8), rounds: int = 4, max_tokens: int = 128,
            threads: int = 0) -> list[dict[str, Any]]:
    model = LlamaModel(bundled_model_path(), LlamaSettings(
        kv_cells=4096, n_seq_max=2 * max(concurrency) + 2, n_threads=threads))
    grammar = schema_grammar(SCHEMA)
    prompt = model.tokenize(PROMPT, add_special=False)
    ban = special_token_ids()
    config = EngineConfig(max_running=max(concurrency), n_slots=2 * max(concurrency),
                          ctx_size=2048, epoch_cells=4096)

    def rate(conc: int, constrained: bool) -> float:
        model.clear()  # every run starts from the same empty cache
        engine = Engine(model, config)
        engine.start()
        try:
            g = grammar if constrained else None
            asyncio.run(_run(engine, prompt, g, 1, 8, ban))  # compile + warm up, untimed
            return asyncio.run(_run(engine, prompt, g, conc, max_tokens, ban))
        finally:
            engine.stop()

    rows = []
    for conc in concurrency:
        plain, constrained = [], []
        for i in range(rounds):
            order = (False, True) if i % 2 == 0 else (True, False)
            for side in order:
                (constrained if side else plain).append(rate(conc, side))
        ratios = [c / p for p, c in zip(plain, constrained, strict=True)]
        rows.append({
            "concurrency": conc, "rounds": rounds,
            "plain_tokens_per_s": [round(x, 1) for x in plain],
            "constrained_tokens_per_s": [round(x, 1) for x in constrained],
            # geometric mean: a slow round and a fast round weigh the same
            "ratio": round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 3),
        })
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["engine-level constrained cost (same requests with and without the schema, "
             "fresh cache each run; ratio = constrained / plain tok/s, target >= 0.90)"]
    for row in rows:
        lines.append(f"  c={row['concurrency']:<3d} plain {row['plain_tokens_per_s']}  "
                     f"constrained {row['constrained_tokens_per_s']}  ratio {row['ratio']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.constrained",
                                description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", dest="json_path")
    args = p.parse_args()
    rows = measure(rounds=args.rounds, max_tokens=args.max_tokens, threads=args.threads)
    print(format_rows(rows))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
