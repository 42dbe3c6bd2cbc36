"""Latency scenarios of the batching issue, each a ratio measured in one run.

- prefix cache: turn 2 of a chat with a ~1,500-token history vs turn 1 (TTFT ratio,
  target <= 0.3) and `cached_tokens`;
- n=4 vs n=1 on a ~1,000-token prompt (TTFT ratio, target <= 1.3);
- chunked prefill: inter-token p90 of 8 decoding streams while a ~2,000-token
  prompt is prefilled vs before it arrives (target <= 3).

    python -m benchmarks.scenarios [--url http://127.0.0.1:8000]

Without --url it starts `chatd serve --max-sequences 16` itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from chatd.bench.loadgen import percentile, run_client

WORDS = ["river", "mountain", "lantern", "orbit", "velvet", "harbor", "meadow", "signal",
         "copper", "thistle", "falcon", "ember", "quarry", "lagoon", "prism", "saddle",
         "tundra", "willow", "canyon", "ferry"]


def text(n_words: int, seed: int) -> str:
    """Distinct filler per seed, so prompts never share a cached prefix by accident."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@dataclass
class Timed:
    start: float
    first: float | None = None
    chunks: list[float] = field(default_factory=list)
    usage: dict[str, Any] | None = None

    @property
    def ttft(self) -> float:
        assert self.first is not None, "no content arrived"
        return self.first - self.start


async def stream(client: httpx.AsyncClient, model: str, messages: list[dict[str, Any]],
                 **kw: Any) -> Timed:
    body = {"model": model, "messages": messages, "stream": True,
            "stream_options": {"include_usage": True}, **kw}
    result = Timed(start=time.perf_counter())
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                result.usage = chunk["usage"]
            if any(c["delta"].get("content") for c in chunk["choices"]):
                now = time.perf_counter()
                result.first = result.first or now
                result.chunks.append(now)
    return result


async def prefix_cache(client: httpx.AsyncClient, model: str) -> dict[str, Any]:
    history = [{"role": "system", "content": "You are a helpful assistant."},
               {"role": "user", "content": "Read this and remember it: " + text(1400, 1)}]
    turn1 = await stream(client, model, history, max_tokens=16, temperature=0)
    answer = "I have read it."
    history += [{"role": "assistant", "content": answer},
                {"role": "user", "content": "Which word came first?"}]
    turn2 = await stream(client, model, history, max_tokens=16, temperature=0)
    return {"turn1_prompt_tokens": turn1.usage["prompt_tokens"],
            "turn1_ttft_ms": round(1000 * turn1.ttft),
            "turn2_ttft_ms": round(1000 * turn2.ttft),
            "turn2_cached_tokens": turn2.usage["prompt_tokens_details"]["cached_tokens"],
            "ratio": round(turn2.ttft / turn1.ttft, 3), "target": "<= 0.3"}


async def n_choices(client: httpx.AsyncClient, model: str) -> dict[str, Any]:
    def prompt(seed: int) -> list[dict[str, Any]]:
        return [{"role": "user", "content": text(900, seed) + " Summarise."}]

    one = await stream(client, model, prompt(11), max_tokens=8, n=1, seed=1)
    four = await stream(client, model, prompt(12), max_tokens=8, n=4, seed=1)
    return {"prompt_tokens": one.usage["prompt_tokens"],
            "n1_ttft_ms": round(1000 * one.ttft), "n4_ttft_ms": round(1000 * four.ttft),
            "ratio": round(four.ttft / one.ttft, 3), "target": "<= 1.3"}


async def chunked_prefill(client: httpx.AsyncClient, model: str,
                          ban: dict[str, int]) -> dict[str, Any]:
    streams = [asyncio.create_task(stream(
        client, model, [{"role": "user", "content": f"Tell story number {i}."}],
        max_tokens=480, temperature=0.7, seed=i, logit_bias=ban)) for i in range(8)]
    # The 8 streams are decoding; at ~45-60 tokens/s each through the dense copy
    # (--dense-decode) they are still at it when the long prompt's first token comes.
    await asyncio.sleep(4.0)
    long_prompt = [{"role": "user", "content": text(1900, 99) + " Summarise."}]
    long = await stream(client, model, long_prompt, max_tokens=4, temperature=0)
    done = await asyncio.gather(*streams)
    window = (long.start, long.first)
    before, during = [], []
    for s in done:
        for a, b in zip(s.chunks, s.chunks[1:], strict=False):
            if window[0] <= a and b <= window[1]:
                during.append(b - a)
            elif b < window[0] and a > s.first + 0.5:
                before.append(b - a)
    p_before, p_during = percentile(before, 90), percentile(during, 90)
    return {"long_prompt_tokens": long.usage["prompt_tokens"],
            "long_ttft_ms": round(1000 * long.ttft),
            "itl_p90_before_ms": round(1000 * p_before, 1) if p_before else None,
            "itl_p90_during_ms": round(1000 * p_during, 1) if p_during else None,
            "ratio": round(p_during / p_before, 2) if p_before and p_during else None,
            "target": "<= 3"}


async def run_all(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        ban = {str(t): -100 for t in range(17)}  # SmolLM2's end and control tokens
        await stream(client, model, [{"role": "user", "content": "hi"}], max_tokens=4)
        out = {}
        for name, fn in (("prefix_cache", prefix_cache(client, model)),
                         ("n4_vs_n1", n_choices(client, model)),
                         ("chunked_prefill", chunked_prefill(client, model, ban))):
            out[name] = await fn
            print(f"{name:16s} {out[name]}", flush=True)
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="an already running chatd (default: start one)")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="extra `chatd serve` argument, e.g. --serve-arg='--kv-cache f16'")
    args = p.parse_args()
    if args.url:
        result = run_client(run_all(args.url))
    else:
        from benchmarks.run import build_parser, chatd_server

        serve_args = build_parser().parse_args(
            ["--max-sequences", "16", *(f"--serve-arg={a}" for a in args.serve_arg)])
        with chatd_server(serve_args) as (base, _pid):
            result = run_client(run_all(base))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
