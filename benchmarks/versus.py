"""chatd against llama.cpp's llama-server: same model, cores and KV cache, same load.

chatd's claim is to serve more than llama-server on the same machine. This measures
it: both servers run side by side on the bundled model with the same threads, KV
pool size and type, flash attention, unified KV cache, parallel sequences and
sampling, and the same closed-loop load generator drives them in alternating rounds
(AB, BA, AB, ...), so a neighbour's burst on a shared machine hits both. Each
round's chatd / llama-server ratio is taken, and the geometric mean over rounds is
reported.

At concurrency 1 both servers are also driven without streaming: the gap between a
server's streaming and non-streaming rate is what its per-token HTTP work costs.

    python -m benchmarks.versus --llama-server /path/to/llama-server
                                [--concurrency 1,4,8,16] [--rounds 4] [--json out.json]

llama-server is not a dependency of chatd: build it from the llama.cpp that
llama-cpp-python's source release vendors, so both run the same kernels (the README
gives the commands).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llama_cpp as lc

from benchmarks.ceiling import special_token_ids
from benchmarks.run import _free_port, chatd_server, server_process
from chatd.bench.loadgen import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_TOKENS,
    LoadResult,
    default_requests_per_client,
    parse_int_list,
    run_client,
    run_load,
)
from chatd.config import Settings
from chatd.engine.llama import KV_CACHE_TYPE, default_threads
from chatd.models.registry import bundled_model_path, default_model_name

# llama-server's names for the KV cache types chatd may use.
_KV_TYPE_NAMES = {lc.GGML_TYPE_F16: "f16", lc.GGML_TYPE_Q8_0: "q8_0"}
N_BATCH = Settings.batch_tokens  # chatd serve's default tokens per llama_decode


def _health(base: str) -> dict[str, Any]:
    return httpx.get(f"{base}/health", timeout=5.0).json()


# OpenAI's sampling: the whole distribution at the request's temperature. llama-server's
# own defaults truncate it (top_k 40, top_p 0.95, min_p 0.05), which is less work per
# token (measured after a decode: ~110 us against ~475 us for its full-distribution
# chain) and a different distribution from the one an OpenAI request asks for.
OPENAI_SAMPLING = ["--top-k", "0", "--top-p", "1.0", "--min-p", "0.0"]


def llama_server_command(binary: Path, model: Path, alias: str, port: int, threads: int,
                         kv_cells: int, parallel: int, own_sampling: bool = False) -> list[str]:
    """llama-server's flags for what chatd's engine does (see chatd.engine.llama):
    one unified KV pool of `kv_cells` in chatd's KV type, flash attention, 512-token
    batches, the same threads for decode and prompt processing, and unless
    `own_sampling`, OpenAI's sampling defaults."""
    kv_type = _KV_TYPE_NAMES[KV_CACHE_TYPE]
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(threads), "-tb", str(threads), "-c", str(kv_cells), "-np", str(parallel),
            "--kv-unified", "-fa", "on", "-ctk", kv_type, "-ctv", kv_type,
            "-b", str(N_BATCH), "-ub", str(N_BATCH), "--no-webui", "--alias", alias,
            *([] if own_sampling else OPENAI_SAMPLING)]


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, alias: str, threads: int, kv_cells: int,
                 parallel: int, timeout: float, own_sampling: bool = False) -> Iterator[str]:
    """Start llama-server with chatd's engine settings; yield its base URL."""
    port = _free_port()
    cmd = llama_server_command(binary, model, alias, port, threads, kv_cells, parallel,
                               own_sampling)
    with server_process("llama-server", cmd, port, timeout) as (base, _pid):
        yield base


