"""Two chatd configurations side by side: does a flag make the server faster?

One server runs with `--a` arguments, the other with `--b` (default: none, chatd's
defaults), on the context `make versus` uses; the same closed-loop load drives them in
alternating rounds (AB, BA, ...), so a neighbour's burst on a shared machine hits both.
Prints each round's tokens/s, the engine's decode and host time per step and the CPU
per token of the event loop, then the geometric mean of A / B over the rounds.

    python -m benchmarks.ab --a "--speculate off" [--b ""] [--concurrency 1]
                            [--temperature 0] [--rounds 6] [--stream | --no-stream]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
from typing import Any

from benchmarks.ceiling import special_token_ids
from benchmarks.probes import CpuSample, cpu_per_token, health
from benchmarks.run import chatd_server
from chatd.bench.loadgen import default_requests_per_client, run_load
from chatd.engine.llama import default_threads


def _round(url: str, pid: int, args: argparse.Namespace, ban: list[int]) -> dict[str, Any]:
    before, counters = CpuSample.take(pid, url), health(url)
    res = asyncio.run(run_load(
        url, None, args.concurrency, max_tokens=args.max_tokens, ban_tokens=ban,
        requests_per_client=default_requests_per_client(args.concurrency),
        temperature=args.temperature, stream=args.stream))
    after, now = CpuSample.take(pid, url), health(url)
    steps = max(1, int(now["steps"]) - int(counters["steps"]))

    def per_step(key: str) -> float:
        return 1000 * (float(now[key]) - float(counters[key])) / steps
    return {"tokens_per_s": res.tokens_per_s, "errors": res.errors,
            "decode_ms": per_step("engine_decode_seconds"),
            "host_ms": per_step("engine_host_seconds"), **cpu_per_token(before, after)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="extra `chatd serve` arguments of server A")
    p.add_argument("--b", default="", help="... of server B (default: none)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=0, help="default: physical cores, as "
                   "`make versus` runs")
    p.add_argument("--max-sequences", type=int, default=16)
    p.add_argument("--ctx-size", type=int, default=4608)
    args = p.parse_args(argv)
    ban = special_token_ids()
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, extra in (("A", args.a), ("B", args.b)):
            serve = argparse.Namespace(  # make versus's context; only `extra` differs
                max_sequences=args.max_sequences, model=None,
                threads=args.threads or default_threads(), startup_timeout=180.0,
                serve_arg=[f"--ctx-size {args.ctx_size}",
                           f"--kv-cells {args.ctx_size * args.max_sequences}", extra])
            servers[name] = stack.enter_context(chatd_server(serve))
        for url, _ in servers.values():  # untimed: first-call costs, the prefix cache
            asyncio.run(run_load(url, None, args.concurrency, requests_per_client=1,
                                 max_tokens=16, ban_tokens=ban))
        ratios = []
        for r in range(args.rounds):
            got = {}
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                url, pid = servers[name]
                got[name] = row = _round(url, pid, args, ban)
                print(f"  round {r + 1} {name}: {row['tokens_per_s']:7.1f} tok/s, decode "
                      f"{row['decode_ms']:.2f} ms and host {row['host_ms']:.3f} ms a step, "
                      f"event loop {row['event_loop_ms']} ms CPU a token, "
                      f"{row['errors']} errors", flush=True)
            ratios.append(got["A"]["tokens_per_s"] / got["B"]["tokens_per_s"])
        mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"A ({args.a!r}) / B ({args.b!r}), c={args.concurrency}, T={args.temperature}, "
              f"{'streaming' if args.stream else 'not streaming'}: {mean:.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f}) over {args.rounds} alternating rounds")


if __name__ == "__main__":
    main()