def _version(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return next((ln for ln in lines if ln.startswith("version")), lines[-1] if lines else "?")


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _summary(runs: list[LoadResult]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [v for r in runs if (v := r.summary()[key]) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None
    return {"tokens_per_s": [round(r.tokens_per_s, 1) for r in runs],
            "mean_tokens_per_s": mean("tokens_per_s"),
            "ttft_p90_s": mean("ttft_p90_s"), "itl_p50_s": mean("itl_p50_s"),
            "errors": sum(r.errors for r in runs),
            "short_requests": sum(r.short_requests for r in runs)}


async def _rounds(urls: dict[str, str], model: str, conc: int, stream: bool, rounds: int,
                  args: argparse.Namespace, ban: list[int]) -> dict[str, Any]:
    runs: dict[str, list[LoadResult]] = {name: [] for name in urls}
    names = list(urls)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(await run_load(
                urls[name], model, conc, stream=stream, ban_tokens=ban,
                requests_per_client=args.requests_per_client or default_requests_per_client(conc),
                max_tokens=args.max_tokens, warmup=r == 0))
        print(f"  c={conc:<3d} {'stream' if stream else 'json  '} round {r + 1}: "
              + "  ".join(f"{n} {runs[n][-1].tokens_per_s:6.1f}" for n in names), flush=True)
    ratios = [a.tokens_per_s / b.tokens_per_s for a, b in zip(*runs.values(), strict=True)
              if b.tokens_per_s > 0]
    gm = _geomean(ratios)
    return {"concurrency": conc, "stream": stream,
            **{name: _summary(res) for name, res in runs.items()},
            "round_ratios": [round(x, 3) for x in ratios],
            "ratio": round(gm, 3) if gm is not None else None}


def _format(rows: list[dict[str, Any]]) -> str:
    def ms(v: float | None) -> str:
        return f"{1000 * v:.0f}" if v is not None else "-"
    lines = ["| conc | mode | chatd tok/s | llama-server tok/s | chatd / llama-server "
             "| TTFT p90 ms (chatd / l-s) | ITL p50 ms (chatd / l-s) | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        a, b = row["chatd"], row["llama-server"]
        lines.append(
            f"| {row['concurrency']} | {'stream' if row['stream'] else 'json'} "
            f"| {a['mean_tokens_per_s']:.1f} | {b['mean_tokens_per_s']:.1f} | {row['ratio']} "
            f"| {ms(a['ttft_p90_s'])} / {ms(b['ttft_p90_s'])} "
            f"| {ms(a['itl_p50_s'])} / {ms(b['itl_p50_s'])} "
            f"| {a['errors']} / {b['errors']} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.versus",
                                description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--llama-server", type=Path, required=True, help="llama-server binary")
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: bundled SmolLM2)")
    p.add_argument("--concurrency", type=parse_int_list, default=list(DEFAULT_CONCURRENCY))
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per concurrency")
    p.add_argument("--requests-per-client", type=int, default=None,
                   help="per round (default: max(2, 8 // concurrency))")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--max-sequences", type=int, default=16,
                   help="chatd --max-sequences and llama-server -np")
    p.add_argument("--threads", type=int, default=0, help="default: physical cores")
    p.add_argument("--llama-server-sampling", choices=("openai", "own"), default="openai",
                   help="openai: the whole distribution, as chatd and OpenAI sample "
                        "(default); own: llama-server's truncating defaults")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--json", dest="json_path", help="write every figure as JSON to this path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.llama_server.is_file():
        print(f"no llama-server binary at {args.llama_server}", file=sys.stderr)
        return 2
    model = args.model or bundled_model_path()
    alias = default_model_name(model)
    threads = args.threads or default_threads()
    ban = special_token_ids(model)
    serve = argparse.Namespace(max_sequences=args.max_sequences, model=args.model,
                               threads=threads, serve_arg=[],
                               startup_timeout=args.startup_timeout)
    doc: dict[str, Any] = {"llama_server_version": _version(args.llama_server),
                           "threads": threads, "rows": []}
    with chatd_server(serve) as (chatd_base, _pid):
        kv_cells = int(_health(chatd_base)["kv_cells_total"])
        doc["kv_cells"] = kv_cells
        doc["llama_server_sampling"] = args.llama_server_sampling
        with llama_server(args.llama_server, model, alias, threads, kv_cells,
                          args.max_sequences, args.startup_timeout,
                          own_sampling=args.llama_server_sampling == "own") as ls_base:
            urls = {"chatd": f"{chatd_base}/v1", "llama-server": f"{ls_base}/v1"}
            for conc in args.concurrency:
                modes = (True, False) if conc == 1 else (True,)
                for stream in modes:
                    doc["rows"].append(run_client(
                        _rounds(urls, alias, conc, stream, args.rounds, args, ban)))
    print(f"\nchatd vs {doc['llama_server_version']}, {threads} threads, {kv_cells} KV "
          f"cells, {args.max_sequences} parallel, {args.max_tokens} tokens per request, "
          f"llama-server sampling: {args.llama_server_sampling}; "
          f"ratio = geometric mean over {args.rounds} alternating rounds")
    print(_format(doc["rows"]))
    if any(row[n]["short_requests"] for row in doc["rows"] for n in ("chatd", "llama-server")):
        print("note: some requests ended before max_tokens (a server ignored logit_bias?)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 1 if any(row[n]["errors"] for row in doc["rows"]
                    for n in ("chatd", "llama-server")) else 0


if __name__ == "__main__":
    sys.exit(main())
